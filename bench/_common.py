"""Shared helpers of the benchmarks: broker, topics, medians, JSON + Markdown output.

Nothing here is timed; the benchmarks time their own loops.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

__all__ = [
    "BASELINE_CONSUMER",
    "bare_consume",
    "committed_messages",
    "count_committed",
    "create_topic",
    "delete_topics",
    "isolated",
    "machine",
    "markdown_table",
    "median",
    "rates",
    "resolve_brokers",
    "stamp",
    "timed_run",
    "wait_transactions_settled",
    "write_json",
]

#: the bare consumer's options: read_committed, fetches as large as lockgate's
BASELINE_CONSUMER = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "isolation.level": "read_committed",
    "queued.min.messages": 200_000,
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
}


def produce_waiting(producer: ck.Producer, topic: str, value: bytes, key: bytes | None = None, **kwargs: Any) -> None:
    """``producer.produce``, waiting (serving delivery reports) while the local queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)


def resolve_brokers(brokers: str | None) -> str:
    """``brokers`` as given, else the local broker (started if it is not running)."""
    if brokers:
        return brokers
    from lockgate.engine import (
        broker,  # the local KRaft broker, started once and left running
    )

    info = broker.start()
    print(f"# local broker: {info.bootstrap} (pid {info.pid}, {info.data_dir})", file=sys.stderr)
    return info.bootstrap


def create_topic(brokers: str, topic: str, partitions: int, *, timeout: float = 60.0) -> None:
    """Create ``topic`` (it must not exist yet) and wait until its metadata shows every partition."""
    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)]).values():
        future.result(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
            p.leader >= 0 for p in t.partitions.values()
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {topic!r} did not get {partitions} partitions with leaders in {timeout}s")


def delete_topics(brokers: str, topics: Iterable[str]) -> None:
    """Delete ``topics`` (the ones that exist); errors are printed, not raised."""
    admin = AdminClient({"bootstrap.servers": brokers})
    existing = set(admin.list_topics(timeout=30).topics)
    doomed = [t for t in dict.fromkeys(topics) if t in existing]
    if not doomed:
        return
    for topic, future in admin.delete_topics(doomed, operation_timeout=60).items():
        try:
            future.result(60)
        except Exception as exc:  # noqa: BLE001 - cleanup only
            print(f"# could not delete topic {topic}: {exc}", file=sys.stderr)


def wait_transactions_settled(brokers: str, topic: str, *, timeout: float = 60.0) -> int:
    """Wait until no partition of ``topic`` has an open transaction; returns the partitions still open (0 = settled).

    ``commit_transaction`` returns before the broker has written the commit markers to
    the data partitions; until it has, a ``read_committed`` consumer hits end-of-partition
    at the last stable offset and would miss the last transaction.  The LSO (``latest``
    with READ_COMMITTED) equals the high watermark once every marker is written.
    """
    admin = AdminClient({"bootstrap.servers": brokers})
    partitions = list(admin.list_topics(topic, timeout=30).topics[topic].partitions)
    tps = [ck.TopicPartition(topic, p) for p in partitions]
    deadline = time.monotonic() + timeout
    while True:
        ends = {}
        for level in (ck.IsolationLevel.READ_COMMITTED, ck.IsolationLevel.READ_UNCOMMITTED):
            futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, isolation_level=level, request_timeout=30)
            ends[level] = {tp.partition: f.result().offset for tp, f in futures.items()}
        open_ = sum(ends[ck.IsolationLevel.READ_COMMITTED][p] != ends[ck.IsolationLevel.READ_UNCOMMITTED][p] for p in partitions)
        if not open_ or time.monotonic() > deadline:
            return open_
        time.sleep(0.2)


def committed_messages(brokers: str, topic: str, *, timeout: float = 120.0) -> Iterator[ck.Message]:
    """Every record of ``topic`` a ``read_committed`` consumer sees, once every commit marker is written."""
    still_open = wait_transactions_settled(brokers, topic)
    if still_open:
        print(f"# warning: {topic}: {still_open} partitions still have an open transaction", file=sys.stderr)
    admin = AdminClient({"bootstrap.servers": brokers})
    partitions = list(admin.list_topics(topic, timeout=30).topics[topic].partitions)
    consumer = ck.Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"bench-check-{time.time_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in partitions])
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic!r}: only {len(at_end)}/{len(partitions)} partitions at their end")
            for m in consumer.consume(10_000, 1.0):
                err = m.error()
                if err is None:
                    yield m
                elif err.code() == ck.KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                else:
                    raise ck.KafkaException(err)
    finally:
        consumer.close()


