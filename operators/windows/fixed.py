"""Tumbling and hopping windows: fixed bounds, partials merged in a hot index, or kept rows.

A record's windows follow from its event time alone (:func:`assign`).  Partial
aggregates of the open (key, window) pairs live in a
:class:`~lockgate.operators.windows.index.PartialIndex` when every partial column
is a number, boolean or time (the usual case): a batch costs what it touches, not
the size of the state.  Otherwise they live in a frame, merged with Polars.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.windows import Hopping, WindowSpec
>>> from lockgate.operators.windows.fixed import assign
>>> spec = WindowSpec.build("w", Hopping("10s", "5s"), by=None, aggs={"n": pl.len()},
...                        schema=pl.Schema({"__t": pl.Int64}), time_column="__t")
>>> assign(spec, pl.DataFrame({"__t": [7_000]})).select("window_start", "window_end").rows()
[(5000, 15000), (0, 10000)]
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from lockgate.operators.windows.aggregations import (
    aggregate_rows,
    batch_partials,
    close_partials,
    elementwise_merges,
    finalize_partials,
    merge_partials,
)
from lockgate.operators.queries import collect
from lockgate.operators.windows.index import CHECK as _CHECK, HASH as _HASH, PartialIndex
from lockgate.operators.windows.specs import WE, WS, Hopping, Tumbling, WindowSpec
from lockgate.operators.windows.state import FoldStep, WindowState

__all__ = ["advance_fixed", "assign", "assign_windows"]


def assign(spec: WindowSpec, frame: pl.DataFrame) -> pl.DataFrame:
    """(row, window) pairs for tumbling and hopping windows."""
    return assign_windows(spec.window, frame)  # type: ignore[arg-type]


def assign_windows(window: Tumbling | Hopping, frame: pl.DataFrame) -> pl.DataFrame:
    """(row, window) pairs of ``frame`` (event time in ``__t``, epoch ms): ``window_start``, ``window_end`` as Int64 epoch ms."""
    t = pl.col("__t")
    if isinstance(window, Tumbling):
        start = (t // window.size_ms) * window.size_ms
        return frame.with_columns(start.alias(WS), (start + window.size_ms).alias(WE))
    assert isinstance(window, Hopping)
    n = math.ceil(window.size_ms / window.every_ms)
    last = (t // window.every_ms) * window.every_ms
    pairs = frame.with_columns(pl.int_ranges(0, n, dtype=pl.Int64).alias("__j")).explode("__j")
    pairs = pairs.with_columns((last - pl.col("__j") * window.every_ms).alias(WS)).drop("__j")
    return pairs.with_columns((pl.col(WS) + window.size_ms).alias(WE)).filter(pl.col(WE) > t)


def advance_fixed(
    spec: WindowSpec, state: WindowState, frame: pl.DataFrame, before: int | None, after: int | None, seq: int
) -> FoldStep:
    """Fold one prepared batch into tumbling or hopping windows; consumes ``state`` (its index is updated in place).

    ``before`` judges records late, ``after`` closes windows (see :meth:`WindowLogic.on_batch
    <lockgate.operators.windows.logic.WindowLogic.on_batch>`); ``seq`` is the next arrival number after the batch.
    """
    keys = spec.pair_keys
    uses_index = not spec.keeps_rows and (state.index is not None or PartialIndex.supports(state.partials.schema, spec.group_keys))
    if uses_index and isinstance(spec.window, Tumbling) and frame.height and not _any_late(spec, frame, before):
        # the usual batch: one query gives the partials and their hashes (each row has one window; none is late)
        index = _index_of(spec, state)
        partials, hashes = _tumbling_partials(spec, index, frame)
        no_late = pl.DataFrame(schema={name: dtype for name, dtype in frame.schema.items() if name not in ("__seq", "__t")})
        return _fold_into_index(spec, state, index, partials, hashes, no_late, after, seq)
    pairs = assign(spec, frame)
    on_time = pairs.filter(~spec.is_closed(pl.col(WE), before))
    # every row has a window of its own, so no pair dropped means no row late (the usual batch: no join)
    late = frame.clear() if on_time.height == pairs.height else frame.join(on_time.select("__seq").unique(), on="__seq", how="anti")
    emitted: list[pl.DataFrame] = []
    if spec.keeps_rows:
        added = frame.join(on_time.select("__seq").unique(), on="__seq", how="semi").select(spec.row_schema().names())
        rows = pl.concat([state.rows, added], how="vertical_relaxed") if added.height else state.rows
        labelled = assign(spec, rows).filter(~spec.is_closed(pl.col(WE), before))  # closed windows were emitted
        if spec.emit == "update" and on_time.height:
            touched = on_time.select(keys).unique()
            emitted.append(aggregate_rows(spec, labelled.join(touched, on=keys, how="semi")))
        closing = labelled.filter(spec.is_closed(pl.col(WE), after))
        if spec.emit == "final" and closing.height:
            emitted.append(aggregate_rows(spec, closing))
        # a row stays while any of its windows is open
        ids = spec.row_ids  # arrival numbers are unique per shard (shards may come from other instances)
        alive = labelled.filter(~spec.is_closed(pl.col(WE), after)).select(ids).unique()
        new_rows = rows.join(alive, on=ids, how="semi")
        removed = rows.join(alive, on=ids, how="anti").select(ids)
        new_state = WindowState(state.partials, new_rows, after, seq)
        out = pl.concat(emitted, how="vertical_relaxed") if emitted else spec.empty_output()
        return FoldStep(new_state, out, late.drop("__seq", "__t"), added, removed)
    if uses_index:
        partials = batch_partials(spec, on_time, keys) if on_time.height else None
        return _fold_into_index(spec, state, _index_of(spec, state), partials, None, late.drop("__seq", "__t"), after, seq)
    changed = state.partials.clear()
    partials = state.partials
    if on_time.height:
        incoming = batch_partials(spec, on_time, keys)
        touched = incoming.select(keys)
        old = partials.join(touched, on=keys, how="semi")
        rest = partials.join(touched, on=keys, how="anti") if old.height else partials
        changed = merge_partials(spec, [old, incoming], keys) if old.height else incoming
        changed = changed.select(partials.columns).cast(dict(partials.schema))  # type: ignore[arg-type]
        partials = pl.concat([rest, changed], how="vertical_relaxed")
        if spec.emit == "update":
            emitted.append(finalize_partials(spec, changed))
    partials, closing = close_partials(spec, partials, after, emitted)
    out = pl.concat(emitted, how="vertical_relaxed") if emitted else spec.empty_output()
    return FoldStep(WindowState(partials, state.rows, after, seq), out, late.drop("__seq", "__t"), changed, closing.select(keys))


def _any_late(spec: WindowSpec, frame: pl.DataFrame, before: int | None) -> bool:
    """Whether a row's tumbling window had closed at ``before``, judged by the earliest event time (no query).

    A row without an event time counts as late here: the general path decides about it.

    >>> import polars as pl
    >>> from lockgate.operators.windows import Tumbling, WindowSpec
    >>> spec = WindowSpec.build("w", Tumbling("10s"), by=None, aggs={"n": pl.len()},
    ...                        schema=pl.Schema({"__t": pl.Int64}), time_column="__t")
    >>> _any_late(spec, pl.DataFrame({"__t": [20_000, 25_000]}), before=20_000)  # windows from 20 s: open
    False
    >>> _any_late(spec, pl.DataFrame({"__t": [19_999, 25_000]}), before=20_000)  # [10 s, 20 s) closed at 20 s
    True
    """
    if before is None:
        return False
    times = frame.get_column("__t")
    if times.null_count():
        return True
    size = spec.window.size_ms  # type: ignore[union-attr]
    earliest = int(times.min())  # type: ignore[arg-type]
    return (earliest // size) * size + size + spec.allowed_lateness_ms <= before


def _index_of(spec: WindowSpec, state: WindowState) -> PartialIndex:
    """The state's hot index (built from its partials frame on the first batch)."""
    return state.index if state.index is not None else PartialIndex.from_frame(state.partials, spec.group_keys)


