"""A repartitioned pipeline under faults: instances killed with SIGKILL, scaled 1 -> 2 -> 1, exact every time.

The input is keyed by user (``pipe.source(..., key="user")``); one window groups by
user (its state per input partition, no hop) and one by country, a column the
records are not keyed by: its rows go through the repartition topic
``<pipeline>-per_country-repartition`` and its state is kept per repartition
partition.  Real broker, real processes (``lockgate run``).
"""

from __future__ import annotations

import signal
import sys
import subprocess
import textwrap
import time

import polars as pl
import pytest

import lockgate as lg
from tests.conftest import same_rows
from tests.crash.test_crashes import KILLED, Service, _wait_until_quiet
from tests.integration.test_scale_out import _start, _stop, _wait_for_line
from tests.integration.test_windows_on_kafka import FLUSH_T, MINUTE, SCHEMA, from_kafka, make_events, oracle_minutes, produce_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PIPELINE_FILE = textwrap.dedent(
    """
    import os
    import polars as pl
    import lockgate as lg

    name = os.environ["T_NAME"]
    pipe = lg.Pipeline(
        name, brokers=os.environ["T_BROKERS"], state=os.environ["T_STATE"],
        batch=lg.BatchPolicy(max_records=int(os.environ.get("T_BATCH", "3000")), max_wait="50ms"), compact_every=5,
        kafka={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )
    schema = {"user": pl.String, "url": pl.String, "amount": pl.Int64, "ts": pl.Datetime("ms")}
    events = pipe.source(os.environ["T_SOURCE"], format=lg.JSON(schema=schema), event_time="ts", watermark="5s", key="user")
    per_minute = events.window(lg.Tumbling("1m"), by="user", name="per_minute").agg(
        n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max()
    )
    per_minute.to_table("per_minute")
    per_country = (
        events.with_columns(country=pl.format("c{}", pl.col("amount") % 7))
        .window(lg.Tumbling("1m"), by="country", name="per_country")
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )
    per_country.to_kafka(f"{name}-countries", key="country")
    per_country.to_table("per_country")
    """
)


