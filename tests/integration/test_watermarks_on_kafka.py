"""Watermarks on the real broker: exact from the first batch.

A partition this instance owns holds the watermark back until it has delivered,
whatever the fetch order, an aborted first epoch, a freshly formatted broker or a
broker killed early in the run; only records stored out of order by more than the
watermark delay are late, and their dead letters say so.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient, NewTopic
import polars as pl
import pytest
from lockgate.engine import broker
from lockgate.engine.kafka_log import kafka_logger
from lockgate.engine.source import KafkaSource
from lockgate.engine.transaction import EpochTransaction, TransactionAborted

import lockgate as lg
from tests.conftest import ordered_producer, read_committed, same_rows
from tests.integration.test_windows_on_kafka import (
    BASE,
    MINUTE,
    SCHEMA,
    build,
    make_events,
    oracle_minutes,
    oracle_sessions,
    produce_events,
    quickly_idle_minutes,
)

pytestmark = pytest.mark.kafka


def test_a_partition_paused_for_seconds_holds_the_watermark_back_through_an_aborted_first_epoch(
    brokers, make_topic, state_dir, unique, monkeypatch
):
    # Partition 3 is paused from its assignment on, for 2 s (far past idle_timeout) while the
    # others are read to their end, and the first epoch aborts (its hot state and watermarks
    # are reloaded): partition 3 has records to read, so it is never idle and holds the
    # watermark back; none of its records may turn late.
    events = make_events(12_000, seed=21)
    topic = make_topic(f"paused-{unique}", partitions=4)
    produce_events(brokers, topic, events)
    held = ck.TopicPartition(topic, 3)
    resumed: dict[str, float] = {}
    first_poll: list[float] = []
    real_assign, real_poll, real_commit = KafkaSource._on_assign, KafkaSource.poll, EpochTransaction.commit_kafka

    def on_assign(self: KafkaSource, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        real_assign(self, consumer, partitions)
        consumer.incremental_assign(partitions)  # assigned here, so it can be paused before any fetch
        if any(tp.partition == 3 for tp in partitions):
            consumer.pause([held])

    def poll(self: KafkaSource, *args: Any, **kwargs: Any) -> Any:
        first_poll.append(time.monotonic())
        if "at" not in resumed and time.monotonic() - first_poll[0] > 2.0:
            self.consumer.resume([held])
            resumed["at"] = time.monotonic()
        elif "at" not in resumed:  # held, also when the runner's hop pacing resumed the input it had paused
            self.consumer.pause([held])
        return real_poll(self, *args, **kwargs)

    aborted: list[int] = []

    def commit_kafka(self: EpochTransaction) -> None:
        if not aborted:  # the first epoch's transaction is really aborted at the broker, then redone
            aborted.append(self.epoch.number)
            self.producer.abort()
            self.state = "aborted"
            raise TransactionAborted(f"epoch {self.epoch.number}: aborted by the test")
        real_commit(self)

    monkeypatch.setattr(KafkaSource, "_on_assign", on_assign)
    monkeypatch.setattr(KafkaSource, "poll", poll)
    monkeypatch.setattr(EpochTransaction, "commit_kafka", commit_kafka)

    pipe = quickly_idle_minutes(f"paused-{unique}", brokers, state_dir, topic, max_records=500, idle_timeout="300ms")
    summary = pipe.run(until="caught_up", timeout=300)
    assert aborted and "at" in resumed, (aborted, resumed)
    assert pipe.metrics()["aborts"] == 1
    assert summary.records > len(events) + 4, "the aborted batch was read twice"
    assert sum(pipe.metrics()["late"].values()) == 0, pipe.metrics()["late"]
    assert same_rows(lg.read_table(state_dir, "per_minute").collect(), oracle_minutes(events))


def test_records_stored_out_of_order_beyond_the_delay_are_late_and_their_dead_letters_say_so(
    brokers, make_topic, state_dir, unique, caplog
):
    # What a fresh broker did to a plain (not idempotent) producer: its first request to a
    # partition failed ("Not leader for partition"), was retried, and landed after later
    # ones.  Here partition 0 gets minutes 10-12 first, then minute 0: the minute-0 records
    # are 10 minutes behind the partition's own latest event time, far past watermark=5s.
    # The minute-0 records come once both partitions have been read (a run until caught up,
    # then another): were they read before partition 1's first record, no watermark would
    # exist yet and nothing could be late, which made this test depend on the fetch order.
    topic = make_topic(f"disorder-{unique}", partitions=2)
    later = [{"user": u, "url": "/", "amount": 1, "ts": BASE + 10 * MINUTE + i * 1000} for u in "ab" for i in range(120)]
    behind = [{"user": "a", "url": "/", "amount": 1, "ts": BASE + i * 100} for i in range(30)]
    producer = ordered_producer(brokers)

    def produce_rows(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            producer.produce(topic, json.dumps(row).encode(), row["user"].encode(), partition=0 if row["user"] == "a" else 1)
        assert producer.flush(30) == 0

    pipe = lg.Pipeline(f"disorder-{unique}", brokers=brokers, state=state_dir, batch=lg.BatchPolicy(max_records=50, max_wait="40ms"))
    src = pipe.source(topic, format=lg.JSON(schema=SCHEMA), event_time="ts", watermark="5s")
    src.window(lg.Tumbling("1m"), by="user", name="per_minute").agg(n=pl.len()).to_table("per_minute")
    produce_rows(later)
    pipe.run(until="caught_up", timeout=120)
    assert pipe.metrics()["late"] == {}
    produce_rows(behind)  # stored after minutes 10-12 of partition 0
    with caplog.at_level(logging.WARNING, logger="lockgate.windows"):
        pipe.run(until="caught_up", timeout=120)

    assert pipe.metrics()["late"] == {"per_minute": 30}
    dead = read_committed(brokers, f"disorder-{unique}-dlq")
    assert len(dead) == 30
    for m in dead:
        headers = dict(m.headers())
        assert headers["lockgate.reason"] == b"late" and headers["lockgate.partition"] == b"0"
        # the window reads a repartition topic (by user, the topic is not keyed): the letter names the input record
        assert headers["lockgate.topic"] == topic.encode() and int(headers["lockgate.offset"]) >= len(later) // 2, headers
        error = headers["lockgate.error"].decode()
        assert "its own partition had already delivered event time" in error, error
        assert "out of order by more than watermark=5000 ms" in error, error
    warned = [r.getMessage() for r in caplog.records if "behind that partition's latest event time" in r.getMessage()]
    assert warned and f"{topic}[0]" in warned[0] and "enable.idempotence=true" in warned[0], warned


def _kill_and_restart(data_dir: Any, port: int, pipe: lg.Pipeline, down: float, done: list[str]) -> None:
    """SIGKILL the broker once ``pipe`` has committed its first micro-batch, start it again ``down`` seconds later.

    After the first commit, not after a fixed time: a run that reads the input out
    before the kill would not be hit by it.
    """
    deadline = time.monotonic() + 120
    while pipe.metrics()["commits"] < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    info = broker.status(data_dir)
    assert info is not None
    os.kill(info.pid, signal.SIGKILL)
    done.append("killed")
    time.sleep(down)
    broker.start(data_dir, port)
    done.append("restarted")


@pytest.mark.slow
def test_on_a_freshly_formatted_broker_every_run_from_scratch_is_exact_also_when_the_broker_is_killed_early(tmp_path, unique):
    # The first runs on a freshly formatted broker: the group and transaction coordinators
    # load while the run starts, and each topic is new.  Three runs from scratch (new topic,
    # group, state); in the third, the broker is SIGKILLed after the run's first commit and started
    # again 8 s later.  No record may turn late, and the tables equal the Polars oracle.
    data_dir = tmp_path / "kafka"
    port = broker.free_port()
    bootstrap = broker.start(data_dir, port).bootstrap
    try:
        for run in range(3):
            events = make_events(60_000, seed=40 + run)
            topic = f"fresh-{run}-{unique}"
            admin = AdminClient({"bootstrap.servers": bootstrap, "logger": kafka_logger("admin")})  # alive through the kill
            admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
            produce_events(bootstrap, topic, events)
            state = str(tmp_path / f"state-{run}")
            pipe = build(f"fresh-{run}-{unique}", bootstrap, state, topic, lg.BatchPolicy(max_records=3_001, max_wait="40ms"),
                         commit_timeout="10s")
            outage: list[str] = []
            if run == 2:
                threading.Thread(target=_kill_and_restart, args=(data_dir, port, pipe, 8.0, outage), daemon=True).start()
            summary = pipe.run(until="caught_up", timeout=400)
            assert summary.stopped_because == "caught_up", summary
            if run == 2:
                assert outage == ["killed", "restarted"], outage
            assert pipe.metrics()["late"] == {}, (run, pipe.metrics()["late"])
            seen = (run, summary, {k: v for k, v in pipe.metrics().items() if k in ("records", "aborts", "commits", "producer_replacements")})
            assert same_rows(lg.read_table(state, "per_minute").collect(), oracle_minutes(events)), seen
            assert same_rows(lg.read_table(state, "sessions").collect(), oracle_sessions(events)), seen
    finally:
        broker.stop(data_dir)


@pytest.mark.parametrize("repartition", [False, True], ids=["keyed", "through-the-hop"])
def test_windows_that_the_watermark_passed_when_every_partition_went_idle_close_without_a_new_record(
    brokers, make_topic, state_dir, unique, repartition
):
    # Partition 0 ends at second 80, partition 1 at second 370.  While both are live the
    # watermark is the minimum (75 s); once both are idle (idle_timeout 3 s, longer than the
    # first run) it is the maximum (365 s).  The second run reads no record at all: an epoch
    # of no records (a tick) must close the windows the idle watermark passed; before, they
    # waited for a record that never came.
    topic = make_topic(f"idle-close-{unique}", partitions=2)
    ends = {"a": 80, "b": 370}
    rows = [{"user": u, "url": "/", "amount": 1, "ts": BASE + i * 1000} for u, last in ends.items() for i in range(last)]
    producer = ordered_producer(brokers)
    for row in rows:
        producer.produce(topic, json.dumps(row).encode(), row["user"].encode(), partition=0 if row["user"] == "a" else 1)
    assert producer.flush(30) == 0
    pipe = lg.Pipeline(f"idle-close-{unique}", brokers=brokers, state=state_dir, batch=lg.BatchPolicy(max_records=100, max_wait="40ms"))
    src = pipe.source(topic, format=lg.JSON(schema=SCHEMA), event_time="ts", watermark="5s", idle_timeout="3s",
                      key=None if repartition else "user")
    src.window(lg.Tumbling("1m"), by="user", name="per_minute", repartition=repartition).agg(n=pl.len()).to_table("per_minute")
    windows = (
        pl.DataFrame(rows).with_columns(window_start=(pl.col("ts") // MINUTE) * MINUTE)
        .group_by("user", "window_start").agg(n=pl.len()).with_columns(window_end=pl.col("window_start") + MINUTE)
    )

    def closed_at(watermark_ms: int) -> pl.DataFrame:
        return (
            windows.filter(pl.col("window_end") <= watermark_ms)
            .select("user", pl.col("window_start").cast(pl.Datetime("ms")), pl.col("n").cast(pl.UInt32)).sort("user", "window_start")
        )

    def table() -> pl.DataFrame:
        got = lg.read_table(state_dir, "per_minute").collect()
        return got.select("user", "window_start", pl.col("n").cast(pl.UInt32)).sort("user", "window_start")

    pipe.run(until="caught_up", timeout=120)
    assert table().equals(closed_at(BASE + (ends["a"] - 1 - 5) * 1000)), "both partitions live: the minimum holds"
    idle = pipe.run(timeout=8)  # no record to read: the partitions turn idle 3 s after the last one was seen
    assert idle.records == 0, idle
    assert table().equals(closed_at(BASE + (ends["b"] - 1 - 5) * 1000)), table()
