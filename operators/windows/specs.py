"""Window specs: the four window kinds and the validated window operator, :class:`WindowSpec`.

Specs are frozen values (STYLE.md habit 2): ``lg.Tumbling("1m")`` says what to
compute; :class:`~lockgate.operators.windows.logic.WindowLogic` is built from a
spec and a state and does the computing.  Windows are half-open ``[start, end)``
and aligned to the Unix epoch (as in Flink):

- ``Tumbling(size)``: ``start = floor(t / size) * size``.
- ``Hopping(size, every)``: every window ``[k*every, k*every + size)`` that contains t.
- ``Sliding(size)``: for each record, the window ``(t - size, t]`` of its key, with ``window_end = t``.
- ``Session(gap)``: records of a key closer than ``gap`` share a session;
  ``window_start`` = first event time, ``window_end`` = last event time + gap.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.windows.specs import Hopping, Session, Sliding, Tumbling, WindowSpec
>>> Tumbling("1m"), Hopping("1m", "20s"), Sliding("10s"), Session("30s")
(Tumbling(size_ms=60000), Hopping(size_ms=60000, every_ms=20000), Sliding(size_ms=10000), Session(gap_ms=30000))
>>> spec = WindowSpec.build("w", Tumbling("1m"), by="user", aggs={"n": pl.len(), "u": pl.col("url").n_unique()},
...                        schema=pl.Schema({"user": pl.String, "url": pl.String, "__t": pl.Int64}), time_column="__t")
>>> spec.output_schema.names(), spec.keeps_rows   # n_unique does not decompose: the state keeps the rows
(['user', 'window_start', 'window_end', 'n', 'u'], True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

import polars as pl
from lockgate.errors import PipelineDefinitionError
from lockgate.operators.durations import Duration, parse_duration
from lockgate.operators.windows.aggregations import Agg, classify

__all__ = ["WE", "WS", "Hopping", "Session", "Sliding", "Tumbling", "WindowKind", "WindowSpec"]

#: the window bound columns (Int64 epoch ms in the state, Datetime("ms") in the output)
WS, WE = "window_start", "window_end"
_GLOBAL = "__lg_global"


def _ms(value: Duration, what: str) -> int:
    delta = parse_duration(value, what=what, allow_zero=False)
    ms = delta / timedelta(milliseconds=1)
    if ms != int(ms):
        raise PipelineDefinitionError(f"{what}: {value!r} is finer than a millisecond; event time has millisecond precision")
    return int(ms)


@dataclass(frozen=True, init=False)
class _Sized:
    """A window kind with one duration, ``size`` (its error messages name the kind)."""

    size_ms: int

    def __init__(self, size: Duration) -> None:
        object.__setattr__(self, "size_ms", _ms(size, f"lg.{type(self).__name__}(size)"))


@dataclass(frozen=True, init=False)
class Tumbling(_Sized):
    """Fixed, non-overlapping windows of ``size``, aligned to the epoch."""


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
class Sliding(_Sized):
    """A window per record: ``(t - size, t]`` of its key, emitted with ``window_end = t``."""


@dataclass(frozen=True, init=False)
class Session:
    """Records of a key closer than ``gap`` share a session window."""

    gap_ms: int

    def __init__(self, gap: Duration) -> None:
        object.__setattr__(self, "gap_ms", _ms(gap, "lg.Session(gap)"))


WindowKind = Tumbling | Hopping | Sliding | Session


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

    @property
    def pair_keys(self) -> list[str]:
        """The columns that identify a (key, window) pair: :attr:`group_keys` and the window bounds."""
        return [*self.group_keys, WS, WE]

    @property
    def state_ids(self) -> list[str]:
        """What identifies a row of the state: a kept row's :attr:`row_ids`, or a pair's keys and window bounds."""
        return self.row_ids if self.keeps_rows else self.pair_keys

    def is_closed(self, end: pl.Expr, watermark: int | None) -> pl.Expr:
        """True where a window ending at ``end`` has closed at ``watermark`` (``end + allowed lateness <= watermark``)."""
        if watermark is None:
            return pl.lit(False)
        return (end + self.allowed_lateness_ms) <= watermark

    def closed_windows(self, watermark: int | None) -> pl.Expr:
        """True for the rows of state whose window (``window_end``) has closed at ``watermark``."""
        return self.is_closed(pl.col(WE), watermark)

    def project(self, frame: pl.DataFrame, values: list[pl.Expr], *extra: pl.Expr) -> pl.DataFrame:
        """The output columns: keys, window bounds as Datetime("ms"), ``values`` (one per aggregation) in the oracle's dtypes."""
        return frame.select(
            *[pl.col(k) for k in self.by],
            pl.col(WS).cast(pl.Datetime("ms")),
            pl.col(WE).cast(pl.Datetime("ms")),
            *[v.cast(self.agg_dtypes[a.name]).alias(a.name) for v, a in zip(values, self.aggs, strict=True)],
            *extra,
        )

    def empty_output(self) -> pl.DataFrame:
        """No output rows, in the output schema."""
        return pl.DataFrame(schema=self.output_schema)
