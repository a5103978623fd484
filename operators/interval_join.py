"""Interval joins of two streams: the logic over Polars frames (no I/O).

A pair (left row, right row) matches when their keys are equal and
``left.t + lower <= right.t <= left.t + upper`` on each side's event time (Flink's
interval join: ``within=("5s", "30s")`` is lower -5 s, upper +30 s; ``within="10s"``
is -10 s .. +10 s).  Each batch joins its new rows with the new and the buffered
rows of the other side (each pair once), buffers its rows, and drops buffered rows
no future row can match once the watermark passed them:

- a left row once ``left.t + upper < watermark`` (a right row still to come has
  ``t >= watermark``);
- a right row once ``right.t - lower < watermark`` (a left row still to come has
  ``t >= watermark`` and needs ``left.t <= right.t - lower``).

With ``how="left"`` a left row that never matched is emitted with nulls when it is
dropped: once the watermark passed ``left.t + upper``, never earlier, never twice.
A row whose event time is below the watermark before its batch is late (as in
Flink: ``t < watermark``): it goes to ``late_left``/``late_right``, never into a pair.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.interval_join import IntervalJoinLogic
>>> from lockgate.operators.join_rows import StreamJoinSpec
>>> spec = StreamJoinSpec.build("j", on="ad", lower_ms=-5_000, upper_ms=30_000, how="left",
...     left_schema=pl.Schema({"ad": pl.String, "t": pl.Int64}), right_schema=pl.Schema({"ad": pl.String, "t": pl.Int64}),
...     left_time="t", right_time="t")
>>> join = IntervalJoinLogic(spec)
>>> views = pl.DataFrame({"ad": ["a", "b"], "t": [1_000, 2_000]})
>>> clicks = pl.DataFrame({"ad": ["a"], "t": [20_000]})
>>> join.on_batch(views, clicks, watermark_before=None, watermark_after=15_000).pairs.to_dicts()
[{'ad': 'a', 't': 1000, 't_right': 20000}]
>>> join.on_batch(views.clear(), clicks.clear(), watermark_before=15_000, watermark_after=40_000).pairs.to_dicts()
[{'ad': 'b', 't': 2000, 't_right': None}]
"""

from __future__ import annotations

import polars as pl
from lockgate.operators.event_time import epoch_ms
from lockgate.operators.join_rows import _MATCHED, _T, ROW_ID, JoinOutput, JoinRows, StreamJoinSpec
from lockgate.operators.queries import collect_all

__all__ = ["IntervalJoinLogic"]


class IntervalJoinLogic(JoinRows):
    """A running interval join: buffers both sides, emits pairs once, drops what the watermark passed.

    The state is two frames (``left``, ``right``), each side's rows with their event
    time in ``__lg_t`` and an id in ``__lg_row``; the left one also says whether each
    row matched (``__lg_matched``).
    """

    def on_batch(
        self, left: pl.DataFrame, right: pl.DataFrame, *, watermark_before: int | None, watermark_after: int | None,
    ) -> JoinOutput:
        """Fold one batch of each side (either may be empty); ``watermark_*`` in epoch ms (None: none yet)."""
        spec = self.spec
        new_left = left.with_columns(epoch_ms(spec.left_time, left.schema[spec.left_time]).alias(_T))
        new_right = right.with_columns(epoch_ms(spec.right_time, right.schema[spec.right_time]).alias(_T))
        late_left = late_right = None
        if watermark_before is not None:
            late_left, new_left = _split_late(new_left, watermark_before)
            late_right, new_right = _split_late(new_right, watermark_before)
        new_left = new_left.with_columns(pl.lit(False).alias(_MATCHED), self._ids("left", new_left.height))
        new_right = new_right.with_columns(self._ids("right", new_right.height))
        self._came("left", new_left)
        self._came("right", new_right)
        # each pair once: new left x (buffered right + new right), buffered left x new right
        all_right = pl.concat([self.right, new_right], how="vertical_relaxed")
        first = _pairs_with(spec, new_left.lazy(), all_right.lazy())
        second = _pairs_with(spec, self.left.lazy(), new_right.lazy())
        first, second = collect_all([first, second])
        old_left = self.left
        if spec.how == "left":  # only a left join needs to know which left rows matched
            flipped = second.get_column(ROW_ID).unique()
            was = old_left.filter(pl.col(ROW_ID).is_in(flipped.implode()) & ~pl.col(_MATCHED)).get_column(ROW_ID)
            if was.len():
                self._changed["left"].append(was)  # matched since they were stored
                old_left = old_left.with_columns(pl.col(_MATCHED) | pl.col(ROW_ID).is_in(was.implode()))
            new_left = new_left.with_columns(pl.col(_MATCHED) | pl.col(ROW_ID).is_in(first.get_column(ROW_ID).unique().implode()))
        emitted = [first.drop(ROW_ID), second.drop(ROW_ID)]
        buffered_left = pl.concat([old_left, new_left], how="vertical_relaxed")
        buffered_right = all_right
        if watermark_after is not None:
            done = pl.col(_T) + spec.upper_ms < watermark_after
            gone = buffered_left.filter(done)
            buffered_left = buffered_left.filter(~done)
            expired = pl.col(_T) - spec.lower_ms < watermark_after
            self._left("right", buffered_right.filter(expired))
            buffered_right = buffered_right.filter(~expired)
            self._left("left", gone)
            if spec.how == "left" and gone.height:
                emitted.append(gone.filter(~pl.col(_MATCHED)).drop(_T, _MATCHED, ROW_ID))
            self._moved_on(watermark_after)
        self.left, self.right = buffered_left, buffered_right
        return self._output(emitted, left, right, late_left, late_right)

def _pairs_with(spec: StreamJoinSpec, left: pl.LazyFrame, right: pl.LazyFrame) -> pl.LazyFrame:
    """Every matching pair of ``left`` and ``right`` rows (both carry ``__lg_t``) in the output's columns, and the left row's id (which matched)."""
    joined = left.join(right.drop(ROW_ID), on=list(spec.on), how="inner", suffix="_right")
    t_right = f"{_T}_right"
    joined = joined.filter((pl.col(t_right) >= pl.col(_T) + spec.lower_ms) & (pl.col(t_right) <= pl.col(_T) + spec.upper_ms))
    return joined.select([*spec.output_schema().names(), ROW_ID])


def _split_late(frame: pl.DataFrame, watermark: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(late rows, on-time rows): late is below the watermark before the batch."""
    late = pl.col(_T) < watermark
    return frame.filter(late), frame.filter(~late)
