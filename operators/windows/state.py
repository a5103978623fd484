"""The state of one window operator, and the delta of what changed in it.

:class:`WindowState` holds the open windows: partial aggregates per (key, window),
or the kept rows when an aggregation does not decompose.  For fixed windows the
partials live in a mutable :class:`~lockgate.operators.windows.index.PartialIndex`
that a :class:`~lockgate.operators.windows.logic.WindowLogic` owns and updates in
place, so a ``WindowState`` is a value only while no logic folds into it.

:class:`WindowDelta` is what a logic hands to storage: the state rows that changed
since the last take (in the state's row schema) and the ids of the rows that left
the state.  Storage writes these frames as they are; it needs no fold internals.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.windows import Tumbling, WindowSpec, WindowState
>>> spec = WindowSpec.build("w", Tumbling("1m"), by="user", aggs={"n": pl.len()},
...                        schema=pl.Schema({"user": pl.String, "__t": pl.Int64}), time_column="__t")
>>> stored = pl.DataFrame({"user": ["a"], "window_start": [0], "window_end": [60_000], "__n_n": [3]})
>>> state = WindowState.resume(spec, stored, watermark=30_000)
>>> state.open_windows, state.watermark, state.seq
(1, 30000, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import polars as pl
from lockgate.operators.windows.index import PartialIndex
from lockgate.operators.windows.specs import WindowSpec

__all__ = ["FoldStep", "WindowDelta", "WindowState"]


@dataclass(frozen=True)
class WindowState:
    """The open windows of one window operator, and the watermark they were judged by.

    ``partials``: one row per open (key, window) with partial aggregates (Int64 ms bounds).
    ``rows``: the kept rows (``__t`` event time, ``__seq`` arrival order) when the
    operator keeps rows.  ``seq``: the arrival number of the next row.  ``index``:
    the fixed windows' partials once a logic has folded into them (then ``partials``
    is empty); mutable, owned by that logic.
    """

    partials: pl.DataFrame
    rows: pl.DataFrame
    watermark: int | None = None
    seq: int = 0
    index: PartialIndex | None = None

    @staticmethod
    def empty(spec: WindowSpec) -> WindowState:
        """No open windows.

        >>> import polars as pl
        >>> from lockgate.operators.windows import Tumbling, WindowSpec
        >>> spec = WindowSpec.build("w", Tumbling("1m"), by=None, aggs={"n": pl.len()},
        ...                        schema=pl.Schema({"__t": pl.Int64}), time_column="__t")
        >>> WindowState.empty(spec).open_windows
        0
        """
        return WindowState(pl.DataFrame(schema=spec.partial_schema()), pl.DataFrame(schema=spec.row_schema()))

    @staticmethod
    def resume(spec: WindowSpec, rows: pl.DataFrame, watermark: int | None) -> WindowState:
        """The state holding ``rows`` as stored (the rows of :attr:`WindowDelta.upserts`, latest per id).

        Arrival numbers continue after the newest kept row, or the newest arrival
        order of a first/last partial, so that first and last stay right across a restart.
        """
        empty = WindowState.empty(spec)
        target = empty.rows if spec.keeps_rows else empty.partials
        latest = rows.select(target.columns).cast(dict(target.schema))  # type: ignore[arg-type]
        # arrival order continues after the newest kept row or first/last partial
        order_columns = ["__seq"] if spec.keeps_rows else [c for c in latest.columns if c.endswith("_o")]
        newest = max((int(latest[c].max()) for c in order_columns if latest.height and latest[c].max() is not None), default=-1)  # type: ignore[arg-type]
        if spec.keeps_rows:
            return WindowState(empty.partials, latest.sort("__seq"), watermark, newest + 1)
        return WindowState(latest, empty.rows, watermark, newest + 1)

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
class WindowDelta:
    """What changed in a window operator's state since the last take, for storage to write as it is.

    Apply ``upserts``, then ``deletes``: a row in both has left the state.

    Attributes
    ----------
    upserts
        The new value of every state row that changed (in a snapshot: of every open
        row), in the state's row schema: ``spec.partial_schema()``, or
        ``spec.row_schema()`` for an operator that keeps rows.
    deletes
        The ids (``spec.state_ids``) of the rows that left the state: windows that
        closed or merged into another, kept rows that no window needs any more.
    snapshot
        True when ``upserts`` holds every open row, not only the changed ones.
    batches
        How many batches the delta covers.
    open_windows
        Open (key, window) pairs, or kept rows, after the last of them.
    """

    upserts: pl.DataFrame
    deletes: pl.DataFrame
    snapshot: bool = False
    batches: int = 0
    open_windows: int = 0

    @property
    def rows(self) -> int:
        """How many rows the delta writes (upserts and deletes)."""
        return self.upserts.height + self.deletes.height


class FoldStep(NamedTuple):
    """What one batch did to a window operator (each window kind's ``advance`` returns it)."""

    state: WindowState  # the state after the batch (the one given is consumed)
    emitted: pl.DataFrame
    late: pl.DataFrame
    upserts: pl.DataFrame  # state rows written this batch (see WindowDelta)
    deletes: pl.DataFrame  # ids of state rows that left the state this batch
