"""The window logic: a running window operator that owns its state and folds batches into it.

A spec says what to compute; a :class:`WindowLogic` is built from a spec and the
state to resume from (empty, or loaded from storage), as Flink's window operator
and Bytewax's window logic are, and then takes the batches:

- :meth:`WindowLogic.on_batch` folds one batch at the pipeline's watermark and
  returns what it emits and which records came late.  No clock, no I/O.
- :meth:`WindowLogic.take_delta` returns a :class:`~lockgate.operators.windows.state.WindowDelta`:
  the state rows changed since the previous take (or since the logic was built)
  and the ids of the rows that left the state.  Storage appends it as it is.

The contract: **the logic owns its state and updates it in place.**  Fixed
windows keep their partials in a mutable hash index (copying it per batch would
cost a copy of the whole state on the latency path), so the state given to
``WindowLogic(spec, state)`` belongs to the logic from then on and must not be
used by the caller afterwards; :attr:`WindowLogic.state` is a view of the current
state, good until the next ``on_batch``.  Folding the same batch twice counts it
twice.  To go back to an earlier state (an aborted epoch), build a new logic from
the state loaded from storage.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.windows import Tumbling, WindowLogic, WindowSpec
>>> spec = WindowSpec.build("w", Tumbling("1m"), by=["user"], aggs={"n": pl.len(), "total": pl.col("x").sum()},
...                        schema=pl.Schema({"user": pl.String, "x": pl.Int64, "__t": pl.Int64}), time_column="__t")
>>> logic = WindowLogic(spec)
>>> batch = pl.DataFrame({"user": ["a", "a", "b"], "x": [1, 2, 5], "__t": [1_000, 59_000, 61_000]})
>>> out = logic.on_batch(batch, watermark=60_000)
>>> out.emitted.select("user", "n", "total").to_dicts()   # [0, 60s) closed at watermark 60 s
[{'user': 'a', 'n': 2, 'total': 3}]
>>> delta = logic.take_delta()
>>> delta.upserts.select("user", "window_start").rows(), delta.deletes.select("user", "window_start").rows()
([('a', 0), ('b', 60000)], [('a', 0)])
>>> logic.state.open_windows, logic.take_delta().rows   # nothing changed since the take
(1, 0)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl
from lockgate.operators.windows.aggregations import aggregate_rows, finalize_partials
from lockgate.operators.windows.fixed import advance_fixed, assign
from lockgate.operators.windows.sessions import advance_sessions, label_sessions
from lockgate.operators.windows.sliding import advance_sliding, sliding_values
from lockgate.operators.windows.specs import _GLOBAL, WE, Session, Sliding, WindowSpec
from lockgate.operators.windows.state import WindowDelta, WindowState

__all__ = ["BatchOutput", "WindowLogic", "current_values", "prepare"]


class BatchOutput(NamedTuple):
    """What one batch made a window operator emit, and the input rows it refused as late."""

    emitted: pl.DataFrame  # output rows: keys, window_start, window_end, aggregates (and ``retracted`` for update-mode sessions)
    late: pl.DataFrame  # input rows whose windows had all closed before the batch


class WindowLogic:
    """A running window operator: folds batches into the state it owns and hands out what changed.

    Parameters
    ----------
    spec
        The window operator.
    state
        The state to continue from (``WindowState.empty(spec)`` when None); the logic
        owns it from now on: do not use it afterwards.

    The changes of the batches pile up until :meth:`take_delta` takes them (the
    engine takes after every batch).
    """

    def __init__(self, spec: WindowSpec, state: WindowState | None = None) -> None:
        self.spec = spec
        self._state = WindowState.empty(spec) if state is None else state
        kind = spec.window
        self._advance = advance_sliding if isinstance(kind, Sliding) else advance_sessions if isinstance(kind, Session) else advance_fixed
        self._changes: list[tuple[pl.DataFrame, pl.DataFrame]] = []  # (upserts, deletes) of each batch since the last take
        schema = spec.row_schema() if spec.keeps_rows else spec.partial_schema()
        self._no_change = (pl.DataFrame(schema=schema), pl.DataFrame(schema={c: schema[c] for c in spec.state_ids}))

    @property
    def state(self) -> WindowState:
        """The current state (a view: its index changes with the next :meth:`on_batch`)."""
        return self._state

    def on_batch(self, batch: pl.DataFrame, watermark: int | None) -> BatchOutput:
        """Fold one batch into the state.

        Parameters
        ----------
        batch
            The batch's rows; ``spec.time_column`` holds event time as epoch milliseconds.
        watermark
            The pipeline's watermark after this batch (epoch ms), or None before any.
            Records are judged late against the watermark *before* the batch; windows
            close when ``window_end + allowed_lateness <= watermark`` after it.

        Returns
        -------
        BatchOutput
            The emitted rows and the late input rows.
        """
        state = self._state
        before = state.watermark
        after = before if watermark is None else (watermark if before is None else max(before, watermark))
        frame = prepare(self.spec, batch, state.seq)
        step = self._advance(self.spec, state, frame, before, after, state.seq + frame.height)
        self._state = step.state
        self._changes.append((step.upserts, step.deletes))
        return BatchOutput(step.emitted, step.late)

    def take_delta(self, *, snapshot: bool = False) -> WindowDelta:
        """What changed in the state since the last take; the next take starts from here.

        With ``snapshot``, ``upserts`` holds every open window (or kept row), not only
        the changed ones, so that storage may drop the history before it (O(state)).
        """
        changes, self._changes = self._changes, []
        if not changes:
            upserts, deletes = self._no_change
        elif len(changes) == 1:
            upserts, deletes = changes[0]
        else:
            upserts, deletes = _combine(changes, self.spec.state_ids, self._no_change[0].schema)
        if snapshot:
            upserts = self._state.rows if self.spec.keeps_rows else self._state.partial_frame()
        return WindowDelta(upserts, deletes, snapshot=snapshot, batches=len(changes), open_windows=self._state.open_windows)

    def current_values(self) -> pl.DataFrame:
        """The current value of every open window (see :func:`current_values`)."""
        return current_values(self.spec, self._state)


def _combine(changes: list[tuple[pl.DataFrame, pl.DataFrame]], ids: list[str], schema: pl.Schema) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The (upserts, deletes) of several batches as one: per id, the last thing that happened to it.

    Each batch's upserts come before its deletes.  Only when more than one batch
    was folded between two takes (the engine takes after every batch).
    """
    events = []
    for n, (upserts, deletes) in enumerate(changes):
        events.append(upserts.with_columns(pl.lit(2 * n).alias("__lg_event")))
        events.append(deletes.select(ids).with_columns(pl.lit(2 * n + 1).alias("__lg_event")))
    ordered = pl.concat(events, how="diagonal_relaxed").sort("__lg_event", maintain_order=True)
    last = ordered.unique(ids, keep="last", maintain_order=True)
    gone = pl.col("__lg_event") % 2 == 1
    upserts = last.filter(~gone).select(schema.names()).cast(dict(schema))  # type: ignore[arg-type]
    return upserts, last.filter(gone).select(ids)


