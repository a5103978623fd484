"""Each Nexmark query's lockgate pipeline equals its Polars oracle over the same events (``run_plan``, many batches)."""

from __future__ import annotations

import polars as pl
import pytest

import lockgate as lg
from bench.nexmark.generator import generate
from bench.nexmark.queries import QUERIES, canonical, oracle


@pytest.mark.parametrize("query", sorted(QUERIES))
def test_a_nexmark_query_fed_in_batches_equals_its_polars_oracle(query):
    events = generate(60_000, seed=2, rate=1_000)  # 60 s of event time: six 10 s windows close
    pipe = lg.Pipeline(f"nexmark-{query}", brokers="unused:9092")
    QUERIES[query](pipe, "bids")
    bids = events.bids.with_columns(pl.col("date_time").cast(pl.Datetime("ms")))
    batches = [{"bids": bids.slice(start, 5_000)} for start in range(0, bids.height, 5_000)]
    got = lg.run_plan(pipe.plan(), batches, end_of_input=False)[f"nexmark-{query}-out"]
    expected = oracle(query, events)
    assert expected.height > 0
    got = got.select(expected.columns).cast(dict(expected.schema))  # type: ignore[arg-type]
    assert canonical(got).equals(canonical(expected)), (got, expected)
