"""Sliding windows: a window ``(t - size, t]`` per record of a key, emitted with ``window_end = t``.

The state keeps the rows (every aggregation is computed over them): a row stays
until no future window can need it, ``t + size + allowed lateness <= watermark``.
Final mode emits the windows whose end the watermark passed; update mode emits
every window a batch's rows changed.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.windows import Sliding, WindowSpec
>>> from lockgate.operators.windows.sliding import sliding_values
>>> spec = WindowSpec.build("w", Sliding("10s"), by="k", aggs={"n": pl.len()},
...                        schema=pl.Schema({"k": pl.String, "__t": pl.Int64}), time_column="__t")
>>> rows = pl.DataFrame({"k": ["a", "a", "a"], "__t": [0, 5_000, 12_000], "__seq": [0, 1, 2]})
>>> sliding_values(spec, rows, rows.select("k", "__t")).select("n").to_series().to_list()   # (t - 10 s, t] of each row
[1, 2, 2]
"""

from __future__ import annotations

import polars as pl
from lockgate.operators.windows.specs import WE, WS, Sliding, WindowSpec
from lockgate.operators.windows.state import FoldStep, WindowState

__all__ = ["advance_sliding", "sliding_values"]


def advance_sliding(
    spec: WindowSpec, state: WindowState, frame: pl.DataFrame, before: int | None, after: int | None, seq: int
) -> FoldStep:
    """Fold one prepared batch into sliding windows (arguments as :func:`~lockgate.operators.windows.fixed.advance_fixed`)."""
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
        emitted.append(sliding_values(spec, rows, wanted))
    # rows no future window needs: t <= watermark - lateness - size
    if after is not None:
        dead = (pl.col("__t") + size + lateness) <= after
        closing = rows.filter(dead)
        rows = rows.filter(~dead)
    else:
        closing = rows.clear()
    out = pl.concat(emitted, how="vertical_relaxed") if emitted else spec.empty_output()
    return FoldStep(WindowState(state.partials, rows, after, seq), out, late.drop("__seq", "__t"), added, closing.select(spec.row_ids))


def sliding_values(spec: WindowSpec, rows: pl.DataFrame, wanted: pl.DataFrame) -> pl.DataFrame:
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
    return spec.project(out, [pl.col(a.name) for a in spec.aggs])
