"""Windows on the real broker: exactly the Polars oracle through Kafka and LanceDB, across a restart; late records to the DLQ."""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

import lance
import polars as pl
import pytest
from lockgate.storage.state import state_uri
from lockgate.storage.commit_log import CommitLog
from lockgate.storage.lance_io import table_uri

import lockgate as lg
from tests.conftest import ordered_producer, read_committed, same_rows

pytestmark = pytest.mark.kafka

SCHEMA = {"user": pl.String, "url": pl.String, "amount": pl.Int64, "ts": pl.Datetime("ms")}
BASE = 1_700_000_000_000
MINUTE = 60_000
GAP = 30_000
FLUSH_T = BASE + 40 * MINUTE


def make_events(count: int, seed: int = 1) -> list[dict]:
    """1,000 users over ~20 minutes of event time, in bursts, with disorder under the 5 s watermark delay."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        t = BASE + i * 6 + rng.randrange(0, 3_000)  # ~20 min in all, up to 3 s out of order
        events.append({"user": f"u{rng.randrange(1000)}", "url": f"/p/{rng.randrange(50)}", "amount": rng.randrange(1, 500), "ts": t})
    return events


def produce_events(
    brokers: str, topic: str, events: list[dict], partitions: int = 4, flush_at: int | None = FLUSH_T, flush_per_partition: bool = False
) -> None:
    """Produce ``events`` keyed by user, then one far-future flush record per partition.

    The flush records are all of user ``__flush`` (one key on every partition), or,
    with ``flush_per_partition``, of ``__flush0``, ``__flush1``, ...: a topic truly keyed
    by user, as a source with ``key="user"`` declares.
    """
    producer = ordered_producer(brokers, {"linger.ms": 20, "partitioner": "murmur2_random"})
    for e in events:
        while True:
            try:
                producer.produce(topic, json.dumps(e).encode(), e["user"].encode())
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0  # room in the local queue, and the events are in before the flush records
    for p in range(partitions if flush_at is not None else 0):  # one far-future record per partition moves every watermark past the data
        user = f"__flush{p}" if flush_per_partition else "__flush"
        producer.produce(topic, json.dumps({"user": user, "url": "/", "amount": 0, "ts": flush_at}).encode(), user.encode(), partition=p)
    assert producer.flush(60) == 0


def build(name: str, brokers: str, state: str, topic: str, batch: lg.BatchPolicy | None = None, **options: Any) -> lg.Pipeline:
    pipe = lg.Pipeline(name, brokers=brokers, state=state, batch=batch, **options)
    events = pipe.source(topic, format=lg.JSON(schema=SCHEMA), event_time="ts", watermark="5s")
    per_minute = events.window(lg.Tumbling("1m"), by="user", name="per_minute").agg(
        n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max()
    )
    per_minute.to_kafka(f"{name}-minutes", key="user")
    per_minute.to_table("per_minute")
    sessions = events.window(lg.Session("30s"), by="user", name="sessions").agg(clicks=pl.len(), pages=pl.col("url").n_unique())
    sessions.to_kafka(f"{name}-sessions", key="user")
    sessions.to_table("sessions")
    return pipe


def oracle_minutes(events: list[dict]) -> pl.DataFrame:
    df = pl.DataFrame(events, schema={**SCHEMA, "ts": pl.Int64})
    return (
        df.with_columns(window_start=pl.col("ts") // MINUTE * MINUTE)
        .group_by("user", "window_start")
        .agg(n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max())
        .with_columns(window_end=pl.col("window_start") + MINUTE)
        .select("user", pl.col("window_start").cast(pl.Datetime("ms")), pl.col("window_end").cast(pl.Datetime("ms")), "n", "total", "biggest")
        .with_columns(pl.col("n").cast(pl.UInt32))
    )


def oracle_sessions(events: list[dict]) -> pl.DataFrame:
    df = pl.DataFrame(events, schema={**SCHEMA, "ts": pl.Int64}).sort("user", "ts")
    new = (pl.col("ts") - pl.col("ts").shift(1).over("user")).fill_null(GAP) >= GAP
    return (
        df.with_columns(sid=new.cum_sum())
        .group_by("user", "sid")
        .agg(window_start=pl.col("ts").min(), window_end=pl.col("ts").max() + GAP, clicks=pl.len(), pages=pl.col("url").n_unique())
        .select("user", pl.col("window_start").cast(pl.Datetime("ms")), pl.col("window_end").cast(pl.Datetime("ms")), "clicks", "pages")
        .with_columns(pl.col("clicks").cast(pl.UInt32), pl.col("pages").cast(pl.UInt32))
    )


def from_kafka(brokers: str, topic: str, schema: dict) -> pl.DataFrame:
    messages = read_committed(brokers, topic)
    frame = pl.DataFrame([json.loads(m.value()) for m in messages], schema={k: (pl.String if k.startswith("window_") else v) for k, v in schema.items()}, orient="row")
    return frame.with_columns(pl.col("window_start", "window_end").str.to_datetime(time_unit="ms"))


@pytest.mark.slow
def test_tumbling_and_session_windows_equal_the_oracle_through_a_restart(brokers, make_topic, state_dir, unique):
    events = make_events(200_000)
    topic = make_topic(f"events-{unique}", partitions=4)
    produce_events(brokers, topic, events)
    name = f"win-{unique}"
    small = lg.BatchPolicy(max_records=20_000, max_wait="50ms")

    # runs of 3 batches, each a restart, until the windows have open state: behind the repartition topic
    # (the window is by user, the topic not keyed) the first batches may only feed the hop
    before = 0
    for _ in range(10):
        first = build(name, brokers, state_dir, topic, small).run(max_batches=3, timeout=300)
        assert first.stopped_because == "max_batches"
        before += first.records
        with contextlib.suppress(lg.StorageError):  # no state table until the window's first epoch
            if lg.read_state(state_dir, name, "per_minute").collect().height:
                break
    assert lg.read_state(state_dir, name, "per_minute").collect().height > 0, "open windows are in the state"
    assert before < 200_000, "the restart comes before the input is read out"
    second = build(name, brokers, state_dir, topic, small)
    rest = second.run(until="caught_up", timeout=600)
    assert before + rest.records == 200_000 + 4

    minutes, sessions = oracle_minutes(events), oracle_sessions(events)
    out_schema_m = dict(oracle_minutes(events[:1]).schema)
    out_schema_s = dict(oracle_sessions(events[:1]).schema)
    assert same_rows(from_kafka(brokers, f"{name}-minutes", out_schema_m).filter(pl.col("user") != "__flush"), minutes)
    assert same_rows(from_kafka(brokers, f"{name}-sessions", out_schema_s).filter(pl.col("user") != "__flush"), sessions)
    assert same_rows(lg.read_table(state_dir, "per_minute").collect(), minutes)
    assert same_rows(lg.read_table(state_dir, "sessions").collect(), sessions)
    # only the flush windows are still open, in memory and in LanceDB
    assert lg.read_state(state_dir, name, "per_minute").collect()["user"].unique().to_list() == ["__flush"]
    assert second.metrics()["late"] == {}

    # late records: older than every open window; they go to the DLQ, counted, and change nothing
    late = [{"user": "u1", "url": "/late", "amount": 1, "ts": BASE + i} for i in range(25)]
    produce_events(brokers, topic, late, flush_at=FLUSH_T + 1)
    third = build(name, brokers, state_dir, topic, small)
    third.run(until="caught_up", timeout=300)
    assert third.metrics()["late"] == {"per_minute": 25, "sessions": 25}, "late records counted per window operator"
    dead = [m for m in read_committed(brokers, f"{name}-dlq") if dict(m.headers())["lockgate.reason"] == b"late"]
    assert len(dead) == 50, "each late record once per window operator that refused it"
    assert {dict(m.headers())["lockgate.operator"] for m in dead} == {b"per_minute", b"sessions"}
    assert all(json.loads(m.value())["url"] == "/late" for m in dead)
    assert same_rows(lg.read_table(state_dir, "per_minute").collect(), minutes)


def quickly_idle_minutes(name: str, brokers: str, state: str, topic: str, max_records: int, idle_timeout: str = "1ms") -> lg.Pipeline:
    """Per-minute windows into the table ``per_minute``, from a source whose partitions are idle after ``idle_timeout`` without records."""
    pipe = lg.Pipeline(name, brokers=brokers, state=state, batch=lg.BatchPolicy(max_records=max_records, max_wait="50ms"))
    src = pipe.source(topic, format=lg.JSON(schema=SCHEMA), event_time="ts", watermark="5s", idle_timeout=idle_timeout)
    src.window(lg.Tumbling("1m"), by="user", name="per_minute").agg(
        n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max()
    ).to_table("per_minute")
    return pipe


def test_a_partition_that_waits_for_its_turn_in_the_fetch_queue_is_not_idle_and_none_of_its_records_turn_late(
    brokers, make_topic, state_dir, unique
):
    # idle after 1 ms: every partition that a batch lacks would count as idle, and the others'
    # watermark would close its windows before its records are read (seen in CI: a slow run read
    # one partition's backlog for longer than the 30 s default)
    events = make_events(20_000, seed=11)
    topic = make_topic(f"backlog-{unique}", partitions=4)
    produce_events(brokers, topic, events)
    pipe = quickly_idle_minutes(f"backlog-{unique}", brokers, state_dir, topic, max_records=500)
    pipe.run(until="caught_up", timeout=300)
    assert sum(pipe.metrics()["late"].values()) == 0, pipe.metrics()["late"]
    assert same_rows(lg.read_table(state_dir, "per_minute").collect(), oracle_minutes(events))


def test_a_read_out_partition_goes_idle_after_a_restart_so_the_other_closes_its_windows_alone(brokers, make_topic, state_dir, unique):
    topic = make_topic(f"idle-{unique}", partitions=2)
    rng = random.Random(3)

    def events(partition: int, start: int, end: int, n: int) -> list[dict]:
        ts = sorted(rng.randrange(start, end) for _ in range(n))
        return [{"user": f"u{partition}-{rng.randrange(20)}", "url": "/", "amount": rng.randrange(9), "ts": t, "p": partition} for t in ts]

    def send(batch: list[dict]) -> None:
        producer = ordered_producer(brokers)
        for e in batch:
            producer.produce(topic, json.dumps(e).encode(), e["user"].encode(), partition=e["p"])
        assert producer.flush(30) == 0

    first = events(0, BASE, BASE + 2 * MINUTE, 300) + events(1, BASE, BASE + 2 * MINUTE, 300)
    later = events(0, BASE + 2 * MINUTE, BASE + 6 * MINUTE, 600)
    flush = [{"user": "__flush", "url": "/", "amount": 0, "ts": BASE + 10 * MINUTE, "p": 0}]

    send(first)
    quickly_idle_minutes(f"idle-{unique}", brokers, state_dir, topic, max_records=200).run(until="caught_up", timeout=300)
    send(later + flush)  # partition 1 stays silent: read to its end before this run started, it returns no record
    quickly_idle_minutes(f"idle-{unique}", brokers, state_dir, topic, max_records=200).run(until="caught_up", timeout=300)
    table = lg.read_table(state_dir, "per_minute").collect()
    assert same_rows(table, oracle_minutes([{k: v for k, v in e.items() if k != "p"} for e in first + later]))


def test_update_mode_upserts_so_the_table_holds_each_windows_current_value_and_superseded_rows_go(
    brokers, make_topic, state_dir, unique
):
    events = make_events(30_000, seed=9)
    topic = make_topic(f"upd-{unique}", partitions=2)
    produce_events(brokers, topic, events, partitions=2)
    # a prune whenever the table holds more than 4 x the rows the last one left, at once
    pipe = lg.Pipeline(
        f"upd-{unique}", brokers=brokers, state=state_dir, batch=lg.BatchPolicy(max_records=1_500, max_wait="50ms"),
        snapshot_rows=1, keep_history="0s", compact_every=2,
    )
    src = pipe.source(topic, format=lg.JSON(schema=SCHEMA), event_time="ts", watermark="5s")
    src.window(lg.Tumbling("1m"), by="user", emit="update").agg(
        n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max()
    ).to_table("live")
    pipe.run(until="caught_up", timeout=300)
    table = lg.read_table(state_dir, "live").collect().filter(pl.col("user") != "__flush")
    assert same_rows(table, oracle_minutes(events))

    # a window spans several batches, so it was updated several times; up to the last horizon one row each is left
    log = CommitLog(state_dir).frame()
    horizon = log.filter((pl.col("kind") == "horizon") & (pl.col("topic") == "table:live"))["epoch"].max()
    assert isinstance(horizon, int) and horizon > 1, "no prune ran"
    raw = pl.from_arrow(lance.dataset(table_uri(state_dir, "live")).to_table(columns=["user", "window_start", "_lg_epoch"]))
    pruned = raw.filter(pl.col("_lg_epoch") <= horizon)
    assert pruned.select(pl.struct("user", "window_start").is_unique().all()).item(), "superseded rows are left"
    with pytest.raises(lg.StorageError, match=r"table 'live': as_of=1 is before epoch"):
        lg.read_table(state_dir, "live", as_of=1)


def test_snapshots_delete_the_state_history_and_a_restart_after_them_is_still_exact(brokers, make_topic, state_dir, unique):
    events = make_events(60_000, seed=5)
    topic = make_topic(f"snap-{unique}", partitions=4)
    produce_events(brokers, topic, events[:30_000], flush_at=None)
    name = f"snap-{unique}"
    options = {"snapshot_rows": 1, "keep_history": "0s", "compact_every": 2}  # a snapshot whenever history > 4 x open
    small = lg.BatchPolicy(max_records=5_000, max_wait="50ms")
    build(name, brokers, state_dir, topic, small, **options).run(until="caught_up", timeout=300)
    produce_events(brokers, topic, events[30_000:])
    build(name, brokers, state_dir, topic, small, **options).run(until="caught_up", timeout=300)

    minutes, sessions = oracle_minutes(events), oracle_sessions(events)
    assert same_rows(from_kafka(brokers, f"{name}-minutes", dict(minutes.schema)).filter(pl.col("user") != "__flush"), minutes)
    assert same_rows(from_kafka(brokers, f"{name}-sessions", dict(sessions.schema)).filter(pl.col("user") != "__flush"), sessions)
    assert same_rows(lg.read_table(state_dir, "per_minute").collect(), minutes)
    assert same_rows(lg.read_table(state_dir, "sessions").collect(), sessions)
    assert lg.read_state(state_dir, name, "per_minute").collect()["user"].unique().to_list() == ["__flush"]

    # the sessions here stay open until the flush (a user clicks every few seconds): their rows are all live
    horizon = CommitLog(state_dir).frame().filter((pl.col("kind") == "horizon") & (pl.col("topic") == "per_minute"))["epoch"].max()
    assert horizon is not None, "no snapshot let the history of per_minute go"
    raw = pl.from_arrow(lance.dataset(state_uri(state_dir, name, "per_minute")).to_table(columns=["_lg_epoch"]))
    assert raw["_lg_epoch"].min() >= horizon, f"rows older than the snapshot at epoch {horizon} are left"
    assert raw.height < minutes.height, f"{raw.height} rows for {minutes.height} closed windows: the history stayed; per epoch {raw.group_by('_lg_epoch').len().sort('_lg_epoch').rows()} horizon {horizon}"
    with pytest.raises(lg.StorageError, match="keep_history"):
        lg.read_state(state_dir, name, "per_minute", as_of=1)
