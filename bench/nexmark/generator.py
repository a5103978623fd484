"""Nexmark events (persons, auctions, bids), generated as whole columns: the model of the Nexmark benchmark.

The rules follow the reference generator (github.com/nexmark/nexmark, ``nexmark-flink``'s
``generator`` package; written here, in NumPy and Polars, not ported):

- Event number ``n`` is a person, an auction or a bid by its place in an *epoch* of 50
  events: proportions 1 : 3 : 46 (``n % 50 < 1`` person, ``< 4`` auction, else bid).
- Ids: the k-th person is ``1000 + k``, the k-th auction ``1000 + k`` (``FIRST_PERSON_ID``,
  ``FIRST_AUCTION_ID``), derived from ``n`` alone (``last_person``/``last_auction``).
- An auction's seller is, with probability 1 - 1/4 (``hotSellersRatio``), the first of the
  last 100 persons, else one of the 1,000 most recent persons (``numActivePeople``) or up to
  10 not made yet; its category is 10 + one of 5; initial bid and reserve from the price
  law ``round(10^(6u) * 100)`` (cents; reserve = initial + another price); it expires
  within about twice the time the next 100 auctions (``numInFlightAuctions``) take to come.
- A bid's auction is, with probability 1/2 (``hotAuctionRatio``), the first of the last
  100 auctions, else one of the last 100 or up to 10 not made yet; its bidder, with
  probability 3/4 (``hotBiddersRatio``), the second of the last 100 persons, else an active
  person; its price from the price law; its channel half the time one of 4 hot ones.
- Event time: ``base_time + n * 1e6 / rate`` microseconds (``firstEventRate``), in ms.

The reference adds ``FIRST_PERSON_ID`` twice to a bid's bidder (a slip in
``BidGenerator.nextBid``); here it is added once, so bidders are persons.  The
``extra`` padding fields are left out.  The same seed gives the same events.

Examples
--------
>>> from bench.nexmark.generator import generate
>>> events = generate(5_000, seed=7)
>>> events.persons.height, events.auctions.height, events.bids.height
(100, 300, 4600)
>>> int(events.persons["id"].min()), int(events.auctions["id"].min())
(1000, 1000)
>>> generate(5_000, seed=7).bids.equals(events.bids)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

PERSON_PROPORTION, AUCTION_PROPORTION, BID_PROPORTION = 1, 3, 46
TOTAL_PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION
FIRST_PERSON_ID = FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
NUM_ACTIVE_PEOPLE = 1000
NUM_IN_FLIGHT_AUCTIONS = 100
HOT_SELLERS_RATIO, HOT_AUCTION_RATIO, HOT_BIDDERS_RATIO, HOT_CHANNELS_RATIO = 4, 2, 4, 2
HOT_GROUP = 100  # the "first of the last 100" of the hot sellers, auctions and bidders
PERSON_ID_LEAD = AUCTION_ID_LEAD = 10
CHANNELS = 10_000

US_STATES = ["AZ", "CA", "ID", "OR", "WA", "WY"]
US_CITIES = ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"]
FIRST_NAMES = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"]
LAST_NAMES = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"]
HOT_CHANNELS = ["Google", "Facebook", "Baidu", "Apple"]

#: the columns of each kind (``date_time``: event time, epoch ms)
PERSON_SCHEMA = {"id": pl.Int64, "name": pl.String, "email_address": pl.String, "credit_card": pl.String, "city": pl.String,
                 "state": pl.String, "date_time": pl.Int64}
AUCTION_SCHEMA = {"id": pl.Int64, "item_name": pl.String, "description": pl.String, "initial_bid": pl.Int64, "reserve": pl.Int64,
                  "date_time": pl.Int64, "expires": pl.Int64, "seller": pl.Int64, "category": pl.Int64}
BID_SCHEMA = {"auction": pl.Int64, "bidder": pl.Int64, "price": pl.Int64, "channel": pl.String, "url": pl.String, "date_time": pl.Int64}


@dataclass(frozen=True)
class Events:
    """One generated stretch of events, a frame per kind, each in event order."""

    persons: pl.DataFrame
    auctions: pl.DataFrame
    bids: pl.DataFrame


def last_person(n: np.ndarray) -> np.ndarray:
    """The base-0 id of the last person made by event ``n`` (the one made at ``n`` if it is a person)."""
    epoch, offset = np.divmod(n, TOTAL_PROPORTION)
    return epoch * PERSON_PROPORTION + np.minimum(offset, PERSON_PROPORTION - 1)


def last_auction(n: np.ndarray) -> np.ndarray:
    """The base-0 id of the last auction made by event ``n`` (the one made at ``n`` if it is an auction)."""
    epoch, offset = np.divmod(n, TOTAL_PROPORTION)
    person = offset < PERSON_PROPORTION
    bid = offset >= PERSON_PROPORTION + AUCTION_PROPORTION
    epoch = np.where(person, epoch - 1, epoch)
    offset = np.where(person | bid, AUCTION_PROPORTION - 1, offset - PERSON_PROPORTION)
    return epoch * AUCTION_PROPORTION + offset


def _uniform(rng: np.random.Generator, high: np.ndarray) -> np.ndarray:
    """One uniform integer in ``[0, high)`` per element."""
    return np.floor(rng.random(high.shape) * high).astype(np.int64)


def _active_person(rng: np.random.Generator, n: np.ndarray) -> np.ndarray:
    """A random active person (of the last 1,000, or up to 10 not made yet), base 0."""
    people = last_person(n) + 1
    active = np.minimum(people, NUM_ACTIVE_PEOPLE)
    return people - active + _uniform(rng, active + PERSON_ID_LEAD)


def _recent_auction(rng: np.random.Generator, n: np.ndarray) -> np.ndarray:
    """A random auction likely still open (of the last 100, or up to 10 not made yet), base 0."""
    top = last_auction(n)
    low = np.maximum(top - NUM_IN_FLIGHT_AUCTIONS, 0)
    return low + _uniform(rng, top - low + 1 + AUCTION_ID_LEAD)


def _price(rng: np.random.Generator, size: int) -> np.ndarray:
    """Prices in cents, ``round(10^(6u) * 100)``: from $1 to $1M, log-uniform."""
    return np.round(np.power(10.0, rng.random(size) * 6.0) * 100.0).astype(np.int64)


def _strings(rng: np.random.Generator, size: int, length: int) -> pl.Series:
    """``size`` random lowercase strings of ``length`` letters (one NumPy draw, no Python loop per string)."""
    letters = rng.integers(ord("a"), ord("z") + 1, size=(size, length), dtype=np.uint8)
    return pl.Series(letters.view(f"S{length}").ravel()).cast(pl.String)


def _pick(rng: np.random.Generator, words: list[str], size: int) -> pl.Series:
    return pl.Series(np.asarray(words, dtype=object)[rng.integers(0, len(words), size)], dtype=pl.String)


def generate(events: int, *, seed: int = 0, rate: int = 10_000, base_time_ms: int = 1_700_000_000_000, first_event: int = 0) -> Events:
    """Events ``first_event .. first_event + events - 1``; ``rate`` events per second of event time from ``base_time_ms``.

    Deterministic in (``seed``, ``first_event``): a stretch generated in parts with the
    same seed differs from one generated at once only in its random draws.
    """
    rng = np.random.default_rng([seed, first_event])
    n = np.arange(first_event, first_event + events, dtype=np.int64)
    delay_us = 1_000_000.0 / rate
    when = base_time_ms + (n * delay_us).astype(np.int64) // 1000
    offset = n % TOTAL_PROPORTION
    is_person = offset < PERSON_PROPORTION
    is_auction = (offset >= PERSON_PROPORTION) & (offset < PERSON_PROPORTION + AUCTION_PROPORTION)
    is_bid = ~(is_person | is_auction)

    pn, an, bn = n[is_person], n[is_auction], n[is_bid]
    p = pn.size
    cards = rng.integers(0, 10_000, size=(p, 4))
    persons = pl.DataFrame({
        "id": last_person(pn) + FIRST_PERSON_ID,
        "name": _pick(rng, FIRST_NAMES, p) + " " + _pick(rng, LAST_NAMES, p),
        "email_address": _strings(rng, p, 7) + "@" + _strings(rng, p, 5) + ".com",
        "credit_card": pl.DataFrame({f"c{i}": cards[:, i] for i in range(4)}).select(
            pl.concat_str([pl.col(f"c{i}").cast(pl.String).str.zfill(4) for i in range(4)], separator=" ")
        ).to_series(),
        "city": _pick(rng, US_CITIES, p),
        "state": _pick(rng, US_STATES, p),
        "date_time": when[is_person],
    }, schema=PERSON_SCHEMA)

    a = an.size
    hot = rng.integers(0, HOT_SELLERS_RATIO, a) > 0
    seller = np.where(hot, (last_person(an) // HOT_GROUP) * HOT_GROUP, _active_person(rng, an)) + FIRST_PERSON_ID
    initial = _price(rng, a)
    a_time = when[is_auction]
    ahead = (NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION) // AUCTION_PROPORTION
    horizon = base_time_ms + ((an + ahead) * delay_us).astype(np.int64) // 1000 - a_time
    auctions = pl.DataFrame({
        "id": last_auction(an) + FIRST_AUCTION_ID,
        "item_name": _strings(rng, a, 20),
        "description": _strings(rng, a, 100),
        "initial_bid": initial,
        "reserve": initial + _price(rng, a),
        "date_time": a_time,
        "expires": a_time + 1 + _uniform(rng, np.maximum(horizon * 2, 1)),
        "seller": seller,
        "category": FIRST_CATEGORY_ID + rng.integers(0, NUM_CATEGORIES, a),
    }, schema=AUCTION_SCHEMA)

    b = bn.size
    hot_auction = rng.integers(0, HOT_AUCTION_RATIO, b) > 0
    auction = np.where(hot_auction, (last_auction(bn) // HOT_GROUP) * HOT_GROUP, _recent_auction(rng, bn)) + FIRST_AUCTION_ID
    hot_bidder = rng.integers(0, HOT_BIDDERS_RATIO, b) > 0
    bidder = np.where(hot_bidder, (last_person(bn) // HOT_GROUP) * HOT_GROUP + 1, _active_person(rng, bn)) + FIRST_PERSON_ID
    hot_channel = rng.integers(0, HOT_CHANNELS_RATIO, b) > 0
    hot_index = rng.integers(0, len(HOT_CHANNELS), b)
    other = rng.integers(0, CHANNELS, b)
    channel = np.where(hot_channel, np.asarray(HOT_CHANNELS, dtype=object)[hot_index], np.char.add("channel-", other.astype(str)).astype(object))
    bids = pl.DataFrame({
        "auction": auction,
        "bidder": bidder,
        "price": _price(rng, b),
        "channel": pl.Series(channel, dtype=pl.String),
        "url": "https://www.nexmark.com/" + pl.Series(channel, dtype=pl.String).str.to_lowercase() + "/item.htm?query=1",
        "date_time": when[is_bid],
    }, schema=BID_SCHEMA)
    return Events(persons, auctions, bids)
