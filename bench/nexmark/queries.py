"""Nexmark queries as lockgate pipelines, each with its Polars batch oracle over the same events.

- q0 pass-through: every bid.
- q1 currency conversion: each bid's price in euros (``price * 0.908``, as the suite does).
- q2 selection: the bids of every 123rd auction (``auction % 123 == 0``, the Flink suite's form).
- q3 local item suggestion: the auctions of category 10 joined with their sellers in OR,
  ID or CA: an interval join of auctions and persons.  The suite's SQL is an unbounded join
  (Flink keeps every person for ever); in the Nexmark model a seller is one of the 1,000
  most recent persons or one of the next 10 (``NUM_ACTIVE_PEOPLE``, ``PERSON_ID_LEAD``),
  so a person comes at most ``1,000 * 50`` events before its auction and 10 * 50 after:
  the join keeps that much event time (:func:`seller_bounds_ms`).  The oracle is the
  unbounded join, so the bound is checked, not assumed.
- q5 hot items: per 10 s window sliding by 2 s, the auction(s) with the most bids: a
  hopping window of counts per auction, then a 1 ms tumbling window over the counts
  (keyed by nothing: through a one-partition repartition topic) that keeps the top.  The
  counts of hop window [s, s + 10 s) have event time s + 10 s and all fall in the
  tumbling window [s + 10 s, s + 10 s + 1 ms), which closes with the first watermark past
  s + 10 s: the top comes out one watermark step after the counts, as Flink's window
  aggregate over a window aggregate does.
- q7 highest bid: per 10 s tumbling window, the highest bid(s).
- q8 monitor new users: the persons who opened an auction in the 10 s tumbling window
  they were created in: a window join of persons and auctions on the seller.
- q11 user sessions: per bidder, the bids of each session (gap 10 s).

- q4 average selling price per category: each auction's winning bid (the highest bid
  between the auction's start and its ``expires``; an interval join of bids and auctions,
  then a window per auction on ``expires``, which closes when the watermark passes the
  auction's end), then per 10 s tumbling window of auction ends the average winning price
  per category (the original Nexmark q4 averages the closed auctions in windows, as here;
  the Flink suite's SQL is an unbounded join with a running average, updated with every
  bid).  A bid may come at most :func:`auction_bounds_ms` after its auction starts.

Event time is ``date_time`` (epoch ms), watermark delay 0 (the generator writes in event
order).  Each ``build_*`` adds the query to a pipeline reading the topics it needs
(``topics``: kind to topic) and writes its result to the topic ``<pipeline>-out``;
``oracle(query, events)`` is what the output must hold once the input has been read
(windows: the ones the last watermark closed).

Examples
--------
>>> from bench.nexmark.generator import generate
>>> from bench.nexmark.queries import oracle
>>> events = generate(50_000, seed=1)
>>> oracle("q0", events).height == events.bids.height
True
>>> oracle("q7", events).columns
['window_start', 'window_end', 'auction', 'bidder', 'price']
>>> READS["q8"]
('person', 'auction')
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

import lockgate as lg
from bench.nexmark.generator import (
    AUCTION_PROPORTION,
    AUCTION_SCHEMA,
    BID_SCHEMA,
    NUM_ACTIVE_PEOPLE,
    NUM_IN_FLIGHT_AUCTIONS,
    PERSON_ID_LEAD,
    PERSON_SCHEMA,
    TOTAL_PROPORTION,
    Events,
)

WINDOW_MS = 10_000
SLIDE_MS = 2_000
#: q5's window over the counts: one event-time instant, the hop window's end
TOP_WINDOW_MS = 1
SESSION_GAP_MS = 10_000
EUROS_PER_DOLLAR = 0.908
#: q3's categories and states
Q3_CATEGORY, Q3_STATES = 10, ["OR", "ID", "CA"]
#: the event rate the bench generates at (events per second of event time): q3's bounds follow from it
RATE = 10_000

#: each kind's JSON schema (``date_time`` read as Datetime("ms"))
JSON_SCHEMAS = {
    kind: {**schema, "date_time": pl.Datetime("ms")}
    for kind, schema in (("person", PERSON_SCHEMA), ("auction", AUCTION_SCHEMA), ("bid", BID_SCHEMA))
}
#: the topics each query reads (the bench counts their events)
READS = {"q0": ("bid",), "q1": ("bid",), "q2": ("bid",), "q3": ("auction", "person"), "q4": ("bid", "auction"), "q5": ("bid",), "q7": ("bid",),
         "q8": ("person", "auction"), "q11": ("bid",)}


def _read(pipe: lg.Pipeline, topics: dict[str, str], kind: str, key: str | None = None) -> lg.Stream:
    return pipe.source(topics[kind], format=lg.JSON(schema=JSON_SCHEMAS[kind]), event_time="date_time", watermark="0s", key=key)


def _bids(pipe: lg.Pipeline, topics: dict[str, str]) -> lg.Stream:
    return _read(pipe, topics, "bid")


def seller_bounds_ms(rate: int = RATE) -> tuple[int, int]:
    """How far (ms of event time) a seller's person may come before and after its auction: 1,000 persons back, 10 ahead, one more each way."""
    per_person_ms = TOTAL_PROPORTION * 1_000 / rate
    return int((NUM_ACTIVE_PEOPLE + 1) * per_person_ms) + 1, int((PERSON_ID_LEAD + 1) * per_person_ms) + 1


