"""Each Nexmark query's lockgate pipeline equals its Polars oracle over the same events (``run_plan``, many batches)."""

from __future__ import annotations

import polars as pl
import pytest

import lockgate as lg
from bench.nexmark.generator import generate
from bench.nexmark.queries import QUERIES, READS, canonical, oracle

TOPICS = {"person": "persons", "auction": "auctions", "bid": "bids"}


@pytest.mark.parametrize("query", sorted(QUERIES))
def test_a_nexmark_query_fed_in_batches_equals_its_polars_oracle(query):
    rate = 1_000
    events = generate(60_000, seed=2, rate=rate)  # 60 s of event time: six 10 s windows close
    pipe = lg.Pipeline(f"nexmark-{query}", brokers="unused:9092")
    QUERIES[query](pipe, TOPICS, rate=rate)
    frames = {"person": events.persons, "auction": events.auctions, "bid": events.bids}
    frames = {kind: frames[kind].with_columns(pl.col("date_time").cast(pl.Datetime("ms"))) for kind in READS[query]}
    start = min(int(f["date_time"].dt.epoch("ms").min()) for f in frames.values())
    batches = []
    for lo in range(start, start + 61_000, 5_000):  # 5 s of event time of every topic the query reads per batch
        lo_t, hi_t = pl.lit(lo).cast(pl.Datetime("ms")), pl.lit(lo + 5_000).cast(pl.Datetime("ms"))
        batches.append({TOPICS[k]: f.filter((pl.col("date_time") >= lo_t) & (pl.col("date_time") < hi_t)) for k, f in frames.items()})
    got = lg.run_plan(pipe.plan(), batches, end_of_input=False)[f"nexmark-{query}-out"]
    expected = oracle(query, events)
    assert expected.height > 0
    got = got.select(expected.columns).cast(dict(expected.schema))  # type: ignore[arg-type]
    assert got.height == expected.height and canonical(got).equals(canonical(expected)), (got, expected)
