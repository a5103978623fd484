"""Keyed event-time windows over micro-batches.

A window operator is a frozen spec (:mod:`~lockgate.operators.windows.specs`) and a
logic built from it (:mod:`~lockgate.operators.windows.logic`) that owns the state,
folds batches into it, and hands out the delta of what changed.  No clock, no I/O:
event time is an Int64 column of epoch milliseconds (the engine converts Datetime
columns) and the engine passes the watermark in.

Modules, one reason to change each:

- ``specs``: the window kinds (Tumbling, Hopping, Sliding, Session) and :class:`WindowSpec`.
- ``aggregations``: which aggregations decompose into partials; partials, merges, final values.
- ``fixed``, ``sessions``, ``sliding``: the fold of each window kind.
- ``index``: the hot hash index of fixed windows' partials, updated in place.
- ``state``: :class:`WindowState` (the open windows) and :class:`WindowDelta` (what changed).
- ``logic``: :class:`WindowLogic`, the running operator, and its contract.

Examples
--------
>>> import polars as pl
>>> import lockgate.operators.windows as w
>>> spec = w.WindowSpec.build("w", w.Session("10s"), by="user", aggs={"n": pl.len()},
...                          schema=pl.Schema({"user": pl.String, "__t": pl.Int64}), time_column="__t")
>>> logic = w.WindowLogic(spec)
>>> logic.on_batch(pl.DataFrame({"user": ["a", "a"], "__t": [0, 4_000]}), watermark=None).emitted.height
0
>>> logic.on_batch(pl.DataFrame({"user": ["a"], "__t": [30_000]}), watermark=25_000).emitted.select("n", "window_end").rows()
[(2, datetime.datetime(1970, 1, 1, 0, 0, 14))]
"""

from __future__ import annotations

from lockgate.operators.windows.aggregations import Agg, classify, finalize_partials
from lockgate.operators.windows.index import PartialIndex
from lockgate.operators.windows.logic import BatchOutput, WindowLogic, current_values
from lockgate.operators.windows.specs import Hopping, Session, Sliding, Tumbling, WindowKind, WindowSpec
from lockgate.operators.windows.state import WindowDelta, WindowState

__all__ = [
    "Agg",
    "BatchOutput",
    "Hopping",
    "PartialIndex",
    "Session",
    "Sliding",
    "Tumbling",
    "WindowDelta",
    "WindowKind",
    "WindowLogic",
    "WindowSpec",
    "WindowState",
    "classify",
    "current_values",
    "finalize_partials",
]
