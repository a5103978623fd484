"""Keyed event-time windows over micro-batches: specs, aggregation plans and the window fold.

A window operator is a pure function ``fold(state, batch, watermark) -> (state, emitted, late)``
over Polars frames; it never reads a clock or does I/O.  Event time is an Int64 column
of epoch milliseconds (the engine converts Datetime columns).

Windows are half-open ``[start, end)`` and aligned to the Unix epoch (as in Flink):

- ``Tumbling(size)``: ``start = floor(t / size) * size``.
- ``Hopping(size, every)``: every window ``[k*every, k*every + size)`` that contains t.
- ``Sliding(size)``: for each record, the window ``(t - size, t]`` of its key, with ``window_end = t``.
- ``Session(gap)``: records of a key closer than ``gap`` share a session;
  ``window_start`` = first event time, ``window_end`` = last event time + gap.

Decomposable aggregations (len/count, sum, min, max, mean, var, std, first, last) keep
partial aggregates per (key, window) and merge them batch by batch; any other
expression makes the window keep its rows until it closes.  Either way the result
equals a Polars ``group_by`` over the same records.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.windows import Tumbling, WindowSpec, WindowState, fold
>>> spec = WindowSpec.build("w", Tumbling("1m"), by=["user"], aggs={"n": pl.len(), "total": pl.col("x").sum()},
...                        schema=pl.Schema({"user": pl.String, "x": pl.Int64, "__t": pl.Int64}), time_column="__t")
>>> batch = pl.DataFrame({"user": ["a", "a", "b"], "x": [1, 2, 5], "__t": [1_000, 59_000, 61_000]})
>>> result = fold(spec, WindowState.empty(spec), batch, watermark=60_000)
>>> result.emitted.select("user", "n", "total").to_dicts()   # [0, 60s) closed at watermark 60 s
[{'user': 'a', 'n': 2, 'total': 3}]
>>> result.state.open_windows
1
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import polars as pl
from lockgate.operators.durations import Duration, parse_duration
from lockgate.errors import PipelineDefinitionError
from lockgate.operators.hotstate import Merge, PartialIndex

__all__ = [
    "Agg",
    "FoldResult",
    "Hopping",
    "Session",
    "Sliding",
    "Tumbling",
    "WindowKind",
    "WindowSpec",
    "WindowState",
    "classify",
    "current_values",
    "finalize_partials",
    "fold",
]

WS, WE = "window_start", "window_end"
_GLOBAL = "__lg_global"


def _ms(value: Duration, what: str) -> int:
    delta = parse_duration(value, what=what, allow_zero=False)
    ms = delta / timedelta(milliseconds=1)
    if ms != int(ms):
        raise PipelineDefinitionError(f"{what}: {value!r} is finer than a millisecond; event time has millisecond precision")
    return int(ms)


@dataclass(frozen=True, init=False)
class Tumbling:
    """Fixed, non-overlapping windows of ``size``, aligned to the epoch."""

    size_ms: int

    def __init__(self, size: Duration) -> None:
        object.__setattr__(self, "size_ms", _ms(size, "lg.Tumbling(size)"))


@dataclass(frozen=True, init=False)
class Hopping:
    """Windows of ``size`` starting every ``every``; a record belongs to each window that contains it."""

    size_ms: int
    every_ms: int

    def __init__(self, size: Duration, every: Duration) -> None:
        object.__setattr__(self, "size_ms", _ms(size, "lg.Hopping(size)"))
        object.__setattr__(self, "every_ms", _ms(every, "lg.Hopping(every)"))
        if self.every_ms > self.size_ms:
            raise PipelineDefinitionError(
                f"lg.Hopping: every={every!r} is longer than size={size!r}, so some records would fall in no window; "
                "use every <= size"
            )


@dataclass(frozen=True, init=False)
class Sliding:
    """A window per record: ``(t - size, t]`` of its key, emitted with ``window_end = t``."""

    size_ms: int

    def __init__(self, size: Duration) -> None:
        object.__setattr__(self, "size_ms", _ms(size, "lg.Sliding(size)"))


@dataclass(frozen=True, init=False)
class Session:
    """Records of a key closer than ``gap`` share a session window."""

    gap_ms: int

    def __init__(self, gap: Duration) -> None:
        object.__setattr__(self, "gap_ms", _ms(gap, "lg.Session(gap)"))


WindowKind = Tumbling | Hopping | Sliding | Session
_DECOMPOSABLE = ("len", "count", "sum", "min", "max", "mean", "var", "std", "first", "last")


@dataclass(frozen=True, eq=False)
class Agg:
    """One named aggregation: ``kind`` is a decomposable kind or ``"rows"``."""

    name: str
    expr: pl.Expr
    kind: str
    column: str | None = None

    def partials(self) -> dict[str, pl.Expr]:
        """Partial aggregates of raw rows."""
        c = pl.col(self.column) if self.column else None
        p = f"__{self.name}"
        if self.kind == "len":
            return {f"{p}_n": pl.len().cast(pl.Int64)}
        assert c is not None
        if self.kind == "count":
            return {f"{p}_n": c.count().cast(pl.Int64)}
        if self.kind == "sum":
            return {f"{p}_s": c.sum()}
        if self.kind in ("min", "max"):
            return {f"{p}_v": getattr(c, self.kind)()}
        if self.kind in ("first", "last"):  # with the arrival order of that row, to merge in any order
            pick = "min" if self.kind == "first" else "max"
            return {f"{p}_v": c.sort_by("__seq").first() if self.kind == "first" else c.sort_by("__seq").last(),
                    f"{p}_o": getattr(pl.col("__seq"), pick)()}
        if self.kind == "mean":
            return {f"{p}_s": c.cast(pl.Float64).sum(), f"{p}_n": c.count().cast(pl.Int64)}
        if self.kind in ("var", "std"):
            x = c.cast(pl.Float64)
            return {f"{p}_n": c.count().cast(pl.Int64), f"{p}_m": x.mean(), f"{p}_q": ((x - x.mean()) ** 2).sum()}
        raise AssertionError(self.kind)

    def merges(self) -> dict[str, pl.Expr]:
        """How partial aggregates of one (key, window) combine."""
        p = f"__{self.name}"
        if self.kind in ("len", "count"):
            return {f"{p}_n": pl.col(f"{p}_n").sum()}
        if self.kind == "sum":
            return {f"{p}_s": pl.col(f"{p}_s").sum()}
        if self.kind in ("min", "max"):
            return {f"{p}_v": getattr(pl.col(f"{p}_v"), self.kind)()}
        if self.kind == "first":
            return {f"{p}_v": pl.col(f"{p}_v").sort_by(f"{p}_o").first(), f"{p}_o": pl.col(f"{p}_o").min()}
        if self.kind == "last":
            return {f"{p}_v": pl.col(f"{p}_v").sort_by(f"{p}_o").last(), f"{p}_o": pl.col(f"{p}_o").max()}
        if self.kind == "mean":
            return {f"{p}_s": pl.col(f"{p}_s").sum(), f"{p}_n": pl.col(f"{p}_n").sum()}
        n, m, q = pl.col(f"{p}_n"), pl.col(f"{p}_m"), pl.col(f"{p}_q")
        total = n.sum()
        mean = pl.when(total > 0).then(pl.when(n > 0).then(n * m).sum() / total)
        # Chan et al.: M2 = sum(M2_i + n_i * (mean_i - mean)^2), evaluated per group; empty partials count nothing
        return {f"{p}_n": total, f"{p}_m": mean, f"{p}_q": pl.when(n > 0).then(q + n * (m - mean) ** 2).sum()}

    def horizontal(self, schema: pl.Schema) -> dict[str, Merge] | None:
        """The element-wise form of :meth:`merges` (see ``hotstate.Merge``), or None where there is none.

        Sums are element-wise only in 64 bits (Polars adds narrower integers and
        Float32 in their own width); var and std merge with Chan's formula, kept in Polars.
        """
        p = f"__{self.name}"
        wide = (pl.Int64, pl.UInt64, pl.Float64)
        if self.kind in ("len", "count"):
            return {f"{p}_n": ("add", None)}
        if self.kind == "sum":
            return {f"{p}_s": ("add", None)} if isinstance(schema[f"{p}_s"], wide) else None
        if self.kind in ("min", "max"):
            return {f"{p}_v": (self.kind, None)}
        if self.kind in ("first", "last"):
            return {f"{p}_v": (self.kind, f"{p}_o"), f"{p}_o": ("min" if self.kind == "first" else "max", None)}
        if self.kind == "mean":
            return {f"{p}_s": ("add", None), f"{p}_n": ("add", None)}
        return None

    def final(self) -> pl.Expr:
        """The aggregate from merged partials."""
        p = f"__{self.name}"
        if self.kind in ("len", "count"):
            out = pl.col(f"{p}_n")
        elif self.kind == "sum":
            out = pl.col(f"{p}_s")
        elif self.kind in ("min", "max", "first", "last"):
            out = pl.col(f"{p}_v")
        elif self.kind == "mean":
            out = pl.when(pl.col(f"{p}_n") > 0).then(pl.col(f"{p}_s") / pl.col(f"{p}_n"))
        else:
            var = pl.when(pl.col(f"{p}_n") > 1).then(pl.col(f"{p}_q") / (pl.col(f"{p}_n") - 1))
            out = var.sqrt() if self.kind == "std" else var
        return out.alias(self.name)


def classify(name: str, expr: pl.Expr) -> Agg:
    """Recognise a decomposable aggregation; anything else keeps rows.

    >>> classify("n", pl.len()).kind, classify("s", pl.col("x").sum()).kind, classify("u", pl.col("x").n_unique()).kind
    ('len', 'sum', 'rows')
    """
    bare = expr.meta.undo_aliases()
    if bare.meta.eq(pl.len()):
        return Agg(name, expr, "len")
    roots = bare.meta.root_names()
    if len(roots) == 1:
        col = pl.col(roots[0])
        for kind in _DECOMPOSABLE:
            if bare.meta.eq(getattr(col, kind)()):
                return Agg(name, expr, kind, roots[0])
    return Agg(name, expr, "rows")


@dataclass(frozen=True, eq=False)
class WindowSpec:
    """A validated window operator: what it groups by, how it windows, what it computes."""

    name: str
    window: WindowKind
    by: tuple[str, ...]
    aggs: tuple[Agg, ...]
    time_column: str
    allowed_lateness_ms: int
    emit: Literal["final", "update"]
    input_schema: pl.Schema
    output_schema: pl.Schema
    row_columns: tuple[str, ...]
    agg_dtypes: Mapping[str, pl.DataType] = field(default_factory=dict)
    shard: str | None = None  # state keyed by this input column too (the input partition), not in the output

    @staticmethod
    def build(
        name: str,
        window: WindowKind,
        *,
        by: str | Sequence[str] | None,
        aggs: Mapping[str, pl.Expr],
        schema: pl.Schema,
        time_column: str,
        allowed_lateness: Duration = "0s",
        emit: str = "final",
        shard: str | None = None,
    ) -> WindowSpec:
        """Validate a window operator against its input schema (raises PipelineDefinitionError).

        ``shard`` names an input column (the engine passes ``_partition``) that also keys
        the state, so that each input partition's windows can be loaded, dropped and
        moved on their own; it is not an output column.  Only correct when every key
        lives in one shard (the input is partitioned by the keys).
        """
        where = f"window {name!r}"
        if not isinstance(window, (Tumbling, Hopping, Sliding, Session)):
            raise PipelineDefinitionError(f"{where}: give lg.Tumbling, lg.Hopping, lg.Sliding or lg.Session, not {window!r}")
        keys = (by,) if isinstance(by, str) else tuple(by or ())
        for key in keys:
            if key not in schema:
                raise PipelineDefinitionError(f"{where}: unknown key column {key!r} in by=; the input has columns {list(schema.names())}")
            if key in (WS, WE):
                raise PipelineDefinitionError(f"{where}: a key column cannot be called {key!r}; rename it first")
        if emit not in ("final", "update"):
            raise PipelineDefinitionError(f"{where}: emit={emit!r}; use emit='final' or emit='update'")
        if shard is not None and shard not in schema:
            raise PipelineDefinitionError(f"{where}: the shard column {shard!r} is not in the input; it has columns {list(schema.names())}")
        if not aggs:
            raise PipelineDefinitionError(f"{where}: .agg() needs at least one named aggregation, e.g. .agg(n=pl.len())")
        clash = set(aggs) & (set(keys) | {WS, WE})
        if clash:
            raise PipelineDefinitionError(f"{where}: aggregation names {sorted(clash)} clash with the key or window columns")
        lateness = parse_duration(allowed_lateness, what=f"{where}: allowed_lateness")
        group_keys = list(keys) or [_GLOBAL]
        probe = pl.LazyFrame(schema=schema)
        if not keys:
            probe = probe.with_columns(pl.lit(0).alias(_GLOBAL))
        try:
            agg_schema = probe.group_by(group_keys).agg(**aggs).collect_schema()
        except pl.exceptions.PolarsError as exc:
            text = str(exc).split("\n")[0]
            if isinstance(exc, pl.exceptions.ColumnNotFoundError):
                raise PipelineDefinitionError(f"{where}: {text}; the input has columns {list(schema.names())}") from exc
            raise PipelineDefinitionError(f"{where}: an aggregation cannot run on the input: {text}") from exc
        agg_dtypes = {k: agg_schema[k] for k in aggs}
        classified = tuple(classify(k, v) for k, v in aggs.items())
        rows_needed = isinstance(window, Sliding) or any(a.kind == "rows" for a in classified)
        row_columns: tuple[str, ...] = ()
        if rows_needed:
            used: list[str] = []
            for expr in aggs.values():
                for root in expr.meta.root_names():
                    if root not in used:
                        used.append(root)
            row_columns = tuple(c for c in used if c not in keys and c != time_column)
        out = {**{k: schema[k] for k in keys}, WS: pl.Datetime("ms"), WE: pl.Datetime("ms"), **agg_dtypes}
        if isinstance(window, Session) and emit == "update":
            out["retracted"] = pl.Boolean()
        return WindowSpec(
            name=name, window=window, by=keys, aggs=classified, time_column=time_column,
            allowed_lateness_ms=int(lateness / timedelta(milliseconds=1)), emit=emit,  # type: ignore[arg-type]
            input_schema=schema, output_schema=pl.Schema(out), row_columns=row_columns, agg_dtypes=agg_dtypes,
            shard=shard,
        )

    @property
    def keeps_rows(self) -> bool:
        """True when the state holds the windows' rows rather than partial aggregates."""
        return isinstance(self.window, Sliding) or any(a.kind == "rows" for a in self.aggs)

    @property
    def group_keys(self) -> list[str]:
        """The key columns (an internal constant for a global window), then the shard column."""
        keys = list(self.by) or [_GLOBAL]
        return [*keys, self.shard] if self.shard is not None and self.shard not in keys else keys

    @property
    def row_ids(self) -> list[str]:
        """What identifies a kept row in the durable state: its arrival number (per shard)."""
        return ["__seq", self.shard] if self.shard is not None else ["__seq"]

    def partial_schema(self) -> pl.Schema:
        """Columns of the partial-aggregate state."""
        probe = pl.LazyFrame(schema=self.input_schema).with_columns(pl.lit(0, dtype=pl.Int64).alias("__seq"))
        if not self.by:
            probe = probe.with_columns(pl.lit(0).alias(_GLOBAL))
        exprs = {} if self.keeps_rows else {k: v for a in self.aggs for k, v in a.partials().items()}
        schema = probe.group_by(self.group_keys).agg(**exprs).collect_schema()
        return pl.Schema({**{k: schema[k] for k in self.group_keys}, WS: pl.Int64(), WE: pl.Int64(), **{k: schema[k] for k in exprs}})

    def row_schema(self) -> pl.Schema:
        """Columns of the kept-rows state."""
        cols = {k: self.input_schema[k] for k in self.by}
        if not self.by:
            cols[_GLOBAL] = pl.Int32()
        if self.shard is not None and self.shard not in cols:
            cols[self.shard] = self.input_schema[self.shard]
        cols.update({c: self.input_schema[c] for c in self.row_columns if c != self.shard})
        cols["__t"] = pl.Int64()
        cols["__seq"] = pl.Int64()
        return pl.Schema(cols)


