"""Stream-table join on the real broker: each batch enriched with the latest value per key of a compacted topic."""

from __future__ import annotations

import json

import polars as pl
import pytest

import lockgate as lg
from tests.conftest import json_values, ordered_producer, produce

pytestmark = pytest.mark.kafka

LIMITS = {"card": pl.String, "limit": pl.Int64}
PAYMENTS = {"card": pl.String, "amount": pl.Int64}


def _limits(brokers: str, topic: str, rows: list[tuple[str, int | None]]) -> None:
    producer = ordered_producer(brokers)  # the latest value per key is the last one written
    for card, limit in rows:  # None: a tombstone
        producer.produce(topic, None if limit is None else json.dumps({"card": card, "limit": limit}).encode(), card.encode())
    assert producer.flush(30) == 0


def test_a_stream_joins_the_latest_value_per_key_left_and_inner(brokers, make_topic, state_dir, unique):
    limits = make_topic(f"limits-{unique}", partitions=2, config={"cleanup.policy": "compact"})
    payments = make_topic(f"payments-{unique}", partitions=3)
    _limits(brokers, limits, [("c1", 100), ("c2", 50), ("c1", 120), ("c3", 10), ("c3", None)])  # c1 updated, c3 deleted
    pays = [{"card": f"c{i % 4}", "amount": i} for i in range(2_000)]
    produce(brokers, payments, json_values(pays))

    pipe = lg.Pipeline(f"join-{unique}", brokers=brokers, state=state_dir)
    table = pipe.table(limits, key="card", format=lg.JSON(schema=LIMITS))
    stream = pipe.source(payments, format=lg.JSON(schema=PAYMENTS))
    stream.join(table, on="card", how="left").select("card", "amount", "limit").to_table("left")
    stream.join(table, on="card", how="inner").with_columns(over=pl.col("amount") > pl.col("limit")).select(
        "card", "amount", "limit", "over"
    ).to_table("inner")
    pipe.run(until="caught_up", timeout=300)

    current = pl.DataFrame({"card": ["c1", "c2"], "limit": [120, 50]})
    expected_left = pl.DataFrame(pays, schema=PAYMENTS).join(current, on="card", how="left")
    left = lg.read_table(state_dir, "left").collect()
    assert left.sort("amount").equals(expected_left.sort("amount"))
    inner = lg.read_table(state_dir, "inner").collect()
    expected_inner = pl.DataFrame(pays, schema=PAYMENTS).join(current, on="card").with_columns(over=pl.col("amount") > pl.col("limit"))
    assert inner.sort("amount").equals(expected_inner.sort("amount"))
    assert inner.filter(pl.col("card") == "c3").height == 0, "a tombstone deleted c3"


def test_joining_on_a_column_the_table_lacks_fails_at_definition():
    pipe = lg.Pipeline("join-def", brokers="127.0.0.1:1")
    table = pipe.table("limits", key="card", format=lg.JSON(schema=LIMITS))
    stream = pipe.source("payments", format=lg.JSON(schema={"card_id": pl.String, "amount": pl.Int64}))
    with pytest.raises(lg.PipelineDefinitionError, match="join 'join_1': the stream has no column 'card'"):
        stream.join(table, on="card")
    with pytest.raises(lg.PipelineDefinitionError, match="table 'limits': key='id' is not a column"):
        pipe.table("limits", key="id", format=lg.JSON(schema=LIMITS))
