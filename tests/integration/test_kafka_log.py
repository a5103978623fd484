"""librdkafka's log lines go through Python logging under lockgate.kafka, transient retries below WARNING; none is printed raw."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import confluent_kafka as ck
import pytest
from lockgate.engine.kafka_log import kafka_logger

from tests.conftest import json_values, produce
from tests.integration.test_service import PIPELINE_FILE

#: a line librdkafka prints itself: %<syslog level>|<time>|<facility>|<client>| ...
RAW = re.compile(r"^%[0-7]\|\d+\.\d+\|", re.M)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collect() -> Iterator[_Collect]:
    """A handler on ``lockgate`` (level NOTSET, as basicConfig's) with ``lockgate.kafka`` at DEBUG."""
    handler, top, kafka = _Collect(), logging.getLogger("lockgate"), logging.getLogger("lockgate.kafka")
    top.addHandler(handler)
    kafka.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        top.removeHandler(handler)
        kafka.setLevel(logging.NOTSET)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_transient_retry_lands_below_warning_and_an_error_at_error_under_lockgate_kafka(collect):
    # what confluent-kafka calls for each librdkafka line: logger.log(level, "%s [%s] %s", facility, client, text)
    logger = kafka_logger("producer")
    retry = "[thrd:main]: Failed to acquire transactional PID from broker TxnCoordinator/1: Broker: Coordinator load in progress: retrying"
    restart = "[thrd:127.0.0.1:19092/1]: 127.0.0.1:19092/1: Disconnected: connection closed by peer: receive 0 after POLLIN (after 5012ms in state UP)"
    tls = "[thrd:ssl://127.0.0.1:19092/bootstrap]: ssl://127.0.0.1:19092/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer"
    logger.log(logging.WARNING, "%s [%s] %s", "GETPID", "rdkafka#producer-5", retry)
    logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-5", restart)
    logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-5", tls)
    logger.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "rdkafka#producer-5", "[thrd:app]: Configuration property linger.ms is a producer property")
    got = [(r.name, r.levelname, r.getMessage().split(" ")[0]) for r in collect.records]
    assert got == [
        ("lockgate.kafka.producer", "INFO", "GETPID"),
        ("lockgate.kafka.producer", "INFO", "FAIL"),
        ("lockgate.kafka.producer", "ERROR", "FAIL"),
        ("lockgate.kafka.producer", "WARNING", "CONFWARN"),
    ]

    # a lowered line is handled as one logged at INFO: not by a parent's handler while lockgate.kafka logs WARNING and up
    collect.records.clear()
    logging.getLogger("lockgate.kafka").setLevel(logging.WARNING)
    logger.log(logging.WARNING, "%s [%s] %s", "GETPID", "rdkafka#producer-5", retry)
    logger.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-5", tls)
    assert [r.levelname for r in collect.records] == ["ERROR"]


def test_a_real_client_logs_through_lockgate_kafka_and_prints_nothing_itself(collect, capfd):
    """A producer at a closed loopback port: librdkafka's connection-refused lines (retried forever) arrive at INFO."""
    producer = ck.Producer({"bootstrap.servers": f"127.0.0.1:{_free_port()}", "logger": kafka_logger("producer")})
    deadline = time.monotonic() + 10
    while not collect.records and time.monotonic() < deadline:
        producer.poll(0.1)
    del producer
    refused = [r for r in collect.records if "Connection refused" in r.getMessage()]
    assert refused and {(r.name, r.levelname) for r in refused} == {("lockgate.kafka.producer", "INFO")}, collect.records
    out, err = capfd.readouterr()
    assert not RAW.search(out + err), err


@pytest.mark.kafka
def test_a_misconfigured_client_logs_its_error_at_error(brokers, collect):
    """TLS spoken to the broker's plaintext listener: librdkafka retries, but it is no transient failure."""
    producer = ck.Producer({"bootstrap.servers": brokers, "security.protocol": "SSL", "logger": kafka_logger("producer")})
    deadline = time.monotonic() + 10
    while not collect.records and time.monotonic() < deadline:
        producer.poll(0.1)
    del producer
    tls = [r for r in collect.records if "SSL" in r.getMessage()]  # "SSL handshake failed: ..." or "Disconnected: SSL connection ..."
    assert tls and {(r.name, r.levelname) for r in tls} == {("lockgate.kafka.producer", "ERROR")}, collect.records


@pytest.mark.kafka
@pytest.mark.slow
def test_a_pipeline_run_prints_no_raw_librdkafka_line_and_its_clients_log_through_python(brokers, make_topic, tmp_path, unique):
    source = make_topic(f"klog-in-{unique}", partitions=2)
    produce(brokers, source, json_values([{"n": i} for i in range(2_000)]))
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE_FILE)
    env = {**os.environ, "T_NAME": f"klog-{unique}", "T_BROKERS": brokers, "T_STATE": str(tmp_path / "state"), "T_SOURCE": source,
           "T_OUT": f"klog-out-{unique}",
           # every client logs: librdkafka prints these debug lines on stderr unless a logger takes them
           "LOCKGATE_KAFKA__DEBUG": "generic"}
    run = subprocess.run([sys.executable, "-m", "lockgate.cli", "--log-level", "DEBUG", "run", str(path), "--until", "caught_up"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not RAW.search(run.stdout + run.stderr), [line for line in run.stderr.splitlines() if RAW.match(line)][:5]
    for role in ("consumer", "producer", "admin"):
        assert f"DEBUG lockgate.kafka.{role}: " in run.stderr, f"no line of a {role} came through Python logging"