def build_q0(pipe: lg.Pipeline, topics: dict[str, str], rate: int = RATE) -> None:
    _bids(pipe, topics).select("auction", "bidder", "price", "date_time").to_kafka(f"{pipe.name}-out")


def build_q1(pipe: lg.Pipeline, topics: dict[str, str], rate: int = RATE) -> None:
    _bids(pipe, topics).select(
        "auction", "bidder", (pl.col("price") * EUROS_PER_DOLLAR).alias("price"), "date_time"
    ).to_kafka(f"{pipe.name}-out")


def build_q2(pipe: lg.Pipeline, topics: dict[str, str], rate: int = RATE) -> None:
    _bids(pipe, topics).filter(pl.col("auction") % 123 == 0).select("auction", "price").to_kafka(f"{pipe.name}-out")


def build_q3(pipe: lg.Pipeline, topics: dict[str, str], rate: int = RATE) -> None:
    auctions = _read(pipe, topics, "auction").filter(pl.col("category") == Q3_CATEGORY).select(
        "date_time", person=pl.col("seller"), auction=pl.col("id")
    )
    persons = _read(pipe, topics, "person").filter(pl.col("state").is_in(Q3_STATES)).select(
        "name", "city", "state", "date_time", person=pl.col("id")
    )
    before, after = seller_bounds_ms(rate)
    sellers = auctions.join(persons, on="person", within=(f"{before}ms", f"{after}ms"), name="sellers")
    sellers.select("name", "city", "state", id=pl.col("auction")).to_kafka(f"{pipe.name}-out")


