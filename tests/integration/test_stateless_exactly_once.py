"""End to end on the real broker: a stateless pipeline commits each micro-batch exactly once."""

from __future__ import annotations

import random

import polars as pl
import pytest

import lockgate as lg
from tests.conftest import json_frame, json_values, produce, read_committed, same_rows

pytestmark = pytest.mark.kafka

SCHEMA = {"user": pl.String, "url": pl.String, "n": pl.Int64, "ts": pl.Datetime("ms")}
KEEP = pl.col("url").str.starts_with("/p/")
DERIVED = {"n2": pl.col("n") * 2, "page": pl.col("url").str.slice(3).cast(pl.Int64)}
OUT_SCHEMA = {"user": pl.String, "url": pl.String, "n": pl.Int64, "ts": pl.String, "n2": pl.Int64, "page": pl.Int64}


def make_rows(count: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "user": f"u{rng.randrange(500)}",
            "url": f"/p/{rng.randrange(100)}" if rng.random() < 0.7 else "/home",
            "n": i,
            "ts": 1_700_000_000_000 + i * 10,
        }
        for i in range(count)
    ]


def oracle(rows: list[dict]) -> pl.DataFrame:
    """The same expressions as one Polars batch query over the whole input."""
    return pl.DataFrame(rows, schema=SCHEMA).filter(KEEP).with_columns(**DERIVED)


def build(name: str, brokers: str, state: str, source: str, out: str, batch: lg.BatchPolicy | None = None) -> lg.Pipeline:
    pipe = lg.Pipeline(name, brokers=brokers, state=state, batch=batch)
    pages = pipe.source(source, format=lg.JSON(schema=SCHEMA, required=["n"])).filter(KEEP).with_columns(**DERIVED)
    pages.to_kafka(out, key="user")
    pages.to_table("pages")
    return pipe


def kafka_output(brokers: str, topic: str) -> pl.DataFrame:
    messages = read_committed(brokers, topic)
    for m in messages:  # the key is the user column
        assert m.key() is not None
    frame = json_frame(messages, OUT_SCHEMA).with_columns(pl.col("ts").str.to_datetime(time_unit="ms"))
    keys = pl.Series("key", [m.key().decode() for m in messages])
    assert (keys == frame["user"]).all(), "every record's key must be its user"
    return frame


def test_filter_with_columns_into_kafka_and_table_equals_the_polars_oracle(brokers, make_topic, state_dir, unique):
    rows = make_rows(100_000)
    source = make_topic(f"clicks-{unique}", partitions=4)
    produce(brokers, source, json_values(rows))
    expected = oracle(rows)

    pipe = build(f"eo-{unique}", brokers, state_dir, source, f"pages-{unique}")
    summary = pipe.run(until="caught_up", timeout=300)

    assert summary.stopped_because == "caught_up"
    assert summary.records == 100_000
    got_kafka = kafka_output(brokers, f"pages-{unique}")
    got_table = lg.read_table(state_dir, "pages").collect()
    assert got_kafka.height == expected.height, "read_committed output: duplicates or losses"
    assert got_kafka["n"].n_unique() == expected.height, "duplicates in the Kafka output"
    assert same_rows(got_kafka, expected)
    assert same_rows(got_table, expected)
    metrics = pipe.metrics()
    assert metrics["records_in"][source] == 100_000
    assert metrics["records_out"][f"pages-{unique}"] == expected.height
    assert metrics["table_rows"]["pages"] == expected.height


def test_stop_after_some_batches_then_restart_still_equals_the_oracle(brokers, make_topic, state_dir, unique):
    rows = make_rows(40_000, seed=11)
    source = make_topic(f"clicks-{unique}", partitions=4)
    produce(brokers, source, json_values(rows))
    small = lg.BatchPolicy(max_records=3_000, max_wait="50ms")

    first = build(f"restart-{unique}", brokers, state_dir, source, f"pages-{unique}", small)
    partial = first.run(max_batches=4, timeout=120)
    assert partial.stopped_because == "max_batches"
    assert 0 < partial.records < 40_000
    assert 0 < lg.read_table(state_dir, "pages").collect().height < oracle(rows).height

    second = build(f"restart-{unique}", brokers, state_dir, source, f"pages-{unique}", small)
    rest = second.run(until="caught_up", timeout=300)

    assert partial.records + rest.records == 40_000, "each input record is read exactly once across the restart"
    expected = oracle(rows)
    assert same_rows(kafka_output(brokers, f"pages-{unique}"), expected)
    assert same_rows(lg.read_table(state_dir, "pages").collect(), expected)


def test_malformed_records_go_to_the_dead_letter_topic_with_headers_and_the_rest_goes_on(brokers, make_topic, state_dir, unique):
    rows = make_rows(20_000, seed=3)
    values = json_values(rows)
    rng = random.Random(5)
    bad: dict[int, str] = {}
    for i in rng.sample(range(len(values)), 200):  # 1 %
        kind = rng.choice(["syntax", "type", "missing", "time"])
        if kind == "syntax":
            values[i] = values[i][:-5]
        elif kind == "type":
            values[i] = values[i].replace(b'"n": ', b'"n": "x').replace(b', "ts"', b'", "ts"')
        elif kind == "missing":
            values[i] = b'{"user": "u1", "url": "/p/1", "ts": 1700000000000}'
        else:
            values[i] = values[i].replace(b'"ts": ', b'"ts": "yesterday", "x": ')
        bad[i] = kind
    keys = [f"k{i}".encode() for i in range(len(values))]
    source = make_topic(f"clicks-{unique}", partitions=4)
    produce(brokers, source, values, keys)

    pipe = build(f"dlq-{unique}", brokers, state_dir, source, f"pages-{unique}")
    pipe.run(until="caught_up", timeout=300)

    dead = read_committed(brokers, f"dlq-{unique}-dlq")
    assert len(dead) == len(bad)
    by_key = {m.key(): m for m in dead}
    source_records = {m.key(): m for m in read_committed(brokers, source)}
    for i, kind in bad.items():
        m = by_key[keys[i]]
        headers = dict(m.headers())
        assert m.value() == values[i], "the dead letter carries the original value"
        assert headers["lockgate.topic"] == source.encode()
        original = source_records[keys[i]]
        assert int(headers["lockgate.partition"]) == original.partition()
        assert int(headers["lockgate.offset"]) == original.offset()
        assert headers["lockgate.reason"] == b"decode"
        assert headers["lockgate.error"], "the header names the error"
        if kind == "missing":
            assert b"'n' is missing" in headers["lockgate.error"]
        if kind == "time":
            assert b"'ts': cannot parse" in headers["lockgate.error"]
    good = [r for i, r in enumerate(rows) if i not in bad]
    expected = oracle(good)
    assert same_rows(kafka_output(brokers, f"pages-{unique}"), expected)
    assert same_rows(lg.read_table(state_dir, "pages").collect(), expected)
    assert pipe.metrics()["dlq"][f"dlq-{unique}-dlq"] == len(bad)
