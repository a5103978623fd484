"""When KafkaSource.poll closes a micro-batch: as soon as the runner is ready for it, else it grows until max_wait."""

from __future__ import annotations

import json
import threading
import time

import confluent_kafka as ck
import polars as pl
import pytest
from lockgate.engine.config import PipelineConfig
from lockgate.engine.source import KafkaSource

import lockgate as lg
from tests.conftest import produce, read_committed

pytestmark = pytest.mark.kafka


def _source(brokers: str, topic: str, name: str) -> KafkaSource:
    return KafkaSource(PipelineConfig(name=name, brokers=brokers).consumer_options(), [topic])


def _first_records(source: KafkaSource, policy: lg.BatchPolicy, **kwargs: object) -> list:
    """Poll until a batch has records (the first polls wait for the group join); that batch's values."""
    for _ in range(100):
        raw = source.poll(policy, **kwargs)
        if len(raw):
            return raw.values
    raise AssertionError("no records in 100 polls")


def test_a_batch_closes_as_soon_as_the_runner_is_ready_not_at_max_wait(brokers, make_topic, unique):
    topic = make_topic(f"ready-{unique}", partitions=1)
    produce(brokers, topic, [b"%d" % i for i in range(10)])
    source = _source(brokers, topic, f"ready-{unique}")
    try:
        started = time.monotonic()
        values = _first_records(source, lg.BatchPolicy(max_wait="60s"), ready=lambda timeout: True)
        took = time.monotonic() - started
    finally:
        source.close()
    assert values == [b"%d" % i for i in range(10)]
    assert took < 30, f"the batch waited {took:.1f}s: for max_wait (60 s), though the runner was ready"


def test_while_the_runner_is_busy_a_batch_grows_with_records_that_come_later_until_max_wait(brokers, make_topic, unique):
    # the commit before it is still running (ready() is False): the batch takes in what arrives
    # meanwhile (records produced 0.5 s after its first ones), and closes max_wait (2 s) after its first record
    topic = make_topic(f"busy-{unique}", partitions=1)
    produce(brokers, topic, [b"early-%d" % i for i in range(10)])
    source = _source(brokers, topic, f"busy-{unique}")
    later = threading.Timer(0.5, lambda: produce(brokers, topic, [b"late-%d" % i for i in range(10)]))

    def busy(timeout: float) -> bool:
        """The runner, its commit running: waits ``timeout`` and says no; the first ask (the batch has records) starts the clock."""
        if not later.is_alive() and not later.finished.is_set():
            later.start()
        time.sleep(timeout)
        return False

    try:
        values = _first_records(source, lg.BatchPolicy(max_wait="2s"), ready=busy)
        later.join()
    finally:
        later.cancel()
        source.close()
    assert values == [b"early-%d" % i for i in range(10)] + [b"late-%d" % i for i in range(10)]


def _trickle(brokers: str, topic: str, count: int, every_s: float) -> None:
    """``count`` records, one every ``every_s`` seconds (a stream far slower than the engine)."""
    producer = ck.Producer({"bootstrap.servers": brokers, "linger.ms": 0})
    for i in range(count):
        producer.produce(topic, json.dumps({"v": i}).encode())
        producer.poll(0)
        time.sleep(every_s)
    producer.flush(30)


@pytest.mark.slow
def test_a_slow_stream_gets_an_epoch_per_min_interval_not_one_per_record_and_loses_nothing(brokers, make_topic, tmp_path, unique):
    # 600 records over ~6 s: with no floor, a batch closes whenever the commit before it is done (tens of
    # ms), so most records get an epoch of their own; with min_interval 250 ms, at most ~4 epochs a second
    batches = {}
    for floor in ("0ms", "250ms"):
        name = f"trickle-{floor}-{unique}"
        topic = make_topic(f"{name}-in", partitions=1)
        pipe = lg.Pipeline(name, brokers=brokers, state=str(tmp_path / name), batch=lg.BatchPolicy(max_wait="1s", min_interval=floor))
        pipe.source(topic, format=lg.JSON(schema={"v": pl.Int64})).filter(pl.col("v") >= 0).to_kafka(f"{name}-out")
        started = time.monotonic()
        running = threading.Thread(target=pipe.run, kwargs={"timeout": 60, "progress": False})
        running.start()
        _trickle(brokers, topic, 600, 0.01)
        trickled = time.monotonic() - started
        time.sleep(1.5)  # the last records' epochs
        pipe.stop()
        running.join(60)
        assert not running.is_alive()
        assert sorted(json.loads(m.value())["v"] for m in read_committed(brokers, f"{name}-out")) == list(range(600)), floor
        batches[floor] = pipe.metrics()["batches"]
    assert batches["250ms"] <= (trickled + 1.5) / 0.25 + 2, (batches, trickled)
    assert batches["0ms"] > 2 * batches["250ms"], batches  # the floor is what made the difference
