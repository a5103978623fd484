"""Session windows: records of a key closer than the gap share a session; a record may merge two.

``window_start`` is a session's first event time, ``window_end`` its last plus the
gap.  A batch's records are sessionized together with the open sessions of their
keys; sessions a record bridges merge into one (in update mode the merged-away
ones are retracted: ``retracted = true``).  A record is late only when its session
holds no open session and has closed.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.windows.sessions import label_sessions
>>> rows = pl.DataFrame({"k": ["a", "a", "a"], "__t": [0, 4_000, 20_000]})
>>> label_sessions(rows, 5_000, ["k"]).sort("__t").select("window_start", "window_end").rows()
[(0, 9000), (0, 9000), (20000, 25000)]
"""

from __future__ import annotations

import polars as pl
from lockgate.operators.windows.aggregations import aggregate_rows, close_partials, finalize_partials
from lockgate.operators.windows.specs import WE, WS, Session, WindowSpec
from lockgate.operators.windows.state import FoldStep, WindowState

__all__ = ["advance_sessions", "label_sessions", "sessionize"]


def advance_sessions(
    spec: WindowSpec, state: WindowState, frame: pl.DataFrame, before: int | None, after: int | None, seq: int
) -> FoldStep:
    """Fold one prepared batch into session windows, merging the sessions its records bridge; consumes ``state``.

    The arguments are those of :func:`~lockgate.operators.windows.fixed.advance_fixed`.
    """
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
    combined = sessionize(
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
    late_sids = verdict.filter(~pl.col("__has_old") & spec.is_closed(pl.col("__end"), before)).select([*keys, "__sid"])
    late_seq = combined.join(late_sids, on=[*keys, "__sid"], how="semi").select("__seq").drop_nulls()
    late = frame.join(late_seq, on="__seq", how="semi")
    accepted = frame.join(late_seq, on="__seq", how="anti")
    if spec.keeps_rows:
        added = accepted.select(spec.row_schema().names())
        rows = pl.concat([state.rows, added], how="vertical_relaxed") if added.height else state.rows
        labelled = label_sessions(rows, gap, keys)
        sessions_now = labelled.select(wkeys).unique()
        old_touched = relevant_old.join(sessions_now, on=wkeys, how="anti")  # superseded by a merge
        if spec.emit == "update" and added.height:
            touched = labelled.join(added.select("__seq"), on="__seq", how="semi").select(wkeys).unique()
            emitted.append(_retractions(spec, old_touched, touched))
            emitted.append(_with_retracted(spec, aggregate_rows(spec, labelled.join(touched, on=wkeys, how="semi")), False))
        closing = labelled.filter(spec.is_closed(pl.col(WE), after))
        if spec.emit == "final" and closing.height:
            emitted.append(aggregate_rows(spec, closing))
        new_rows = rows.join(closing.select(spec.row_ids), on=spec.row_ids, how="anti")
        out = pl.concat(emitted, how="vertical_relaxed") if emitted else spec.empty_output()
        return FoldStep(WindowState(state.partials, new_rows, after, seq), out, late.drop("__seq", "__t"), added, closing.select(spec.row_ids))
    partials = state.partials
    changed = partials.clear()
    superseded = partials.clear().select(wkeys)
    if accepted.height:
        acc = accepted.with_columns(pl.col("__t").alias(WS), (pl.col("__t") + gap).alias(WE))
        acc_sessions = sessionize(acc, keys)
        exprs = {k: v for a in spec.aggs for k, v in a.partials().items()}
        batch_partials = acc_sessions.group_by([*keys, "__sid"], maintain_order=True).agg(
            pl.col(WS).min(), pl.col(WE).max(), **exprs
        ).drop("__sid")
        old = partials.join(batch_partials.select(keys).unique(), on=keys, how="semi")
        rest = partials.join(batch_partials.select(keys).unique(), on=keys, how="anti")
        both = pl.concat([old, batch_partials.select(partials.columns)], how="vertical_relaxed")
        labelled = sessionize(both, keys)
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
    partials, closing = close_partials(spec, partials, after, emitted)
    out = pl.concat(emitted, how="vertical_relaxed") if emitted else spec.empty_output()
    closed = pl.concat([closing.select(wkeys), superseded.select(wkeys)], how="vertical_relaxed")
    return FoldStep(WindowState(partials, state.rows, after, seq), out, late.drop("__seq", "__t"), changed, closed)


def _with_retracted(spec: WindowSpec, frame: pl.DataFrame, value: bool) -> pl.DataFrame:
    if "retracted" in spec.output_schema:
        return frame.with_columns(pl.lit(value).alias("retracted"))
    return frame


def _retractions(spec: WindowSpec, superseded: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """Rows that retract session windows merged into a bigger one (update mode)."""
    gone = superseded.join(current, on=[*spec.group_keys, WS], how="anti")  # same start: the update replaces it
    if gone.height == 0:
        return spec.empty_output()
    return spec.project(gone, [pl.lit(None) for _ in spec.aggs], pl.lit(True).alias("retracted"))


def label_sessions(rows: pl.DataFrame, gap: int, keys: list[str]) -> pl.DataFrame:
    """Kept rows labelled with their session's [start, end)."""
    if rows.height == 0:
        return rows.with_columns(pl.lit(None, dtype=pl.Int64).alias(WS), pl.lit(None, dtype=pl.Int64).alias(WE))
    spans = sessionize(rows.with_columns(pl.col("__t").alias(WS), (pl.col("__t") + gap).alias(WE)), keys)
    bounds = spans.group_by([*keys, "__sid"]).agg(pl.col(WS).min().alias("__s"), pl.col(WE).max().alias("__e"))
    return spans.join(bounds, on=[*keys, "__sid"]).drop(WS, WE, "__sid").rename({"__s": WS, "__e": WE})


def _sessions_of_rows(rows: pl.DataFrame, gap: int, keys: list[str]) -> pl.DataFrame:
    return label_sessions(rows, gap, keys).select([*keys, WS, WE]).unique()


def sessionize(intervals: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Label overlapping [start, end) intervals of a key with one session id ``__sid``."""
    ordered = intervals.sort([*keys, WS])
    prev_end = pl.col(WE).cum_max().shift(1).over(keys)
    new = prev_end.is_null() | (pl.col(WS) >= prev_end)
    return ordered.with_columns(new.cast(pl.Int64).cum_sum().alias("__sid"))