def _tumbling_partials(spec: WindowSpec, index: PartialIndex, frame: pl.DataFrame) -> tuple[pl.DataFrame, tuple[np.ndarray, np.ndarray]]:
    """A batch's partials per (keys, tumbling window) and their index hashes, in one query.

    Equal to :func:`assign` + :func:`batch_partials` + the index's own hashes, which
    take three queries.
    """
    size = spec.window.size_ms  # type: ignore[union-attr]
    exprs = {k: v for a in spec.aggs for k, v in a.partials().items()}
    start = (pl.col("__t") // size) * size
    out = collect(
        frame.lazy()
        .with_columns(start.alias(WS), (start + size).alias(WE))
        .group_by(spec.pair_keys, maintain_order=True).agg(**exprs)
        .with_columns(*index.hash_exprs())
    )
    h, c = out.get_column(_HASH).to_numpy(), out.get_column(_CHECK).to_numpy()
    return pl.DataFrame([out.get_column(name) for name in out.columns if name not in (_HASH, _CHECK)]), (h, c)


def _fold_into_index(
    spec: WindowSpec,
    state: WindowState,
    index: PartialIndex,
    partials: pl.DataFrame | None,
    hashes: tuple[np.ndarray, np.ndarray] | None,
    late: pl.DataFrame,
    after: int | None,
    seq: int,
) -> FoldStep:
    """Merge a batch's partials (None: no row on time) into the state's ``index``, then close the windows ``after`` closes."""
    emitted: list[pl.DataFrame] = []
    changed = state.partials.clear()
    if partials is not None:
        merges = {k: v for a in spec.aggs for k, v in a.merges().items()}
        changed = index.upsert(partials, merges, elementwise_merges(spec, state.partials.schema), hashes=hashes)
        if spec.emit == "update":
            emitted.append(finalize_partials(spec, changed))
    closing = index.close_until(after - spec.allowed_lateness_ms) if after is not None else changed.clear()
    if closing.height and spec.emit == "final":
        emitted.append(finalize_partials(spec, closing))
    out = emitted[0] if len(emitted) == 1 else pl.concat(emitted, how="vertical_relaxed") if emitted else spec.empty_output()
    new_state = WindowState(state.partials.clear(), state.rows, after, seq, index)
    return FoldStep(new_state, out, late, changed, pl.DataFrame([closing.get_column(k) for k in spec.pair_keys]))
