"""When KafkaSource.poll closes a micro-batch: as soon as the runner is ready for it, else it grows until max_wait."""

from __future__ import annotations

import threading
import time

import pytest
from lockgate.engine.config import PipelineConfig
from lockgate.engine.source import KafkaSource

import lockgate as lg
from tests.conftest import produce

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
