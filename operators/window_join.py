"""Window joins of two streams: pairs that share a key and a tumbling or hopping window, emitted when it closes.

As Flink's window join and Nexmark q8 have it: a left row and a right row pair when
their keys are equal and both event times fall in one window; a pair comes out
once the watermark has passed its window's end (``window_end <= watermark``), with
the window's bounds, never earlier and never twice.  With ``how="left"`` a left
row whose window closed without a right row of its key comes out with nulls.
Each side buffers its rows per window (a hopping window's row once per window it
belongs to); a window's rows leave the state when it closes.  A row all of whose
windows had closed before its batch is late (``late_left``/``late_right``); a row
of a hopping window some of whose windows had closed joins the open ones only.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.join_rows import StreamJoinSpec
>>> from lockgate.operators.window_join import WindowJoinLogic
>>> from lockgate.operators.windows import Tumbling
>>> schema = pl.Schema({"id": pl.Int64, "t": pl.Int64})
>>> spec = StreamJoinSpec.build("new_sellers", on="id", lower_ms=0, upper_ms=0, how="inner", left_schema=schema,
...     right_schema=schema, left_time="t", right_time="t", window=Tumbling("10s"))
>>> join = WindowJoinLogic(spec)
>>> people, auctions = pl.DataFrame({"id": [1, 2], "t": [1_000, 2_000]}), pl.DataFrame({"id": [1, 2], "t": [9_000, 12_000]})
>>> join.on_batch(people, auctions, watermark_before=None, watermark_after=9_000).pairs.height  # [0 s, 10 s) still open
0
>>> join.on_batch(people.clear(), auctions.clear(), watermark_before=9_000, watermark_after=10_000).pairs.select("id", "t", "t_right").rows()
[(1, 1000, 9000)]
"""

from __future__ import annotations

import polars as pl
from lockgate.operators.event_time import epoch_ms
from lockgate.operators.join_rows import _T, ROW_ID, JoinOutput, JoinRows
from lockgate.operators.windows.fixed import assign_windows
from lockgate.operators.windows.specs import WE, WS, Tumbling

__all__ = ["WindowJoinLogic"]


class WindowJoinLogic(JoinRows):
    """A running window join: buffers each side's (row, window) pairs, joins a window's rows when it closes.

    The state is two frames (``left``, ``right``): each side's rows, one per window
    they belong to (``window_start``/``window_end`` as Int64 epoch ms), with their
    event time in ``__lg_t`` and an id in ``__lg_row``.
    """

    def on_batch(
        self, left: pl.DataFrame, right: pl.DataFrame, *, watermark_before: int | None, watermark_after: int | None,
    ) -> JoinOutput:
        """Fold one batch of each side (either may be empty); ``watermark_*`` in epoch ms (None: none yet)."""
        spec = self.spec
        late: dict[str, pl.DataFrame | None] = {"left": None, "right": None}
        for side, rows, column in (("left", left, spec.left_time), ("right", right, spec.right_time)):
            timed = rows.with_columns(epoch_ms(column, rows.schema[column]).alias(_T))
            if watermark_before is not None:  # late: its last window had closed (ends at or before the watermark)
                last_end = self._last_end(pl.col(_T))
                late[side] = timed.filter(last_end <= watermark_before)
                timed = timed.filter(last_end > watermark_before)
            windows = assign_windows(spec.window, timed.rename({_T: "__t"})).rename({"__t": _T})  # type: ignore[arg-type]
            if watermark_before is not None:
                windows = windows.filter(pl.col(WE) > watermark_before)  # a hopping row joins the windows still open
            windows = windows.with_columns(self._ids(side, windows.height))
            self._came(side, windows)
            buffered = pl.concat([getattr(self, side), windows.select(spec.state_schema(side).names())], how="vertical_relaxed")
            setattr(self, side, buffered)
        emitted: list[pl.DataFrame] = []
        if watermark_after is not None:
            closing = pl.col(WE) <= watermark_after
            done_left, done_right = self.left.filter(closing), self.right.filter(closing)
            if done_left.height:
                emitted.append(self._pairs(done_left, done_right))
            self._left("left", done_left)
            self._left("right", done_right)
            self.left, self.right = self.left.filter(~closing), self.right.filter(~closing)
            self._moved_on(watermark_after)
        return self._output(emitted, left, right, late["left"], late["right"])

    def _last_end(self, t: pl.Expr) -> pl.Expr:
        """The end of the last window a row at ``t`` belongs to."""
        window = self.spec.window
        every = window.size_ms if isinstance(window, Tumbling) else window.every_ms  # type: ignore[union-attr]
        return (t // every) * every + window.size_ms  # type: ignore[union-attr]

    def _pairs(self, left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
        """The pairs of the closing windows' rows (and, for ``how="left"``, left rows without one), with the window as Datetime."""
        spec = self.spec
        joined = left.drop(ROW_ID).join(right.drop(ROW_ID, WE), on=[*spec.on, WS], how=spec.how, suffix="_right")  # type: ignore[arg-type]
        return joined.with_columns(pl.from_epoch(WS, time_unit="ms"), pl.from_epoch(WE, time_unit="ms"))
