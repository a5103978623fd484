"""Instances of one pipeline share a topic's partitions; window state moves with its partition.

Real broker, real processes (``lockgate run``), the crash tests' pipeline: tumbling
and session windows by user into topics and tables.  The input topic is keyed by
user, so with ``pipe.source(..., key="user")`` each window keeps its state per
input partition; without it a window needs every partition in one instance, and
a second instance gets a clear error instead of wrong results.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.crash.test_crashes import (
    Service,
    _only_flush_windows_open,
    _wait_until_quiet,
    assert_exact,
)
from tests.integration.test_windows_on_kafka import make_events, produce_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]  # several instances and their rebalances


def _start(service: Service, instance: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as err:  # the child writes to its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "lockgate.cli", "--log-level", "INFO", "run", str(service.path)],
            env={**service.env, "LOCKGATE_INSTANCE": str(instance)}, stdout=subprocess.DEVNULL, stderr=err,
        )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


def _wait_for_line(log: Path, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if text in line]
        if lines:
            return lines[-1]
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in {log} within {timeout}s:\n{log.read_text()[-3000:]}")


def test_a_second_instance_takes_half_the_partitions_with_their_windows_and_gives_them_back_exactly(
    brokers, make_topic, tmp_path, unique
):
    events = make_events(60_000, seed=11)
    topic = make_topic(f"scale-in-{unique}", partitions=4)
    service = Service(brokers, topic, f"scale-{unique}", tmp_path, T_KEY="user")
    logs = [tmp_path / "instance-0.log", tmp_path / "instance-1.log"]
    first = _start(service, 0, logs[0])
    second = None
    try:
        produce_events(brokers, topic, events[:20_000], flush_at=None)
        _wait_until_quiet(service.state)  # instance 0 owns all four partitions and has open windows on each
        second = _start(service, 1, logs[1])
        loaded = _wait_for_line(logs[1], "window per_minute: loaded")
        assert "of partitions [" in loaded and "[0, 1, 2, 3]" not in loaded, loaded  # it took some, not all
        _wait_for_line(logs[0], "revoked")
        produce_events(brokers, topic, events[20_000:40_000], flush_at=None)
        time.sleep(2)
        _wait_until_quiet(service.state)
        _stop(second, logs[1])  # static membership: its partitions go back after the 6 s session timeout
        produce_events(brokers, topic, events[40_000:], flush_per_partition=True)  # keyed by user, as declared
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _only_flush_windows_open(service):
            time.sleep(0.5)
        _stop(first, logs[0])
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert "of partitions [0, 1, 2, 3]" in _wait_for_line(logs[0], "window per_minute: loaded")  # all back with instance 0
    assert_exact(brokers, service, events, per_partition=True)


def test_a_window_that_needs_every_partition_stops_instances_that_split_them_and_a_single_one_finishes_exactly(
    brokers, make_topic, tmp_path, unique
):
    events = make_events(30_000, seed=12)
    topic = make_topic(f"whole-in-{unique}", partitions=4)
    service = Service(brokers, topic, f"whole-{unique}", tmp_path, T_REPARTITION="0")  # no key=, no hop: the windows need the whole topic
    logs = [tmp_path / "instance-0.log", tmp_path / "instance-1.log"]
    produce_events(brokers, topic, events[:10_000], flush_at=None)
    procs = [_start(service, 0, logs[0])]
    try:
        _wait_until_quiet(service.state)
        procs.append(_start(service, 1, logs[1]))
        codes = [proc.wait(timeout=120) for proc in procs]  # 2 x the 6 s session timeout of waiting, then the error
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    texts = [log.read_text() for log in logs]
    assert 2 in codes, (codes, [t[-2000:] for t in texts])
    stopped = next(t for code, t in zip(codes, texts, strict=True) if code == 2)
    assert "keep one state for all partitions of" in stopped and "pipe.source(..., key=[...])" in stopped, stopped[-2000:]
    assert "leave out repartition=False" in stopped, stopped[-2000:]
    produce_events(brokers, topic, events[10_000:])
    service.until_done()  # one instance alone: exact, nothing half-done by the two
    assert_exact(brokers, service, events)