@dataclass(frozen=True)
class WindowState:
    """The open windows of one window operator, and the watermark they were judged by.

    ``partials``: one row per open (key, window) with partial aggregates (Int64 ms bounds).
    ``rows``: the kept rows (``__t`` event time, ``__seq`` arrival order) when the
    operator keeps rows.
    """

    partials: pl.DataFrame
    rows: pl.DataFrame
    watermark: int | None = None
    seq: int = 0
    index: PartialIndex | None = None  # mutable hot partials of fixed windows: a fold consumes the state

    @staticmethod
    def empty(spec: WindowSpec) -> WindowState:
        """No open windows."""
        return WindowState(pl.DataFrame(schema=spec.partial_schema()), pl.DataFrame(schema=spec.row_schema()))

    def partial_frame(self) -> pl.DataFrame:
        """Every open pair's partial aggregates (O(state): for reads, not for the batch path)."""
        return self.index.frame() if self.index is not None else self.partials

    @property
    def open_windows(self) -> int:
        """How many (key, window) pairs are open (for kept rows: how many rows are kept)."""
        if self.rows.height:
            return self.rows.height
        return len(self.index) if self.index is not None else self.partials.height

    @property
    def nbytes(self) -> int:
        """Bytes the hot state holds (arrays and frames)."""
        held = self.partials.estimated_size() + self.rows.estimated_size()
        return held + (self.index.nbytes if self.index is not None else 0)


