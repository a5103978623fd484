"""Nexmark queries as lockgate pipelines, each with its Polars batch oracle over the same events.

The queries of the Nexmark suite that need no stream-stream join and no window over a
window (q3, q4 and q8 wait for the interval and window joins, q5 for a check of chained
windows' closing; issue 15):

- q0 pass-through: every bid.
- q1 currency conversion: each bid's price in euros (``price * 0.908``, as the suite does).
- q2 selection: the bids of every 123rd auction (``auction % 123 == 0``, the Flink suite's form).
- q7 highest bid: per 10 s tumbling window, the highest bid(s).
- q11 user sessions: per bidder, the bids of each session (gap 10 s).

Event time is ``date_time`` (epoch ms), watermark delay 0 (the generator writes in event
order).  Each ``build_*`` adds the query to a pipeline reading the bid topic and writes
its result to the topic ``<pipeline>-out``; ``oracle(query, events)`` is what the output
must hold once the input has been read (windows: the ones the last watermark closed).

Examples
--------
>>> from bench.nexmark.generator import generate
>>> from bench.nexmark.queries import oracle
>>> events = generate(50_000, seed=1)
>>> oracle("q0", events).height == events.bids.height
True
>>> oracle("q7", events).columns
['window_start', 'window_end', 'auction', 'bidder', 'price']
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

import lockgate as lg
from bench.nexmark.generator import BID_SCHEMA, Events

WINDOW_MS = 10_000
SLIDE_MS = 2_000
SESSION_GAP_MS = 10_000
EUROS_PER_DOLLAR = 0.908

#: the bid topic's JSON schema (``date_time`` read as Datetime("ms"))
BID_JSON = {**BID_SCHEMA, "date_time": pl.Datetime("ms")}


def _bids(pipe: lg.Pipeline, topic: str) -> lg.Stream:
    return pipe.source(topic, format=lg.JSON(schema=BID_JSON), event_time="date_time", watermark="0s")


def build_q0(pipe: lg.Pipeline, topic: str) -> None:
    _bids(pipe, topic).select("auction", "bidder", "price", "date_time").to_kafka(f"{pipe.name}-out")


def build_q1(pipe: lg.Pipeline, topic: str) -> None:
    _bids(pipe, topic).select(
        "auction", "bidder", (pl.col("price") * EUROS_PER_DOLLAR).alias("price"), "date_time"
    ).to_kafka(f"{pipe.name}-out")


def build_q2(pipe: lg.Pipeline, topic: str) -> None:
    _bids(pipe, topic).filter(pl.col("auction") % 123 == 0).select("auction", "price").to_kafka(f"{pipe.name}-out")


def _highest() -> dict[str, pl.Expr]:
    """q7's aggregation of one window's bids: the highest price, and the auctions and bidders of the bids at it."""
    top = pl.col("price") == pl.col("price").max()
    return {"auction": pl.col("auction").filter(top), "bidder": pl.col("bidder").filter(top), "price": pl.col("price").max()}


def build_q7(pipe: lg.Pipeline, topic: str) -> None:
    _bids(pipe, topic).window(lg.Tumbling(f"{WINDOW_MS}ms"), name="highest").agg(**_highest()).to_kafka(f"{pipe.name}-out")


def build_q11(pipe: lg.Pipeline, topic: str) -> None:
    _bids(pipe, topic).window(lg.Session(f"{SESSION_GAP_MS}ms"), by="bidder", name="sessions").agg(bids=pl.len()).to_kafka(f"{pipe.name}-out")


QUERIES: dict[str, Callable[[lg.Pipeline, str], None]] = {
    "q0": build_q0, "q1": build_q1, "q2": build_q2, "q7": build_q7, "q11": build_q11,
}


def last_watermark(events: Events, partitions: int | None = None) -> int:
    """The watermark (epoch ms, delay 0) once every bid has been read: the minimum over the partitions of their latest event time."""
    if partitions is None:
        return int(events.bids["date_time"].max())  # type: ignore[arg-type]
    return int(events.bids.group_by(pl.col("auction") % partitions).agg(pl.col("date_time").max())["date_time"].min())  # type: ignore[arg-type]


def oracle(query: str, events: Events, partitions: int | None = None) -> pl.DataFrame:
    """What ``query``'s output holds once all ``events`` have been read (a Polars batch computation).

    Windows: the ones the last watermark closed.  With ``partitions`` (the bid topic's,
    bids in partition ``auction % partitions``, as ``produce.write`` puts them) that
    watermark is the minimum over the partitions of their latest event time, as the
    engine's (and Flink's) is; without, the latest event time.
    """
    bids = events.bids.with_columns(pl.col("date_time").cast(pl.Datetime("ms")))
    last = pl.Series([last_watermark(events, partitions)]).cast(pl.Datetime("ms"))[0]
    if query == "q0":
        return bids.select("auction", "bidder", "price", "date_time")
    if query == "q1":
        return bids.select("auction", "bidder", (pl.col("price") * EUROS_PER_DOLLAR).alias("price"), "date_time")
    if query == "q2":
        return bids.filter(pl.col("auction") % 123 == 0).select("auction", "price")
    if query == "q7":
        windows = bids.with_columns(window_start=pl.col("date_time").dt.truncate(f"{WINDOW_MS}ms"))
        top = windows.group_by("window_start").agg(**_highest()).with_columns(
            window_end=pl.col("window_start") + pl.duration(milliseconds=WINDOW_MS)
        )
        return top.filter(pl.col("window_end") <= last).select("window_start", "window_end", "auction", "bidder", "price")
    if query == "q11":
        ordered = bids.sort("bidder", "date_time")
        new = (pl.col("date_time") - pl.col("date_time").shift(1).over("bidder")).fill_null(pl.duration(milliseconds=SESSION_GAP_MS))
        sessions = (
            ordered.with_columns(sid=(new >= pl.duration(milliseconds=SESSION_GAP_MS)).cum_sum())
            .group_by("bidder", "sid")
            .agg(window_start=pl.col("date_time").min(), window_end=pl.col("date_time").max() + pl.duration(milliseconds=SESSION_GAP_MS),
                 bids=pl.len())
        )
        return sessions.filter(pl.col("window_end") <= last).select("bidder", "window_start", "window_end", "bids")
    raise KeyError(f"{query!r}: the queries are {sorted(QUERIES)}")


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """A query's rows in one order, list values sorted: two outputs are the same multiset when these are equal."""
    lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
    return frame.with_columns(pl.col(c).list.sort() for c in lists).sort(pl.all())
