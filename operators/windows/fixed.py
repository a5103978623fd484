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

import polars as pl
from lockgate.operators.windows.aggregations import (
    aggregate_rows,
    batch_partials,
    close_partials,
    elementwise_merges,
    finalize_partials,
    merge_partials,
)
from lockgate.operators.windows.index import PartialIndex
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
    merges = {k: v for a in spec.aggs for k, v in a.merges().items()}
    if state.index is not None or PartialIndex.supports(state.partials.schema, spec.group_keys):
        index = state.index if state.index is not None else PartialIndex.from_frame(state.partials, spec.group_keys)
        changed = state.partials.clear()
        if on_time.height:
            changed = index.upsert(batch_partials(spec, on_time, keys), merges, elementwise_merges(spec, state.partials.schema))
            if spec.emit == "update":
                emitted.append(finalize_partials(spec, changed))
        closing = index.close_until(after - spec.allowed_lateness_ms) if after is not None else changed.clear()
        if closing.height and spec.emit == "final":
            emitted.append(finalize_partials(spec, closing))
        out = pl.concat(emitted, how="vertical_relaxed") if emitted else spec.empty_output()
        new_state = WindowState(state.partials.clear(), state.rows, after, seq, index)
        return FoldStep(new_state, out, late.drop("__seq", "__t"), changed, closing.select(keys))
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