@dataclass(frozen=True)
class FoldResult:
    """What one batch did to a window operator."""

    state: WindowState
    emitted: pl.DataFrame
    late: pl.DataFrame
    changed: pl.DataFrame  # partial rows written this batch (for persistence)
    closed: pl.DataFrame  # (keys, window_start, window_end) that left the partial state
    added_rows: pl.DataFrame  # kept rows added this batch
    removed_rows: pl.DataFrame  # ``__seq`` of kept rows no window needs any more


def _prepare(spec: WindowSpec, batch: pl.DataFrame, seq: int) -> pl.DataFrame:
    frame = batch
    if not spec.by:
        frame = frame.with_columns(pl.lit(0, dtype=pl.Int32).alias(_GLOBAL))
    return frame.with_columns(
        pl.col(spec.time_column).cast(pl.Int64).alias("__t"),
        (pl.int_range(pl.len(), dtype=pl.Int64) + seq).alias("__seq"),
    )


def _assign(spec: WindowSpec, frame: pl.DataFrame) -> pl.DataFrame:
    """(row, window) pairs for tumbling and hopping windows."""
    t = pl.col("__t")
    window = spec.window
    if isinstance(window, Tumbling):
        start = (t // window.size_ms) * window.size_ms
        return frame.with_columns(start.alias(WS), (start + window.size_ms).alias(WE))
    assert isinstance(window, Hopping)
    n = math.ceil(window.size_ms / window.every_ms)
    last = (t // window.every_ms) * window.every_ms
    pairs = frame.with_columns(pl.int_ranges(0, n, dtype=pl.Int64).alias("__j")).explode("__j")
    pairs = pairs.with_columns((last - pl.col("__j") * window.every_ms).alias(WS)).drop("__j")
    return pairs.with_columns((pl.col(WS) + window.size_ms).alias(WE)).filter(pl.col(WE) > t)


def _partials(spec: WindowSpec, pairs: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    exprs = {k: v for a in spec.aggs for k, v in a.partials().items()}
    return pairs.group_by(keys, maintain_order=True).agg(**exprs)


def _horizontal(spec: WindowSpec, schema: pl.Schema) -> dict[str, Merge] | None:
    """Every partial column's element-wise merge, or None when one aggregation has none."""
    out: dict[str, Merge] = {}
    for agg in spec.aggs:
        how = agg.horizontal(schema)
        if how is None:
            return None
        out.update(how)
    return out


def _merge(spec: WindowSpec, frames: list[pl.DataFrame], keys: list[str]) -> pl.DataFrame:
    exprs = {k: v for a in spec.aggs for k, v in a.merges().items()}
    return pl.concat(frames, how="vertical_relaxed").group_by(keys, maintain_order=True).agg(**exprs)


def finalize_partials(spec: WindowSpec, partials: pl.DataFrame) -> pl.DataFrame:
    """Output rows (keys, window_start, window_end, aggregates) from merged partials."""
    out = _project(spec, partials, [a.final() for a in spec.aggs])
    return out


def _aggregate_rows(spec: WindowSpec, pairs: pl.DataFrame) -> pl.DataFrame:
    """Output rows computed from kept rows already labelled with their windows."""
    keys = [*spec.group_keys, WS, WE]
    out = pairs.sort("__seq").group_by(keys, maintain_order=True).agg(**{a.name: a.expr for a in spec.aggs})
    return _project(spec, out, [pl.col(a.name) for a in spec.aggs])


def _project(spec: WindowSpec, frame: pl.DataFrame, values: list[pl.Expr], *extra: pl.Expr) -> pl.DataFrame:
    """The output columns: keys, window bounds as Datetime("ms"), aggregates in the oracle's dtypes."""
    return frame.select(
        *[pl.col(k) for k in spec.by],
        pl.col(WS).cast(pl.Datetime("ms")),
        pl.col(WE).cast(pl.Datetime("ms")),
        *[v.cast(spec.agg_dtypes[a.name]).alias(a.name) for v, a in zip(values, spec.aggs, strict=True)],
        *extra,
    )


def _sessionize(intervals: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Label overlapping [start, end) intervals of a key with one session id ``__sid``."""
    ordered = intervals.sort([*keys, WS])
    prev_end = pl.col(WE).cum_max().shift(1).over(keys)
    new = prev_end.is_null() | (pl.col(WS) >= prev_end)
    return ordered.with_columns(new.cast(pl.Int64).cum_sum().alias("__sid"))


def _empty_out(spec: WindowSpec) -> pl.DataFrame:
    return pl.DataFrame(schema=spec.output_schema)


def fold(spec: WindowSpec, state: WindowState, batch: pl.DataFrame, watermark: int | None) -> FoldResult:
    """Fold one batch into the window state.

    Parameters
    ----------
    spec
        The window operator.
    state
        Its open windows before the batch.
    batch
        The batch's rows; ``spec.time_column`` holds event time as epoch milliseconds.
    watermark
        The pipeline's watermark after this batch (epoch ms), or None before any.
        Records are judged late against the watermark *before* the batch; windows
        close when ``window_end + allowed_lateness <= watermark`` after it.

    Returns
    -------
    FoldResult
        The new state, the emitted rows, the late input rows, and what changed.
    """
    before = state.watermark
    after = before if watermark is None else (watermark if before is None else max(before, watermark))
    frame = _prepare(spec, batch, state.seq)
    seq = state.seq + frame.height
    if isinstance(spec.window, Sliding):
        return _fold_sliding(spec, state, frame, before, after, seq)
    if isinstance(spec.window, Session):
        return _fold_session(spec, state, frame, before, after, seq)
    return _fold_fixed(spec, state, frame, before, after, seq)


def _closed(spec: WindowSpec, end: pl.Expr, watermark: int | None) -> pl.Expr:
    if watermark is None:
        return pl.lit(False)
    return (end + spec.allowed_lateness_ms) <= watermark


def _fold_fixed(spec: WindowSpec, state: WindowState, frame: pl.DataFrame, before: int | None, after: int | None, seq: int) -> FoldResult:
    keys = [*spec.group_keys, WS, WE]
    pairs = _assign(spec, frame)
    on_time = pairs.filter(~_closed(spec, pl.col(WE), before))
    # every row has a window of its own, so no pair dropped means no row late (the usual batch: no join)
    late = frame.clear() if on_time.height == pairs.height else frame.join(on_time.select("__seq").unique(), on="__seq", how="anti")
    emitted: list[pl.DataFrame] = []
    if spec.keeps_rows:
        added = frame.join(on_time.select("__seq").unique(), on="__seq", how="semi").select(spec.row_schema().names())
        rows = pl.concat([state.rows, added], how="vertical_relaxed") if added.height else state.rows
        labelled = _assign(spec, rows).filter(~_closed(spec, pl.col(WE), before))  # closed windows were emitted
        if spec.emit == "update" and on_time.height:
            touched = on_time.select(keys).unique()
            emitted.append(_aggregate_rows(spec, labelled.join(touched, on=keys, how="semi")))
        closing = labelled.filter(_closed(spec, pl.col(WE), after))
        if spec.emit == "final" and closing.height:
            emitted.append(_aggregate_rows(spec, closing))
        # a row stays while any of its windows is open
        ids = spec.row_ids  # arrival numbers are unique per shard (shards may come from other instances)
        alive = labelled.filter(~_closed(spec, pl.col(WE), after)).select(ids).unique()
        new_rows = rows.join(alive, on=ids, how="semi")
        removed = rows.join(alive, on=ids, how="anti").select(ids)
        new_state = WindowState(state.partials, new_rows, after, seq)
        out = pl.concat(emitted, how="vertical_relaxed") if emitted else _empty_out(spec)
        return FoldResult(new_state, out, late.drop("__seq", "__t"), _none(), _none(), added, removed)
    merges = {k: v for a in spec.aggs for k, v in a.merges().items()}
    if state.index is not None or PartialIndex.supports(state.partials.schema, spec.group_keys):
        index = state.index if state.index is not None else PartialIndex.from_frame(state.partials, spec.group_keys)
        changed = state.partials.clear()
        if on_time.height:
            changed = index.upsert(_partials(spec, on_time, keys), merges, _horizontal(spec, state.partials.schema))
            if spec.emit == "update":
                emitted.append(finalize_partials(spec, changed))
        closing = index.close_until(after - spec.allowed_lateness_ms) if after is not None else changed.clear()
        if closing.height and spec.emit == "final":
            emitted.append(finalize_partials(spec, closing))
        out = pl.concat(emitted, how="vertical_relaxed") if emitted else _empty_out(spec)
        new_state = WindowState(state.partials.clear(), state.rows, after, seq, index)
        return FoldResult(new_state, out, late.drop("__seq", "__t"), changed, closing.select(keys), state.rows.clear(), _none())
    changed = state.partials.clear()
    partials = state.partials
    if on_time.height:
        batch_partials = _partials(spec, on_time, keys)
        touched = batch_partials.select(keys)
        old = partials.join(touched, on=keys, how="semi")
        rest = partials.join(touched, on=keys, how="anti") if old.height else partials
        changed = _merge(spec, [old, batch_partials], keys) if old.height else batch_partials
        changed = changed.select(partials.columns).cast(dict(partials.schema))  # type: ignore[arg-type]
        partials = pl.concat([rest, changed], how="vertical_relaxed")
        if spec.emit == "update":
            emitted.append(finalize_partials(spec, changed))
    is_closed = _closed(spec, pl.col(WE), after)
    closing = partials.filter(is_closed)
    if closing.height:
        partials = partials.filter(~is_closed)
        if spec.emit == "final":
            emitted.append(finalize_partials(spec, closing))
    out = pl.concat(emitted, how="vertical_relaxed") if emitted else _empty_out(spec)
    return FoldResult(
        WindowState(partials, state.rows, after, seq), out, late.drop("__seq", "__t"), changed, closing.select(keys),
        state.rows.clear(), _none(),
    )


def _fold_session(spec: WindowSpec, state: WindowState, frame: pl.DataFrame, before: int | None, after: int | None, seq: int) -> FoldResult:
    assert isinstance(spec.window, Session)
    gap = spec.window.gap_ms
    keys = spec.group_keys
    wkeys = [*keys, WS, WE]
    emitted: list[pl.DataFrame] = []
    records = frame.with_columns(pl.col("__t").alias(WS), (pl.col("__t") + gap).alias(WE))
    if spec.keeps_rows:
        old_rows = state.rows
        old_sessions = _sessions_of_rows(old_rows, gap, keys) if old_rows.height else pl.DataFrame(schema={**{k: old_rows.schema[k] for k in keys}, WS: pl.Int64, WE: pl.Int64})
    else:
        old_sessions = state.partials.select(wkeys)
    # a record is late when its session (with this batch's records) holds no open session and is closed
    touched_keys = records.select(keys).unique()
    relevant_old = old_sessions.join(touched_keys, on=keys, how="semi")
    combined = _sessionize(
        pl.concat(
            [
                relevant_old.with_columns(pl.lit(None, dtype=pl.Int64).alias("__seq")),
                records.select([*keys, WS, WE, "__seq"]),
            ],
            how="vertical_relaxed",
        ),
        keys,
    )
    verdict = combined.group_by([*keys, "__sid"]).agg(
        pl.col("__seq").is_null().any().alias("__has_old"), pl.col(WE).max().alias("__end")
    )
    late_sids = verdict.filter(~pl.col("__has_old") & _closed(spec, pl.col("__end"), before)).select([*keys, "__sid"])
    late_seq = combined.join(late_sids, on=[*keys, "__sid"], how="semi").select("__seq").drop_nulls()
    late = frame.join(late_seq, on="__seq", how="semi")
    accepted = frame.join(late_seq, on="__seq", how="anti")
    if spec.keeps_rows:
        added = accepted.select(spec.row_schema().names())
        rows = pl.concat([state.rows, added], how="vertical_relaxed") if added.height else state.rows
        labelled = _label_sessions(rows, gap, keys)
        sessions_now = labelled.select(wkeys).unique()
        old_touched = relevant_old.join(sessions_now, on=wkeys, how="anti")  # superseded by a merge
        if spec.emit == "update" and added.height:
            touched = labelled.join(added.select("__seq"), on="__seq", how="semi").select(wkeys).unique()
            emitted.append(_retractions(spec, old_touched, touched))
            emitted.append(_with_retracted(spec, _aggregate_rows(spec, labelled.join(touched, on=wkeys, how="semi")), False))
        closing = labelled.filter(_closed(spec, pl.col(WE), after))
        if spec.emit == "final" and closing.height:
            emitted.append(_aggregate_rows(spec, closing))
        new_rows = rows.join(closing.select(spec.row_ids), on=spec.row_ids, how="anti")
        out = pl.concat(emitted, how="vertical_relaxed") if emitted else _empty_out(spec)
        return FoldResult(
            WindowState(state.partials, new_rows, after, seq), out, late.drop("__seq", "__t"), _none(), _none(), added,
            closing.select(spec.row_ids),
        )
    partials = state.partials
    changed = partials.clear()
    superseded = partials.clear().select(wkeys)
    if accepted.height:
        acc = accepted.with_columns(pl.col("__t").alias(WS), (pl.col("__t") + gap).alias(WE))
        acc_sessions = _sessionize(acc, keys)
        exprs = {k: v for a in spec.aggs for k, v in a.partials().items()}
        batch_partials = acc_sessions.group_by([*keys, "__sid"], maintain_order=True).agg(
            pl.col(WS).min(), pl.col(WE).max(), **exprs
        ).drop("__sid")
        old = partials.join(batch_partials.select(keys).unique(), on=keys, how="semi")
        rest = partials.join(batch_partials.select(keys).unique(), on=keys, how="anti")
        both = pl.concat([old, batch_partials.select(partials.columns)], how="vertical_relaxed")
        labelled = _sessionize(both, keys)
        merges = {k: v for a in spec.aggs for k, v in a.merges().items()}  # first/last merge by their arrival order
        merged_partials = (
            labelled.group_by([*keys, "__sid"], maintain_order=True)
            .agg(pl.col(WS).min(), pl.col(WE).max(), **merges)
            .drop("__sid")
        )
        # merged sessions that changed: everything of touched keys that is not an untouched old session
        changed = merged_partials.join(old, on=list(merged_partials.columns), how="anti").select(partials.columns).cast(dict(partials.schema))  # type: ignore[arg-type]
        superseded = old.select(wkeys).join(changed.select(wkeys), on=wkeys, how="anti").join(
            merged_partials.select(wkeys), on=wkeys, how="anti"
        )
        partials = pl.concat([rest, merged_partials.select(partials.columns).cast(dict(partials.schema))], how="vertical_relaxed")  # type: ignore[arg-type]
        if spec.emit == "update":
            emitted.append(_retractions(spec, superseded, changed.select(wkeys)))
            emitted.append(_with_retracted(spec, finalize_partials(spec, changed), False))
    is_closed = _closed(spec, pl.col(WE), after)
    closing = partials.filter(is_closed)
    if closing.height:
        partials = partials.filter(~is_closed)
        if spec.emit == "final":
            emitted.append(finalize_partials(spec, closing))
    out = pl.concat(emitted, how="vertical_relaxed") if emitted else _empty_out(spec)
    closed = pl.concat([closing.select(wkeys), superseded.select(wkeys)], how="vertical_relaxed")
    return FoldResult(
        WindowState(partials, state.rows, after, seq), out, late.drop("__seq", "__t"), changed, closed, state.rows.clear(), _none()
    )


def _with_retracted(spec: WindowSpec, frame: pl.DataFrame, value: bool) -> pl.DataFrame:
    if "retracted" in spec.output_schema:
        return frame.with_columns(pl.lit(value).alias("retracted"))
    return frame


def _retractions(spec: WindowSpec, superseded: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """Rows that retract session windows merged into a bigger one (update mode)."""
    gone = superseded.join(current, on=[*spec.group_keys, WS], how="anti")  # same start: the update replaces it
    if gone.height == 0:
        return _empty_out(spec)
    return _project(spec, gone, [pl.lit(None) for _ in spec.aggs], pl.lit(True).alias("retracted"))


def _label_sessions(rows: pl.DataFrame, gap: int, keys: list[str]) -> pl.DataFrame:
    """Kept rows labelled with their session's [start, end)."""
    if rows.height == 0:
        return rows.with_columns(pl.lit(None, dtype=pl.Int64).alias(WS), pl.lit(None, dtype=pl.Int64).alias(WE))
    spans = _sessionize(rows.with_columns(pl.col("__t").alias(WS), (pl.col("__t") + gap).alias(WE)), keys)
    bounds = spans.group_by([*keys, "__sid"]).agg(pl.col(WS).min().alias("__s"), pl.col(WE).max().alias("__e"))
    return spans.join(bounds, on=[*keys, "__sid"]).drop(WS, WE, "__sid").rename({"__s": WS, "__e": WE})


def _sessions_of_rows(rows: pl.DataFrame, gap: int, keys: list[str]) -> pl.DataFrame:
    return _label_sessions(rows, gap, keys).select([*keys, WS, WE]).unique()


def _fold_sliding(spec: WindowSpec, state: WindowState, frame: pl.DataFrame, before: int | None, after: int | None, seq: int) -> FoldResult:
    assert isinstance(spec.window, Sliding)
    size, lateness = spec.window.size_ms, spec.allowed_lateness_ms
    keys = spec.group_keys
    is_late = pl.lit(False) if before is None else (pl.col("__t") + lateness) <= before
    late = frame.filter(is_late)
    added = frame.filter(~is_late).select(spec.row_schema().names())
    rows = pl.concat([state.rows, added], how="vertical_relaxed") if added.height else state.rows
    emitted: list[pl.DataFrame] = []
    # windows to compute: final mode -> those that close now; update mode -> those the new rows changed
    ends = rows.select([*keys, "__t"]).unique()
    if spec.emit == "final":
        closes = (pl.col("__t") + lateness) <= after if after is not None else pl.lit(False)
        already = (pl.col("__t") + lateness) <= before if before is not None else pl.lit(False)
        wanted = ends.filter(closes & ~already)
    else:
        new = added.select([*keys, pl.col("__t").alias("__n")])
        wanted = ends.join(new, on=keys).filter((pl.col("__t") >= pl.col("__n")) & (pl.col("__t") < pl.col("__n") + size)).select([*keys, "__t"]).unique()
    if wanted.height:
        emitted.append(_sliding_values(spec, rows, wanted))
    # rows no future window needs: t <= watermark - lateness - size
    if after is not None:
        dead = (pl.col("__t") + size + lateness) <= after
        closing = rows.filter(dead)
        rows = rows.filter(~dead)
    else:
        closing = rows.clear()
    out = pl.concat(emitted, how="vertical_relaxed") if emitted else _empty_out(spec)
    return FoldResult(
        WindowState(state.partials, rows, after, seq), out, late.drop("__seq", "__t"), _none(), _none(), added,
        closing.select(spec.row_ids),
    )


def _sliding_values(spec: WindowSpec, rows: pl.DataFrame, wanted: pl.DataFrame) -> pl.DataFrame:
    """Values of the sliding windows ``(t - size, t]`` for the wanted (keys, ``__t``) ends."""
    assert isinstance(spec.window, Sliding)
    size, keys = spec.window.size_ms, spec.group_keys
    cand = rows.join(wanted.rename({"__t": "__end"}), on=keys).filter(
        (pl.col("__t") > pl.col("__end") - size) & (pl.col("__t") <= pl.col("__end"))
    )
    out = (
        cand.sort("__seq")
        .group_by([*keys, "__end"], maintain_order=True)
        .agg(**{a.name: a.expr for a in spec.aggs})
        .with_columns((pl.col("__end") - size).alias(WS), pl.col("__end").alias(WE))
    )
    return _project(spec, out, [pl.col(a.name) for a in spec.aggs])


def _none() -> pl.DataFrame:
    return pl.DataFrame()


def current_values(spec: WindowSpec, state: WindowState) -> pl.DataFrame:
    """The current value of every open window in ``state`` (keys, bounds, aggregates)."""
    if not spec.keeps_rows:
        return finalize_partials(spec, state.partial_frame())
    rows, keys = state.rows, spec.group_keys
    if isinstance(spec.window, Sliding):
        ends = rows.select([*keys, "__t"]).unique()
        if state.watermark is not None:
            ends = ends.filter(pl.col("__t") + spec.allowed_lateness_ms > state.watermark)
        return _sliding_values(spec, rows, ends) if ends.height else _empty_out(spec).drop("retracted", strict=False)
    if isinstance(spec.window, Session):
        labelled = _label_sessions(rows, spec.window.gap_ms, keys)
    else:
        labelled = _assign(spec, rows).filter(~_closed(spec, pl.col(WE), state.watermark))
    return _aggregate_rows(spec, labelled)