def prepare(spec: WindowSpec, batch: pl.DataFrame, seq: int) -> pl.DataFrame:
    """The batch with the columns every fold reads: ``__t`` (event time, Int64 ms) and ``__seq`` (arrival number from ``seq``)."""
    frame = batch
    if not spec.by:
        frame = frame.with_columns(pl.lit(0, dtype=pl.Int32).alias(_GLOBAL))
    if "__t" not in frame.columns and "__seq" not in frame.columns:  # the usual case: Series appended, no query
        return frame.hstack([
            frame.get_column(spec.time_column).cast(pl.Int64).alias("__t"),
            pl.Series("__seq", np.arange(seq, seq + frame.height, dtype=np.int64)),
        ])
    return frame.with_columns(
        pl.col(spec.time_column).cast(pl.Int64).alias("__t"),
        (pl.int_range(pl.len(), dtype=pl.Int64) + seq).alias("__seq"),
    )


def current_values(spec: WindowSpec, state: WindowState) -> pl.DataFrame:
    """The current value of every open window in ``state`` (keys, bounds, aggregates)."""
    if not spec.keeps_rows:
        return finalize_partials(spec, state.partial_frame())
    rows, keys = state.rows, spec.group_keys
    if isinstance(spec.window, Sliding):
        ends = rows.select([*keys, "__t"]).unique()
        if state.watermark is not None:
            ends = ends.filter(pl.col("__t") + spec.allowed_lateness_ms > state.watermark)
        return sliding_values(spec, rows, ends) if ends.height else spec.empty_output().drop("retracted", strict=False)
    if isinstance(spec.window, Session):
        labelled = label_sessions(rows, spec.window.gap_ms, keys)
    else:
        labelled = assign(spec, rows).filter(~spec.is_closed(pl.col(WE), state.watermark))
    return aggregate_rows(spec, labelled)
