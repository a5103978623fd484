"""The local Kafka broker launcher: start, idempotent restart, stop, clear errors."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from lockgate.engine import broker
from lockgate.errors import BrokerError, LockgateError


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[broker.BrokerInfo]:
    """A broker of its own on a temporary data dir and a free port."""
    data_dir = tmp_path_factory.mktemp("broker")
    info = broker.start(data_dir, broker.free_port())
    try:
        yield info
    finally:
        broker.stop(data_dir)


@pytest.mark.kafka
def test_transactional_produce_is_seen_by_a_read_committed_consumer(running: broker.BrokerInfo) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": running.bootstrap})  # alive until the topic exists
    admin.create_topics([NewTopic(topic, 1)])[topic].result(30)

    producer = Producer({"bootstrap.servers": running.bootstrap, "transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=b"k", value=f"v{i}".encode())
    producer.commit_transaction(30)

    consumer = Consumer(
        {
            "bootstrap.servers": running.bootstrap,
            "group.id": f"g-{topic}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        values: list[bytes] = []
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
            if len(values) == 3:
                break
    finally:
        consumer.close()
    assert values == [b"v0", b"v1", b"v2"]


@pytest.mark.kafka
def test_start_again_returns_the_running_broker(running: broker.BrokerInfo) -> None:
    assert broker.start(running.data_dir) == running
    assert broker.start(running.data_dir, running.port).pid == running.pid
    assert broker.status(running.data_dir) == running
    assert running.log_file.is_file()


@pytest.mark.kafka
def test_start_on_another_port_while_running_says_so(running: broker.BrokerInfo) -> None:
    with pytest.raises(BrokerError, match=f"already runs .* on port {running.port}"):
        broker.start(running.data_dir, broker.free_port())


@pytest.mark.kafka
def test_stop_ends_the_broker_and_status_is_none(tmp_path: Path) -> None:
    info = broker.start(tmp_path, broker.free_port())
    assert broker.stop(tmp_path) is True
    assert broker.status(tmp_path) is None
    assert not Path(f"/proc/{info.pid}").exists() or not broker._alive(info.pid)
    assert broker.stop(tmp_path) is False


@pytest.mark.kafka
def test_a_cluster_id_that_starts_with_a_dash_formats_and_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # base64url ids begin with "-" one time in 64; a CI run once drew one.
    dashed = "-" + broker._cluster_id()[1:]
    monkeypatch.setattr(broker, "_cluster_id", lambda: dashed)
    info = broker.start(tmp_path, broker.free_port())
    try:
        meta = (tmp_path / "kraft-logs" / "meta.properties").read_text()
        assert "cluster.id=-" in meta
        assert broker.status(tmp_path) == info
    finally:
        broker.stop(tmp_path)


@pytest.mark.kafka
def test_start_on_a_port_in_use_names_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} .* in use"):
            broker.start(tmp_path, port)


@pytest.mark.kafka
def test_a_broker_that_dies_while_starting_raises_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawn = broker._spawn_detached

    def spawn_broken_jvm(cmd: list[str], out: Path) -> int:
        return spawn([cmd[0], "-XX:+LockgateNoSuchOption", *cmd[1:]], out)

    monkeypatch.setattr(broker, "_spawn_detached", spawn_broken_jvm)
    with pytest.raises(BrokerError, match="(?s)exited while starting.*LockgateNoSuchOption"):
        broker.start(tmp_path, broker.free_port())
    assert broker.status(tmp_path) is None


@pytest.mark.kafka
def test_a_broker_that_does_not_answer_in_time_is_stopped(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="did not answer .* within"):
        broker.start(tmp_path, broker.free_port(), timeout=0.01)
    assert broker.status(tmp_path) is None
    assert broker.stop(tmp_path) is False


@pytest.mark.kafka
def test_a_cached_classpath_needs_no_mvn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    resolved = broker.classpath()
    monkeypatch.setenv("PATH", str(tmp_path))  # neither mvn nor anything else
    assert broker.classpath() == resolved


def test_missing_java_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BrokerError) as raised:
        broker.start(tmp_path / "data", broker.free_port())
    message = str(raised.value)
    assert "\n" not in message
    assert "`java`" in message and "apt-get install openjdk-17-jre-headless" in message
    assert isinstance(raised.value, RuntimeError) and isinstance(raised.value, LockgateError)


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java on PATH")
def test_missing_mvn_without_a_cached_classpath_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java_only = tmp_path / "bin"
    java_only.mkdir()
    os.symlink(shutil.which("java"), java_only / "java")  # type: ignore[arg-type]
    monkeypatch.setenv("PATH", str(java_only))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no cached classpath there
    with pytest.raises(BrokerError) as raised:
        broker.start(tmp_path / "data", broker.free_port())
    message = str(raised.value)
    assert "\n" not in message
    assert "`mvn`" in message and "apt-get install maven" in message
