"""How lockgate's per-batch Polars queries run: on Polars' in-memory engine.

Polars 2 runs ``LazyFrame.collect()`` on its default engine (``"auto"``), which
picks the streaming engine; its async executor costs more than the work on a batch
of a few thousand rows.  The window fold's one query took 1.7-2.0 ms per batch of
4,000 rows on the default engine and 1.1-1.3 ms in memory, and at 50k events/s the
streaming engine's threads (``async-executor-*``) used 7-8 % of the engine's CPU.
The queries of one batch go through :func:`collect` and :func:`collect_all`.

>>> import polars as pl
>>> collect(pl.LazyFrame({"a": [1, 2]}).select(pl.col("a").sum())).item()
3
>>> [f.height for f in collect_all([pl.LazyFrame({"a": [1]}), pl.LazyFrame({"a": [1, 2]})])]
[1, 2]
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

__all__ = ["ENGINE", "collect", "collect_all"]

#: the Polars engine of a batch's queries
ENGINE = "in-memory"


def collect(query: pl.LazyFrame) -> pl.DataFrame:
    """``query`` run on the in-memory engine."""
    return query.collect(engine=ENGINE)


def collect_all(queries: Iterable[pl.LazyFrame]) -> list[pl.DataFrame]:
    """``queries`` run together (common subplans once) on the in-memory engine."""
    return pl.collect_all(list(queries), engine=ENGINE)
