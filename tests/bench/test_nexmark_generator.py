"""The Nexmark generator follows the model's rules: proportions, ids, prices, times, hot items; the same seed, the same events."""

from __future__ import annotations

import polars as pl

from bench.nexmark.generator import FIRST_AUCTION_ID, FIRST_PERSON_ID, generate


def test_persons_auctions_and_bids_come_in_the_proportions_1_3_46_with_ids_counting_up_from_1000():
    events = generate(50 * 400 + 7, seed=3)  # 400 whole epochs, then 1 person, 3 auctions, 3 bids
    assert (events.persons.height, events.auctions.height, events.bids.height) == (401, 1203, 400 * 46 + 3)
    assert events.persons["id"].to_list() == list(range(FIRST_PERSON_ID, FIRST_PERSON_ID + 401))
    assert events.auctions["id"].to_list() == list(range(FIRST_AUCTION_ID, FIRST_AUCTION_ID + 1203))


def test_event_time_advances_at_the_rate_and_auctions_expire_after_they_open():
    events = generate(100_000, seed=1, rate=50_000, base_time_ms=0)
    times = pl.concat([f.select("date_time") for f in (events.persons, events.auctions, events.bids)])["date_time"]
    assert times.min() == 0 and times.max() == (99_999 * 20) // 1000  # 20 us apart
    for frame in (events.persons, events.auctions, events.bids):
        assert frame["date_time"].is_sorted()
    assert (events.auctions["expires"] > events.auctions["date_time"]).all()
    assert set(events.auctions["category"].unique().to_list()) == {10, 11, 12, 13, 14}


def test_bids_go_mostly_to_hot_auctions_by_hot_bidders_at_log_uniform_prices():
    events = generate(500_000, seed=5)
    bids, auctions = events.bids, events.auctions
    assert bids["auction"].is_in(auctions["id"].implode()).mean() > 0.99  # a few leads name auctions not made yet
    hot = (bids["auction"] - FIRST_AUCTION_ID) % 100 == 0
    assert 0.5 < hot.mean() < 0.55  # half go to the first of the last 100 auctions, and some of the rest by chance
    assert 0.75 <= ((bids["bidder"] - FIRST_PERSON_ID) % 100 == 1).mean() < 0.78
    assert 100 <= bids["price"].min() and bids["price"].max() <= 100_000_000
    assert 0.45 < (bids["price"] < 100_000).mean() < 0.55  # log-uniform over 6 decades: half below 10^3 dollars
    assert 0.48 < bids["channel"].is_in(["Google", "Facebook", "Baidu", "Apple"]).mean() < 0.52


def test_the_same_seed_gives_the_same_events_and_another_seed_others():
    a, b, c = generate(20_000, seed=9), generate(20_000, seed=9), generate(20_000, seed=10)
    assert a.persons.equals(b.persons) and a.auctions.equals(b.auctions) and a.bids.equals(b.bids)
    assert not a.bids.equals(c.bids)
    assert a.bids["date_time"].equals(c.bids["date_time"])  # times come from the event numbers, not the draws