def auction_bounds_ms(rate: int = RATE) -> int:
    """The longest an auction runs (ms of event time): it expires within twice the time the next 100 auctions take to come, one more ms each way."""
    ahead = (NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION) // AUCTION_PROPORTION
    return 2 * (ahead * 1_000 // rate + 1) + 2


def build_q4(pipe: lg.Pipeline, topics: dict[str, str], rate: int = RATE) -> None:
    bids = _read(pipe, topics, "bid", key="auction").select("auction", "price", "date_time")
    auctions = _read(pipe, topics, "auction", key="id").select("category", "expires", "date_time", auction=pl.col("id"))
    in_auction = bids.join(auctions, on="auction", within=(f"{auction_bounds_ms(rate)}ms", "0s"), name="bids_in_auctions")
    # a bid counts until the auction expires; the pair happens at the auction's end, where its window closes
    ends = in_auction.filter(pl.col("date_time").dt.epoch("ms") <= pl.col("expires")).with_columns(
        date_time=pl.col("expires").cast(pl.Datetime("ms"))
    )
    winning = ends.window(lg.Tumbling("1ms"), by=("auction", "category"), name="winning").agg(final=pl.col("price").max())
    winning.window(lg.Tumbling(f"{WINDOW_MS}ms"), by="category", name="per_category").agg(
        avg_price=pl.col("final").mean(), auctions=pl.len()
    ).to_kafka(f"{pipe.name}-out")


def _top_counts() -> dict[str, pl.Expr]:
    """q5's aggregation of one hop window's counts: the auctions with the most bids, and that count."""
    return {"auction": pl.col("auction").filter(pl.col("num") == pl.col("num").max()), "num": pl.col("num").max(),
            "starttime": pl.col("starttime").first()}


def build_q5(pipe: lg.Pipeline, topics: dict[str, str], rate: int = RATE) -> None:
    bids = _read(pipe, topics, "bid", key="auction")  # the bid topic is keyed by auction: counts keep state per partition
    counts = bids.window(lg.Hopping(f"{WINDOW_MS}ms", f"{SLIDE_MS}ms"), by="auction", name="counts").agg(num=pl.len())
    hottest = counts.with_columns(starttime=pl.col("window_start")).window(lg.Tumbling(f"{TOP_WINDOW_MS}ms"), name="hottest").agg(**_top_counts())
    each = {**dict(hottest.schema), "auction": pl.Int64()}
    hottest.map_batches(lambda df: df.explode("auction"), schema=each, name="each_auction").select(
        "auction", "num", window_start=pl.col("starttime"), window_end=pl.col("window_start")
    ).to_kafka(f"{pipe.name}-out")


def build_q8(pipe: lg.Pipeline, topics: dict[str, str], rate: int = RATE) -> None:
    persons = _read(pipe, topics, "person", key="id").select("id", "name", "date_time")
    sellers = _read(pipe, topics, "auction").select("date_time", id=pl.col("seller"))
    joined = persons.join(sellers, on="id", window=lg.Tumbling(f"{WINDOW_MS}ms"), name="new_sellers")
    # one row per person and window: a window's pairs come out together, in one batch, so a batch's unique is the window's
    joined.map_batches(lambda df: df.unique(["id", "window_start"]), name="once").select(
        "id", "name", starttime=pl.col("window_start")
    ).to_kafka(f"{pipe.name}-out")


def _highest() -> dict[str, pl.Expr]:
    """q7's aggregation of one window's bids: the highest price, and the auctions and bidders of the bids at it."""
    top = pl.col("price") == pl.col("price").max()
    return {"auction": pl.col("auction").filter(top), "bidder": pl.col("bidder").filter(top), "price": pl.col("price").max()}


def build_q7(pipe: lg.Pipeline, topics: dict[str, str], rate: int = RATE) -> None:
    _bids(pipe, topics).window(lg.Tumbling(f"{WINDOW_MS}ms"), name="highest").agg(**_highest()).to_kafka(f"{pipe.name}-out")


def build_q11(pipe: lg.Pipeline, topics: dict[str, str], rate: int = RATE) -> None:
    _bids(pipe, topics).window(lg.Session(f"{SESSION_GAP_MS}ms"), by="bidder", name="sessions").agg(bids=pl.len()).to_kafka(f"{pipe.name}-out")


QUERIES: dict[str, Callable[..., None]] = {
    "q0": build_q0, "q1": build_q1, "q2": build_q2, "q3": build_q3, "q4": build_q4, "q5": build_q5, "q7": build_q7, "q8": build_q8, "q11": build_q11,
}

#: the column each kind's topic is partitioned by (``produce.write``: partition = value % partitions)
PARTITIONED_BY = {"person": "id", "auction": "id", "bid": "auction"}


def _frame(events: Events, kind: str) -> pl.DataFrame:
    return {"person": events.persons, "auction": events.auctions, "bid": events.bids}[kind]


def last_watermark(events: Events, partitions: int | None = None, kinds: tuple[str, ...] = ("bid",)) -> int:
    """The watermark (epoch ms, delay 0) once the topics of ``kinds`` have been read: the minimum over their partitions of the latest event time."""
    tops = []
    for kind in kinds:
        frame = _frame(events, kind)
        if partitions is None:
            tops.append(int(frame["date_time"].max()))  # type: ignore[arg-type]
        else:
            tops.append(int(frame.group_by(pl.col(PARTITIONED_BY[kind]) % partitions).agg(pl.col("date_time").max())["date_time"].min()))  # type: ignore[arg-type]
    return min(tops)


def oracle(query: str, events: Events, partitions: int | None = None) -> pl.DataFrame:
    """What ``query``'s output holds once all ``events`` have been read (a Polars batch computation).

    Windows: the ones the last watermark closed.  With ``partitions`` (the bid topic's,
    bids in partition ``auction % partitions``, as ``produce.write`` puts them) that
    watermark is the minimum over the partitions of their latest event time, as the
    engine's (and Flink's) is; without, the latest event time.
    """
    bids = events.bids.with_columns(pl.col("date_time").cast(pl.Datetime("ms")))
    last = pl.Series([last_watermark(events, partitions, READS[query])]).cast(pl.Datetime("ms"))[0]
    window = pl.duration(milliseconds=WINDOW_MS)
    if query == "q0":
        return bids.select("auction", "bidder", "price", "date_time")
    if query == "q1":
        return bids.select("auction", "bidder", (pl.col("price") * EUROS_PER_DOLLAR).alias("price"), "date_time")
    if query == "q2":
        return bids.filter(pl.col("auction") % 123 == 0).select("auction", "price")
    if query == "q3":
        auctions = events.auctions.filter(pl.col("category") == Q3_CATEGORY)
        persons = events.persons.filter(pl.col("state").is_in(Q3_STATES))
        return auctions.join(persons, left_on="seller", right_on="id", suffix="_p").select("name", "city", "state", "id")
    if query == "q4":
        auctions = events.auctions.select("category", "expires", start=pl.col("date_time"), auction=pl.col("id"))
        raw = events.bids.join(auctions, on="auction").filter(pl.col("date_time").is_between(pl.col("start"), pl.col("expires")))
        final = raw.group_by("auction", "category", "expires").agg(final=pl.col("price").max())
        end = pl.col("expires") + 1  # the end of the auction's 1 ms window: when the winning bid is known
        per = final.group_by("category", window_start=end // WINDOW_MS * WINDOW_MS).agg(avg_price=pl.col("final").mean(), auctions=pl.len())
        last_ms = last_watermark(events, partitions, READS[query])
        return per.filter(pl.col("window_start") + WINDOW_MS <= last_ms).select(
            "category", pl.col("window_start").cast(pl.Datetime("ms")),
            window_end=(pl.col("window_start") + WINDOW_MS).cast(pl.Datetime("ms")), avg_price="avg_price", auctions="auctions",
        )
    if query == "q5":
        counts = (
            bids.with_columns(ends=pl.int_ranges(0, WINDOW_MS // SLIDE_MS))
            .explode("ends")
            .with_columns(window_start=pl.col("date_time").dt.truncate(f"{SLIDE_MS}ms") - pl.duration(milliseconds=pl.col("ends") * SLIDE_MS))
            .group_by("window_start", "auction").agg(num=pl.len())
        )
        top = counts.filter(pl.col("num") == pl.col("num").max().over("window_start"))
        hop_end = pl.col("window_start") + window
        closed = hop_end + pl.duration(milliseconds=TOP_WINDOW_MS) <= last  # the window over the counts closed
        return top.filter(closed).select("auction", "num", "window_start", window_end=hop_end)
    if query == "q8":
        persons = events.persons.with_columns(pl.col("date_time").cast(pl.Datetime("ms")).dt.truncate(f"{WINDOW_MS}ms").alias("starttime"))
        sellers = events.auctions.select(id=pl.col("seller"), starttime=pl.col("date_time").cast(pl.Datetime("ms")).dt.truncate(f"{WINDOW_MS}ms"))
        new = persons.join(sellers.unique(), on=["id", "starttime"])
        return new.filter(pl.col("starttime") + window <= last).select("id", "name", "starttime")
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


def running_q4(events: Events) -> pl.DataFrame:
    """Where the Flink suite's q4 (an unbounded join and a running average per category) ends once ``events`` have been read.

    Every auction with a bid between its start and its end counts, closed or not; the
    Flink peer writes this query's changelog to an upsert topic, whose last value per
    category is this.
    """
    auctions = events.auctions.select("category", "expires", start=pl.col("date_time"), auction=pl.col("id"))
    raw = events.bids.join(auctions, on="auction").filter(pl.col("date_time").is_between(pl.col("start"), pl.col("expires")))
    final = raw.group_by("auction", "category").agg(final=pl.col("price").max())
    return final.group_by("category").agg(avg_price=pl.col("final").cast(pl.Float64).mean(), auctions=pl.len())


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """A query's rows in one order, list values sorted: two outputs are the same multiset when these are equal."""
    lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
    return frame.with_columns(pl.col(c).list.sort() for c in lists).sort(pl.all())