def count_committed(brokers: str, topic: str, *, timeout: float = 120.0) -> int:
    """How many records of ``topic`` a ``read_committed`` consumer sees (see ``committed_messages``)."""
    return sum(1 for _ in committed_messages(brokers, topic, timeout=timeout))


def timed_run(pipe: Any, records: int, run: int, timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run an ``lg.Pipeline`` until caught up; its timings as every benchmark reports them, and its metrics.

    ``steady`` is from the first records a consume returned to the end; ``wall``
    includes creating the clients and joining the group.
    """
    t_start = time.perf_counter()
    summary = pipe.run(until="caught_up", timeout=timeout)
    wall = time.perf_counter() - t_start
    if summary.stopped_because != "caught_up" or summary.records != records:
        raise RuntimeError(f"lockgate run {run}: {summary} (expected {records} records, caught_up)")
    assert summary.seconds_from_first_record is not None
    steady = summary.seconds_from_first_record
    timings = {
        "run": run,
        "pipeline": pipe.name,
        "records": summary.records,
        "batches": summary.batches,
        "steady_seconds": round(steady, 3),
        "wall_seconds": round(wall, 3),
        "join_seconds": round(wall - steady, 3),
        "run_seconds": round(summary.seconds, 3),
        "steady_rps": round(summary.records / steady),
        "wall_rps": round(summary.records / wall),
    }
    return timings, pipe.metrics()


def bare_consume(brokers: str, topic: str, records: int, run: int, timeout: float) -> dict[str, Any]:
    """The client floor: a fresh group reads every record of ``topic``; ``total += len(value)`` for each.

    Nothing is decoded, produced or committed: no pipeline on this client reads faster.
    ``steady`` runs from the first records a consume returned to the last one read.
    """
    t_start = time.perf_counter()
    consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}-r{run}", **BASELINE_CONSUMER})
    consumer.subscribe([topic])
    consume = consumer.consume
    n = total = 0
    t_first: float | None = None
    deadline = time.monotonic() + timeout
    try:
        while n < records:
            msgs = consume(10_000, 1.0)
            if not msgs:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bare consume: read {n} of {records} records in {timeout}s")
                continue
            if t_first is None:
                t_first = time.perf_counter()
            for m in msgs:
                v = m.value()
                if v is None:  # an error event: not a record
                    err = m.error()
                    if err is not None:
                        if err.fatal():
                            raise ck.KafkaException(err)
                        continue
                else:
                    total += len(v)
                n += 1
        t_last = time.perf_counter()
    finally:
        consumer.close()
    t_end = time.perf_counter()
    assert t_first is not None
    return {"run": run, "records": n, "value_bytes": total, **rates(n, t_start, t_first, t_last, t_end)}


def rates(records: int, t_start: float, t_first: float, t_last: float, t_end: float) -> dict[str, Any]:
    """A client loop's timings as every benchmark reports them: steady from the first records to the last, wall from the start to the end."""
    steady, wall = t_last - t_first, t_end - t_start
    return {
        "steady_seconds": round(steady, 3),
        "wall_seconds": round(wall, 3),
        "join_seconds": round(t_first - t_start, 3),
        "steady_rps": round(records / steady),
        "wall_rps": round(records / wall),
    }



def isolated(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a fresh interpreter (spawned, no fork), its result returned.

    Each measurement runs in a process of its own so that none inherits the heap,
    threads or allocator state another left behind: a bare consume loop read 2M
    records at 1.1M records/s in a fresh process and at 0.72-0.96M as the second
    run of the same process (2026-11-25, bench/stateless.py).
    """
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def shim(worktree: Path, into: Path) -> Path:
    """A directory holding a ``lockgate`` package made of links into ``worktree`` (the installed layout).

    Put first on ``PYTHONPATH``, it makes a fresh interpreter import that checkout's
    lockgate, whatever ``pip install -e`` points at: how an A/B runs two commits.
    """
    package = into / "lockgate"
    package.mkdir(parents=True)
    for item in (worktree / "lockgate").iterdir():
        if item.suffix == ".py":
            (package / item.name).symlink_to(item)
    for sub in ("engine", "operators", "storage"):
        (package / sub).symlink_to(worktree / sub)
    return into


def shim_env(pythonpath: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with ``pythonpath`` (a :func:`shim`) first on ``PYTHONPATH``.

    A child started with it imports that checkout's lockgate, if its working directory is
    not the repository's root: ``python -c`` puts the working directory first on ``sys.path``,
    and the root's ``lockgate/`` would win.
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _check_shim(side: str, pythonpath: str) -> None:
    """Fail unless a fresh interpreter on :func:`shim_env`, outside the repository, imports lockgate from ``pythonpath``."""
    with tempfile.TemporaryDirectory() as cwd:
        got = subprocess.run([sys.executable, "-c", "import lockgate.engine.runner as r; print(r.__file__)"], env=shim_env(pythonpath),
                             cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    if not got.startswith(pythonpath):
        raise SystemExit(f"A/B: the {side} side imports lockgate from {got}, not from {pythonpath}: it would compare the wrong code")


@contextlib.contextmanager
def ab_checkouts(rev: str) -> Iterator[dict[str, str]]:
    """Git revision ``rev`` in a temporary worktree, for an A/B run: yields the ``PYTHONPATH`` shims of both sides.

    ``{"base": ..., "new": ...}``: a fresh interpreter on :func:`shim_env` of one of them
    imports the lockgate of ``rev`` or of this checkout (:func:`shim`); each is checked so.
    The worktree is removed afterwards.
    """
    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="lockgate-ab-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(tmp / "base"), rev], cwd=root, capture_output=True, check=True)
    try:
        shims = {"base": str(shim(tmp / "base", tmp / "shim-base")), "new": str(shim(root, tmp / "shim-new"))}
        for side, path in shims.items():
            _check_shim(side, path)
        yield shims
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "base")], cwd=root, capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def median(values: Sequence[float]) -> float:
    """The median (mean of the two middle values for an even count)."""
    return float(statistics.median(values))


def stamp() -> str:
    """A UTC timestamp for file and topic names: ``20250101T120000Z``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import os

    import polars as pl

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "confluent_kafka": ck.__version__,
        "librdkafka": ck.libversion()[0],
        "polars": pl.__version__,
    }


def cpu_jiffies() -> list[int] | None:
    """The machine's CPU time counters (the ``cpu`` line of ``/proc/stat``); None where there is none."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of the machine's CPU time the hypervisor gave to other guests between two :func:`cpu_jiffies`.

    On a shared virtual machine a run can lose a quarter of its CPU to its
    neighbours; its latency then says more about them than about the engine.

    >>> steal_share([100, 0, 50, 800, 0, 0, 0, 50], [200, 0, 100, 1550, 0, 0, 0, 150])
    0.1
    """
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return round((after[7] - before[7]) / total, 3) if total > 0 else None


class StealSampler:
    """The host's steal share of this machine's CPU time, second by second, on a thread while the ``with`` block runs.

    ``share`` is the whole block's, ``per_second`` each second's (a burst that a
    block's average hides: a run can lose half the machine for a few seconds).

    >>> with StealSampler(interval=0.05) as s:
    ...     time.sleep(0.2)
    >>> s.share is None or 0.0 <= s.share <= 1.0, len(s.per_second) >= 1 or cpu_jiffies() is None
    (True, True)
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.per_second: list[float] = []
        self.share: float | None = None
        self._first: list[int] | None = None  # the counters at start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="steal-sampler", daemon=True)

    def _sample(self) -> None:
        last = cpu_jiffies()
        while not self._stop.wait(self.interval):
            now = cpu_jiffies()
            share = steal_share(last, now)
            if share is not None:
                self.per_second.append(share)
            last = now

    def start(self) -> StealSampler:
        self._first = cpu_jiffies()
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.share = steal_share(self._first, cpu_jiffies())

    def __enter__(self) -> StealSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_json(out_dir: str | Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``out_dir/<name>-<stamp>.json``; returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{stamp()}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def write_markdown(json_path: Path, md: str) -> Path:
    """Print ``md`` and write it beside the results written by :func:`write_json` (the same name, ``.md``); returns its path."""
    print(md)
    path = json_path.with_suffix(".md")
    path.write_text(md + "\n")
    print(f"# written to {json_path} and {path}", file=sys.stderr)
    return path


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