def oracle_countries(events: list[dict]) -> pl.DataFrame:
    df = pl.DataFrame(events, schema={**SCHEMA, "ts": pl.Int64})
    return (
        df.with_columns(country=pl.format("c{}", pl.col("amount") % 7), window_start=pl.col("ts") // MINUTE * MINUTE)
        .group_by("country", "window_start")
        .agg(n=pl.len().cast(pl.UInt32), total=pl.col("amount").sum())
        .select(
            "country", pl.col("window_start").cast(pl.Datetime("ms")), (pl.col("window_start") + MINUTE).cast(pl.Datetime("ms")).alias("window_end"),
            "n", "total",
        )
    )


def _service(brokers: str, topic: str, name: str, tmp_path) -> Service:
    service = Service(brokers, topic, name, tmp_path)
    service.path.write_text(PIPELINE_FILE)
    return service


def _assert_exact(brokers: str, service: Service, events: list[dict]) -> None:
    """The country windows (topic and table) and the user windows equal the oracle; only the flush windows stay open."""
    countries = oracle_countries(events)
    state, name = service.state, service.name
    got = from_kafka(brokers, f"{name}-countries", dict(countries.schema)).filter(pl.col("window_start").dt.epoch("ms") < FLUSH_T)
    assert got.height == countries.height and same_rows(got, countries), f"countries topic: {got.height} rows, oracle {countries.height}"
    assert same_rows(lg.read_table(state, "per_country").collect(), countries)
    assert same_rows(lg.read_table(state, "per_minute").collect(), oracle_minutes(events))
    open_countries = lg.read_state(state, name, "per_country").collect()
    assert open_countries.select("country", "n", "total").rows() == [("c0", 4, 0)], open_countries  # the 4 flush records
    assert sorted(lg.read_state(state, name, "per_minute").collect()["user"].to_list()) == [f"__flush{p}" for p in range(4)]


def _only_flush_open(service: Service) -> bool:
    try:
        open_countries = lg.read_state(service.state, service.name, "per_country").collect()
    except lg.StorageError:
        return False
    return open_countries.height == 1 and open_countries["window_start"].dt.epoch("ms").to_list() == [FLUSH_T // MINUTE * MINUTE]  # the minute of the flush records


def test_two_instances_killed_restarted_and_scaled_one_two_one_count_every_country_exactly(brokers, make_topic, tmp_path, unique):
    events = make_events(40_000, seed=21)
    topic = make_topic(f"hop-in-{unique}", partitions=4)
    service = _service(brokers, topic, f"hop-{unique}", tmp_path)
    logs = [tmp_path / "instance-0.log", tmp_path / "instance-1.log", tmp_path / "instance-1-again.log"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        produce_events(brokers, topic, events[:10_000], flush_at=None)
        procs.append(_start(service, 0, logs[0]))  # one instance
        _wait_until_quiet(service.state)
        procs.append(_start(service, 1, logs[1]))  # 1 -> 2
        _wait_for_line(logs[1], "window per_country: loaded")
        produce_events(brokers, topic, events[10_000:24_000], flush_at=None)
        time.sleep(1.5)
        procs[1].send_signal(signal.SIGKILL)  # mid-run: its epoch in flight is lost, its partitions move
        assert procs[1].wait(timeout=30) == KILLED
        procs.append(_start(service, 1, logs[2]))  # restarted with its id: it fences what the killed one left
        _wait_for_line(logs[2], "window per_country: loaded")
        produce_events(brokers, topic, events[24_000:30_000], flush_at=None)
        time.sleep(2)
        _wait_until_quiet(service.state)
        _stop(procs[2], logs[2])  # 2 -> 1
        produce_events(brokers, topic, events[30_000:], flush_per_partition=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _only_flush_open(service):
            time.sleep(0.5)
        _stop(procs[0], logs[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    _assert_exact(brokers, service, events)


def _group_lag(brokers: str, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """Per partition of ``topics``, how far the group's committed offset is behind the last stable offset (0: read out)."""
    import confluent_kafka as ck
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": brokers})
    meta = admin.list_topics(timeout=10).topics
    keys = [ck.TopicPartition(t, p) for t in topics for p in meta[t].partitions]
    ends = admin.list_offsets({k: OffsetSpec.latest() for k in keys}, isolation_level=ck.IsolationLevel.READ_COMMITTED)
    stable = {(k.topic, k.partition): f.result(30).offset for k, f in ends.items()}
    done = admin.list_consumer_group_offsets([ck.ConsumerGroupTopicPartitions(group, keys)])[group].result(30)
    committed = {(tp.topic, tp.partition): max(tp.offset, 0) for tp in done.topic_partitions}
    return {tp: stable[tp] - committed.get(tp, 0) for tp in stable}


def test_two_instances_run_until_caught_up_stop_only_once_the_whole_group_has_read_everything_and_are_exact(
    brokers, make_topic, tmp_path, unique
):
    # Instance 0 folds slowly (0.2 s per batch before the hop), instance 1 quickly: instance 1
    # reads its own partitions out long before instance 0, whose epochs still write rows to
    # instance 1's repartition partitions.  `--until caught_up` means the group's lag is 0:
    # instance 1 returns only then (its committed offsets also pass the commit markers that end
    # the repartition partitions), so when it returns nothing is left unread anywhere.
    events = make_events(20_000, seed=31)
    topic = make_topic(f"hop-until-{unique}", partitions=4)
    produce_events(brokers, topic, events, flush_per_partition=True)
    service = _service(brokers, topic, f"hop-until-{unique}", tmp_path)
    service.path.write_text(PIPELINE_FILE.replace(
        'key="user")\n',
        'key="user")\nif os.environ.get("T_SLOW"):\n    import time\n'
        '    events = events.map_batches(lambda df: (time.sleep(float(os.environ["T_SLOW"])), df)[1])\n', 1,
    ))
    assert "T_SLOW" in service.path.read_text()
    logs = [tmp_path / "instance-0.log", tmp_path / "instance-1.log"]

    def start(instance: int, **env: str) -> subprocess.Popen[bytes]:
        with logs[instance].open("w") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "lockgate.cli", "--log-level", "INFO", "run", str(service.path), "--until", "caught_up"],
                env={**service.env, "LOCKGATE_INSTANCE": str(instance), "T_BATCH": "500", **env}, stdout=subprocess.DEVNULL, stderr=err,
            )

    procs = [start(0, T_SLOW="0.2")]
    try:
        _wait_for_line(logs[0], "window per_country: loaded")
        procs.append(start(1, T_SLOW="0"))  # the same plan (a map_batches that does not wait): instances must run one plan
        assert procs[1].wait(timeout=240) == 0, logs[1].read_text()[-3000:]
        lag = _group_lag(brokers, service.name, [topic, f"{service.name}-per_country-repartition"])
        assert procs[0].wait(timeout=60) == 0, logs[0].read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert "revoked" in logs[0].read_text(), "instance 1 took partitions from instance 0"
    assert lag and not any(lag.values()), lag
    _assert_exact(brokers, service, events)
