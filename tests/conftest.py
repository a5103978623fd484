"""Shared fixtures: one real Kafka broker per test session, topics, producers, read_committed readers.

The broker is ``lockgate broker`` (Apache Kafka in KRaft mode on the machine's JDK),
started once on a free port in a temporary directory and stopped at the end.  Set
``LOCKGATE_TEST_BROKERS=host:port`` to use a broker that is already running.  The
state-on-S3 tests get moto's S3 server (``s3``), started once on 127.0.0.1 the same way, and
the Avro tests a real schema registry (``registry``: ``lockgate registry``, Apicurio Registry).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import confluent_kafka as ck
import polars as pl
import pytest
from confluent_kafka.admin import AdminClient, NewTopic


@pytest.fixture(scope="session")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of the session's real Kafka broker."""
    given = os.environ.get("LOCKGATE_TEST_BROKERS")
    if given:
        yield given
        return
    from lockgate.engine import broker

    data_dir = tmp_path_factory.mktemp("kafka")
    info = broker.start(data_dir=data_dir, port=broker.free_port())
    try:
        yield info.bootstrap
    finally:
        broker.stop(data_dir=data_dir)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's real schema registry (Apicurio Registry, the Confluent API); ``LOCKGATE_TEST_REGISTRY`` to use a running one."""
    given = os.environ.get("LOCKGATE_TEST_REGISTRY")
    if given:
        yield given
        return
    from lockgate.engine import registry as local_registry

    data_dir = tmp_path_factory.mktemp("registry")
    info = local_registry.start(data_dir=data_dir, port=local_registry.free_port())
    try:
        yield info.url
    finally:
        local_registry.stop(data_dir=data_dir)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and pipeline names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def make_topic(brokers: str) -> Callable[..., str]:
    """Create a topic (``partitions``, optional ``config``) and return its name."""
    admin = AdminClient({"bootstrap.servers": brokers})

    def make(name: str, partitions: int = 4, config: dict[str, str] | None = None) -> str:
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})])
        futures[name].result(30)
        return name

    return make


def ordered_producer(brokers: str, options: dict | None = None) -> ck.Producer:
    """A producer that keeps each partition in the order it was written (idempotent).

    librdkafka's default is not idempotent: a request that fails with a retriable
    error (``Not leader for partition`` on a fresh broker's new topic) is retried
    after the requests behind it were stored, so a partition's first records can land
    after later ones.  Event-time windows then rightly count them late.
    """
    return ck.Producer({"bootstrap.servers": brokers, **(options or {}), "enable.idempotence": True})


def produce(brokers: str, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | str | None] | None = None) -> None:
    """Produce values (and keys) to ``topic``, non-transactionally, and wait for delivery."""
    producer = ordered_producer(brokers, {"linger.ms": 20, "partitioner": "murmur2_random"})
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value, None if keys is None else keys[i])
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def json_values(rows: Sequence[dict]) -> list[bytes]:
    """Rows as JSON values."""
    return [json.dumps(r).encode() for r in rows]


def read_committed(brokers: str, topic: str, *, timeout: float = 60.0) -> list[ck.Message]:
    """Every record of ``topic`` that a read_committed consumer sees, read to the end of each partition."""
    consumer = ck.Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    md = consumer.list_topics(topic, timeout=30)
    partitions = [ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in md.topics[topic].partitions]
    consumer.assign(partitions)
    at_end: set[int] = set()
    out: list[ck.Message] = []
    import time

    deadline = time.monotonic() + timeout
    while len(at_end) < len(partitions):
        if time.monotonic() > deadline:
            raise AssertionError(f"read_committed({topic}) did not reach the end of every partition in {timeout}s")
        for m in consumer.consume(10_000, 0.5):
            err = m.error()
            if err is None:
                out.append(m)
                at_end.discard(m.partition())
            elif err.code() == ck.KafkaError._PARTITION_EOF:
                at_end.add(m.partition())
            else:
                raise AssertionError(f"read_committed({topic}): {err}")
    consumer.close()
    return out


def json_frame(messages: Sequence[ck.Message], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Decode JSON message values into a frame of ``schema`` (test-side oracle reader)."""
    if not messages:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame([json.loads(m.value()) for m in messages], schema=schema, orient="row")


def wait_for_rows(state: str, table: str, more_than: int, timeout: float = 120.0) -> int:
    """Until the committed table ``table`` has more than ``more_than`` rows (a pipeline runs elsewhere)."""
    import time

    import lockgate as lg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            rows = lg.read_table(state, table).collect().height
        except lg.StorageError:
            continue  # nothing committed yet
        if rows > more_than:
            return rows
    raise AssertionError(f"table {table!r} under {state} did not get more than {more_than} rows in {timeout}s")


def same_rows(left: pl.DataFrame, right: pl.DataFrame) -> bool:
    """Equal as multisets of rows (order ignored, duplicates counted)."""
    if left.columns != right.columns or left.height != right.height:
        return False
    cols = left.columns
    return left.sort(cols).equals(right.select(cols).sort(cols))


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    """A fresh LanceDB state directory."""
    return str(tmp_path / "state")


@dataclass(frozen=True)
class S3:
    """moto's S3 server on 127.0.0.1 and one bucket in it: a state URI per test, and the options to reach it."""

    endpoint: str
    bucket: str = "lockgate-tests"

    @property
    def options(self) -> dict[str, str]:
        """Lance's storage options for the server (test keys: moto takes any)."""
        return {"endpoint": self.endpoint, "region": "us-east-1", "access_key_id": "lockgate-test-key",
                "secret_access_key": "lockgate-test-secret-9f3", "allow_http": "true"}

    def state(self, prefix: str) -> str:
        """A fresh state URI in the bucket."""
        return f"s3://{self.bucket}/{prefix}"

    def env(self) -> dict[str, str]:
        """The same options as ``LOCKGATE_STORAGE_OPTIONS__*`` variables, for a ``lockgate run`` process."""
        return {f"LOCKGATE_STORAGE_OPTIONS__{k.upper()}": v for k, v in self.options.items()}


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto's S3 server (``moto[server]``, the test extra), started on a free port of 127.0.0.1 for the session."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    server = S3(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(server.endpoint, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start on port {port}: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        request = urllib.request.Request(f"{server.endpoint}/{server.bucket}", method="PUT")  # create the bucket
        urllib.request.urlopen(request, timeout=10).close()
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
