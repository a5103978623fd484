"""End-to-end latency of a keyed tumbling-window count, exactly once: lockgate, Kafka Streams and the floor, same broker, same run.

Workload, per engine run (each on a fresh 4-partition input topic and a fresh output topic):
an idempotent producer (``enable.idempotence``: a partition keeps its write order) writes
R records/s (``--rate``/``--rates``) for S seconds (``--seconds``, 50, warm-up included) of JSON
``{"k": <one of 1,000 keys>, "v": <sequence number>, "ts": <wall clock ms>}`` keyed by ``k``,
paced in 10 ms slices (every slice produces the records that are due), ``ts`` is the event time.
The load runs at the full rate from its first second: there is no slower warm-up load.

Pipeline: tumbling 10 s event-time windows by ``k``, count and sum of ``v``, emit on every
update, to a Kafka topic, exactly once.

(t) the transport, no engine: the reader reads the input topic itself (producer -> broker ->
    reader).  What the machine, the broker and the measurement cost before any engine.
(a) Kafka Streams 4.1 (``bench/peers/kstreams``, built with ``mvn -q package`` on the first run,
    run on the machine's JDK with its default JVM options): ``exactly_once_v2``, ``groupByKey``,
    ``TimeWindows.ofSizeWithNoGrace(10 s)`` on ``ts`` (a timestamp extractor), count + sum,
    ``toStream`` -> JSON ``{"k", "window_start", "count", "sum"}``.  Everything else is Kafka
    Streams' own default (one stream thread; under EOS ``commit.interval.ms`` 100, its producer's
    ``linger.ms`` 100 and ``transaction.timeout.ms`` 10 s, its consumer's ``max.poll.records``
    1000).  Record caching is off (``statestore.cache.max.bytes=0``) so that every update is
    emitted, as "emit on every update" asks: one output (and one changelog record) per input
    record.  Once on its defaults, once with ``commit.interval.ms`` = the cadence, and once more
    on its defaults with its record cache on (10 MB, its default): each window's latest value is
    emitted when the cache flushes, at the latest on commit, which is what lockgate's
    ``emit="update"`` does per micro-batch (one row per updated window and batch, not one per
    record).
(b) the floor: the cheapest exactly-once consume-transform-produce loop on confluent-kafka in
    Python: a read_committed consumer, a transactional producer that forwards each input
    value as it is (no decode), one transaction per cadence.  With no transaction open it waits
    in ``consume(1, 0.1)``, which returns as soon as a record is there, and opens the
    transaction on that record; while it is open it consumes in slices of at most 5 ms (or what
    is left of the cadence, if less) and forwards each slice at once, and commits ``cadence``
    after the transaction's first record, with the consumer's offsets.  Its producer has
    lockgate's ``retry.backoff.ms`` (read from ``engine/config.py``: 10 ms): with librdkafka's
    100 ms, a transaction opened while the last one's markers are still being written waits
    100 ms to add its offsets, and the floor would not be the floor.  (``consume(n, t)``
    waits for n records or all of t: one call with a 100 ms timeout held the first record of
    a transaction up to 100 ms before the transaction was even opened.)  No exactly-once
    pipeline on this client can beat it.
(c) lockgate: ``source(JSON, event_time="ts").window(Tumbling("10s"), by="k", emit="update")
    .agg(count=pl.len(), sum=pl.col("v").sum()).to_kafka(out, key="k")``, once with
    ``BatchPolicy()`` (defaults), once with ``BatchPolicy(max_wait=<cadence>)``.

The cadence (``--cadence-ms``) defaults to lockgate's default ``max_wait``; when it equals
both defaults (Kafka Streams' EOS ``commit.interval.ms`` is 100 ms, lockgate's ``max_wait``
is 100 ms) the "equal cadence" runs would repeat the default runs and are not run twice:
the table says so.

Each engine runs in a process of its own (a JVM, or a fresh Python interpreter), the
read_committed reader in another one (no shared GIL), the producer in this one.  The reader
starts at the beginning of the output topic and keeps the raw values and, per ``consume``
call, its wall-clock return time; they are decoded after the run.  It waits in
``consume(1, 0.05)``, which returns with the first record that arrives, then takes what has
arrived with it with ``consume(10_000, 0)`` (no wait), so a record's receive time is at most
one such call late.  The share of the time from the load's start to the last output that it
spent not waiting for records is reported ("reader busy"): near 100 % it, not the engine,
would set the pace.  So are the cores the engine's process used over the same time ("engine
used N cores", from /proc): on a 2-core machine what one engine takes, the producer, the
reader and the broker lack.  The producer's longest pause between its slices is reported too: on a
saturated machine it is held up (its queue full, or no CPU), its records wait in its queue
and their latency counts that wait.  Before the
measured producer starts, probe records (``k`` = -1, not counted) are produced until the
reader sees an output for one: the engine has joined its group and runs.

Latency (Polars, whole frames): input record i of a (key, window), in produce order, is
reflected at the first receive time of an output row of that window with count >= i
(outputs per (key, window) in receive order, cumulative maximum of count, ``join_asof``
forward on count); its latency is that time minus its ``ts`` (the produce wall time,
whole ms).  For the floor and the transport, the time the reader first sees the record.

Steady state, the same rule for every engine: per second of the load (by ``ts``, from its
first record, warm-up included) the p50 and p99 of the records produced in it.  An engine has
caught up at the first second from which its per-second p50 stays <= ``--steady-ms``
(default max(1000 ms, 10 x the cadence)) for ``--steady-hold`` (5) seconds in a row: a JVM
still compiling, or any engine working off a backlog, is seconds behind and above it.  The
figures are of the records produced from max(``--warmup`` (20 s), caught up) to the end of
the load; a run that never catches up has no steady-state figures and the table says so.
The table gives per engine when it caught up (median over runs, the slowest run beside),
how many seconds were measured, the steady-state p50/p99/p999/max, and the p99 of every
record after the warm-up, catch-up included; the JSON has every run's per-second p50/p99.

Completeness: for every (key, window) the highest count seen must equal the number of
records produced (the floor and the transport: every sequence number seen, none twice); a
run that loses or double-counts records is a FAILURE and says so.

Medians of ``--runs`` runs.  lockgate's own histograms (``pipe.metrics()["histograms"]``,
the whole run including warm-up) are printed beside its end-to-end figures: per-stage
``stage_<name>_seconds`` when the engine has them, otherwise what it has.

Usage::

    python bench/latency.py [--brokers HOST:PORT] [--rates 50000,10000] [--seconds 50] [--warmup 20]
                            [--steady-ms 1000] [--steady-hold 5] [--runs 3] [--cadence-ms 100]
                            [--engines transport,kstreams,floor,lockgate] [--out bench/results] [--base REV]

``--base REV`` adds lockgate at git revision REV (checked out in a temporary worktree)
beside this checkout's in every run, interleaved: a change's latency as a ratio of
the same run (``lockgate p99 / lockgate at the A/B base p99``).

Targets (issue 12): lockgate p99 <= 0.9 x Kafka Streams p99 (defaults, and equal cadence), at
50k and 10k ev/s, steady state; the goal beyond is 0.5 x.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

KEYS = 1_000
WINDOW_MS = 10_000
PARTITIONS = 4
SLICE_S = 0.010
KS_EOS_COMMIT_MS = 100  # Kafka Streams' commit.interval.ms default under exactly_once_v2
KS_DIR = Path(__file__).resolve().parent / "peers" / "kstreams"
KS_JAR = KS_DIR / "target" / "kstreams-latency.jar"
PROBE_KEY = -1
PRODUCER_HELD_MS = 250  # a pause between the producer's slices longer than this is reported
STEAL_NOISY = 0.10  # a run that lost more of the machine's CPU time than this to other guests is flagged
QUANTILES = {"p50": 0.5, "p99": 0.99, "p999": 0.999}

LOCKGATE = """
import json, os, signal
import polars as pl
import lockgate as lg
wait = os.environ.get("B_MAX_WAIT_MS")
batch = lg.BatchPolicy(max_wait=f"{wait}ms") if wait else lg.BatchPolicy()
pipe = lg.Pipeline(os.environ["B_NAME"], brokers=os.environ["B_BROKERS"], state=os.environ["B_STATE"], batch=batch)
events = pipe.source(os.environ["B_IN"], format=lg.JSON(schema={"k": pl.Int64, "v": pl.Int64, "ts": pl.Int64}), event_time="ts")
(events.window(lg.Tumbling("10s"), by="k", emit="update", repartition=os.environ.get("B_REPARTITION") == "1")
       .agg(count=pl.len(), sum=pl.col("v").sum())
       .to_kafka(os.environ["B_OUT"], key="k"))
signal.signal(signal.SIGTERM, lambda *_: pipe.stop())
summary = pipe.run(progress=False)
hist = {name: {k: v for k, v in h.items() if k != "buckets"} for name, h in pipe.metrics().get("histograms", {}).items()}
print(json.dumps({"records": summary.records, "batches": summary.batches, "histograms": hist}), flush=True)
"""

FLOOR = """
import json, os, signal, time
import confluent_kafka as ck
name, brokers, src, dst = os.environ["B_NAME"], os.environ["B_BROKERS"], os.environ["B_IN"], os.environ["B_OUT"]
cadence = float(os.environ["B_MAX_WAIT_MS"]) / 1000
SLICE = 0.005  # consume(n, t) waits for n records or all of t: short slices keep records moving to the producer
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
# retry.backoff.ms as lockgate's producer has it (engine/config.py): a transaction opened right after
# the last one's commit otherwise waits 100 ms whenever AddOffsetsToTxn meets CONCURRENT_TRANSACTIONS
producer = ck.Producer({"bootstrap.servers": brokers, "transactional.id": name, "retry.backoff.ms": int(os.environ["B_RETRY_BACKOFF_MS"])})
producer.init_transactions(60)
consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": name, "auto.offset.reset": "earliest",
                        "isolation.level": "read_committed", "enable.auto.commit": False})
consumer.subscribe([src])
produce, consume, now = producer.produce, consumer.consume, time.monotonic
records = transactions = 0
opened = None  # when the open transaction got its first record


commits = []  # seconds per send_offsets + commit, to tell the commit's share of the latency


def commit():
    t = now()
    producer.send_offsets_to_transaction(consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 60)
    producer.commit_transaction(60)
    commits.append(now() - t)


while not stopping:
    if opened is None:
        msgs = consume(1, 0.1)  # returns with the first record that arrives: it opens the transaction
    else:
        msgs = consume(10_000, min(SLICE, max(0.0, opened + cadence - now())))
    for m in msgs:
        if m.error() is not None:
            if m.error().fatal():
                raise ck.KafkaException(m.error())
            continue
        if opened is None:
            producer.begin_transaction()
            opened = now()
        produce(dst, m.value(), m.key())
        records += 1
    if opened is not None and now() >= opened + cadence:
        commit()
        transactions += 1
        opened = None
if opened is not None:
    commit()
consumer.close()
commits.sort()
ms = {f"commit_ms_{q}": round(commits[min(len(commits) - 1, int(f * len(commits)))] * 1000, 1) for q, f in (("p50", 0.5), ("p99", 0.99))} if commits else {}
print(json.dumps({"records": records, "batches": transactions, **ms, "commit_ms_max": round(commits[-1] * 1000, 1) if commits else None}), flush=True)
"""


# --- the reader: its own process --------------------------------------------------------


def _read(brokers: str, topic: str, path: str, stop: Any, seen: Any, waited: Any, partitions: int = PARTITIONS) -> None:
    """Read ``topic`` read_committed from its beginning until ``stop``; write the values (ndjson) and receive times (ms).

    Each record's receive time is taken when the ``consume`` call that returned it came back:
    a call for one record that returns as soon as one is there, then calls that take, without
    waiting, whatever has arrived with it (``consume(n, t)`` waits for n records or all of t, so a
    single call with a timeout would date a burst that ends short of n up to t late).  ``waited``
    gets the seconds spent waiting for a first record: the caller turns it into the share of a
    span the reader was busy (near 1: the reader, not the engine, set the pace).
    """
    consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": f"bench-latency-reader-{uuid.uuid4().hex[:8]}",
                            **common.BASELINE_CONSUMER, "fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
    consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in range(partitions)])
    values: list[bytes] = []
    times: list[float] = []
    counts: list[int] = []
    consume, clock = consumer.consume, time.time
    idle = 0.0
    try:
        while not stop.is_set():
            w0 = time.monotonic()
            msgs = consume(1, 0.05)
            idle += time.monotonic() - w0
            first = True
            while msgs:  # the first record, then what is already here, without waiting
                t = clock() * 1000.0
                got = [v for m in msgs if (v := m.value()) is not None]
                values += got
                times.append(t)
                counts.append(len(got))
                msgs = consume(10_000, 0) if first or len(msgs) == 10_000 else None
                first = False
            seen.value = len(values)
            waited.value = idle
    finally:
        consumer.close()
    Path(path).write_bytes(b"\n".join(values) + b"\n" if values else b"")
    np.save(path + ".recv.npy", np.repeat(np.asarray(times, dtype=np.float64), counts))


# --- the producer: this process ----------------------------------------------------------


def _producer(brokers: str) -> ck.Producer:
    return ck.Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "linger.ms": 1,
                        "queue.buffering.max.messages": 1_000_000})


def _produce_paced(producer: ck.Producer, topic: str, rate: int, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write ``rate`` records/s for ``seconds``, every 10 ms the ones due; returns each record's key and ts (produce order)."""
    total = int(rate * seconds)
    keys = np.random.default_rng(seed).integers(0, KEYS, total)
    ts = np.zeros(total, dtype=np.int64)
    key_bytes = [str(k).encode() for k in range(KEYS)]
    produce, poll = producer.produce, producer.poll
    sent = 0
    t0 = time.time()
    while sent < total:
        now = time.time()
        due = min(total, int(rate * (now - t0)) + 1)
        ms = int(now * 1000)
        ts[sent:due] = ms
        for i in range(sent, due):
            k = int(keys[i])
            while True:
                try:
                    produce(topic, b'{"k":%d,"v":%d,"ts":%d}' % (k, i, ms), key_bytes[k])
                    break
                except BufferError:
                    poll(0.001)
        sent = due
        poll(0)
        rest = t0 + sent / rate - time.time()  # the next record's turn
        time.sleep(max(0.0, min(SLICE_S, rest)))
    producer.flush(60)
    return keys, ts


# --- the engines ----------------------------------------------------------------------------


def build_kstreams() -> Path:
    """``mvn -q package`` in bench/peers/kstreams (Maven Central) when the jar is missing or older than its sources; the jar."""
    sources = [KS_DIR / "pom.xml", *KS_DIR.glob("src/**/*.java")]
    if not KS_JAR.exists() or max(f.stat().st_mtime for f in sources) > KS_JAR.stat().st_mtime:
        print("# building bench/peers/kstreams (mvn -q package)", file=sys.stderr)
        subprocess.run(["mvn", "-q", "package", "-DskipTests"], cwd=KS_DIR, check=True)
    return KS_JAR


def _start_engine(engine: dict[str, Any], brokers: str, in_topic: str, out_topic: str, name: str, work: Path) -> subprocess.Popen:
    log = open(work / "engine.log", "wb")  # noqa: SIM115 - closed with the process
    if engine["kind"] == "kstreams":
        cmd = ["java", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", *(["-Dcache=on"] if engine.get("cache") else []),
               "-jar", str(KS_JAR), brokers, in_topic, out_topic, name, str(work / "ks-state")]
        if engine["cadence_ms"] is not None:
            cmd.append(str(engine["cadence_ms"]))
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
    env = {**os.environ, "B_NAME": name, "B_BROKERS": brokers, "B_IN": in_topic, "B_OUT": out_topic, "B_STATE": str(work / "state")}
    env.pop("B_MAX_WAIT_MS", None)
    env["B_REPARTITION"] = "1" if engine.get("repartition") else ""  # lg_repartition: the rows go through a repartition topic
    if engine["cadence_ms"] is not None:
        env["B_MAX_WAIT_MS"] = str(engine["cadence_ms"])
    if engine.get("pythonpath"):  # --base: this engine imports the lockgate of a given checkout
        env = common.shim_env(engine["pythonpath"], env)
    if engine["kind"] == "floor":  # the floor's producer retries as lockgate's does
        from lockgate.engine.config import PipelineConfig

        env["B_RETRY_BACKOFF_MS"] = str(PipelineConfig(name=name, brokers=brokers).producer_options()["retry.backoff.ms"])
    code = LOCKGATE if engine["kind"].startswith("lockgate") else FLOOR
    # cwd: not the repository's root, whose lockgate/ (first on sys.path for -c) would win over a --base shim
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=log, cwd=work)


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a live process has used so far (from /proc; None without one)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14 and 15)


def _stop_engine(proc: subprocess.Popen, work: Path) -> dict[str, Any]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if proc.returncode not in (0, -signal.SIGTERM, 143) and not lines:
        tail = (work / "engine.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"engine exited with {proc.returncode}:\n{tail}")
    return json.loads(lines[-1]) if lines else {}


def run_once(engine: dict[str, Any], brokers: str, rate: int, seconds: float, steady: dict[str, float], run: int) -> dict[str, Any]:
    """One engine, one rate, fresh topics: produce, read, analyse.  The transport row has no engine: the reader reads the input topic."""
    load_before = os.getloadavg()[0]  # a busy machine (other jobs on its CPUs) shows here
    tag = uuid.uuid4().hex[:6]
    name = f"bench-latency-{engine['kind']}-{tag}"
    in_topic, out_topic = f"{name}-in", f"{name}-out"
    bare = engine["kind"] == "transport"
    common.create_topic(brokers, in_topic, PARTITIONS)
    if not bare:
        common.create_topic(brokers, out_topic, PARTITIONS)
    work = Path(tempfile.mkdtemp(prefix="lockgate-bench-latency-"))
    ctx = mp.get_context("spawn")
    stop, seen, waited = ctx.Event(), ctx.Value("q", 0), ctx.Value("d", 0.0)
    reader = ctx.Process(target=_read, args=(brokers, in_topic if bare else out_topic, str(work / "out.ndjson"), stop, seen, waited), daemon=True)
    reader.start()
    proc = None if bare else _start_engine(engine, brokers, in_topic, out_topic, name, work)
    producer = _producer(brokers)
    try:
        t_start = time.time()
        while seen.value == 0:  # probes until the engine's output reaches the reader
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{engine['label']} exited: {(work / 'engine.log').read_text(errors='replace')[-3000:]}")
            if time.time() - t_start > 180:
                raise TimeoutError(f"{engine['label']}: no output 180 s after its start")
            producer.produce(in_topic, b'{"k":%d,"v":-1,"ts":%d}' % (PROBE_KEY, int(time.time() * 1000)), str(PROBE_KEY).encode())
            producer.flush(10)
            time.sleep(0.5)
        ready_s = time.time() - t_start
        waited_0, mono_0 = waited.value, time.monotonic()
        cpu_0 = _cpu_seconds(None if proc is None else proc.pid)
        steal = common.StealSampler().start()  # the host's share of the machine, each second of the load and the drain
        t0_ms = time.time() * 1000
        keys, ts = _produce_paced(producer, in_topic, rate, seconds, seed=run)
        produce_s = time.time() - t0_ms / 1000
        last, still = seen.value, time.monotonic()
        busy_at = (waited.value, still)  # the reader's wait counter and the clock when the last output came
        drain_until = still + 120
        while time.monotonic() - still < 5.0 and time.monotonic() < drain_until:  # drain: 5 s without new output
            time.sleep(0.2)
            if seen.value != last:
                last, still = seen.value, time.monotonic()
                busy_at = (waited.value, still)
        # the reader's busy share from the load's start to its last output (a late engine's outputs come after the load)
        reader_busy = 1.0 - (busy_at[0] - waited_0) / max(1e-9, busy_at[1] - mono_0)
        cpu_1, mono_1 = _cpu_seconds(None if proc is None else proc.pid), time.monotonic()
        steal.stop()
        # the cores the engine's process used from the load's start to the end of the drain: what it took from the
        # producer, the reader and the broker on this machine
        engine_cores = None if cpu_0 is None or cpu_1 is None else round((cpu_1 - cpu_0) / (mono_1 - mono_0), 3)
        engine_report = {} if proc is None else _stop_engine(proc, work)
        # lockgate's epochs, the floor's transactions (each a fixed cost, whatever its size), per second over the same
        # span as the cores: the load and the drain (5 s without output), so below the rate during the load
        commits_per_s = round(engine_report["batches"] / (mono_1 - mono_0), 1) if "batches" in engine_report else None
        stop.set()
        reader.join(120)
        result = analyse(engine["kind"], keys, ts, work / "out.ndjson", t0_ms, steady)
        result.update({"run": run, "rate": rate, "seconds": seconds, "ready_seconds": round(ready_s, 2),
                       "produce_seconds": round(produce_s, 2), "produced_rps": round(len(keys) / produce_s),
                       "outputs": last, "reader_busy": round(reader_busy, 3), "engine": engine_report, "engine_cores": engine_cores,
                       "commits_per_second": commits_per_s,
                       # the producer's longest pause between slices: ~10 ms paced; more, and it was held up (a full
                       # queue on a saturated broker, or no CPU): its records waited in it and their latency counts that
                       "producer_max_gap_ms": int(np.diff(ts).max()) if len(ts) > 1 else 0,
                       "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count(),
                       "steal": steal.share, "steal_max_1s": max(steal.per_second, default=None),
                       "steal_per_second": steal.per_second})
        return result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        stop.set()
        if reader.is_alive():
            reader.join(30)
            if reader.is_alive():
                reader.kill()
        admin_topics = [in_topic, *([] if bare else [out_topic]), f"{name}-dlq"]
        try:
            from confluent_kafka.admin import AdminClient

            admin_topics += [t for t in AdminClient({"bootstrap.servers": brokers}).list_topics(timeout=30).topics if t.startswith(name)]
        except Exception as exc:  # noqa: BLE001 - cleanup only
            print(f"# could not list topics: {exc}", file=sys.stderr)
        common.delete_topics(brokers, sorted(set(admin_topics)))
        shutil.rmtree(work, ignore_errors=True)


# --- the analysis: Polars, whole frames ---------------------------------------------------


def _figures(latency: pl.Series) -> dict[str, Any]:
    if latency.len() == 0:
        return {**dict.fromkeys(QUANTILES), "max": None}
    out = {name: round(float(latency.quantile(q, interpolation="nearest")), 1) for name, q in QUANTILES.items()}
    out["max"] = round(float(latency.max()), 1)
    return out


def caught_up(timeline: pl.DataFrame, bound_ms: float, hold: int) -> int | None:
    """The first second (from the start of the load) from which the per-second p50 stays <= ``bound_ms`` for ``hold`` seconds in a row; None if never.

    A second with no record reflected yet, or none produced, does not count as within.

    >>> t = pl.DataFrame({"second": [0, 1, 2, 3, 4, 5], "p50": [3000.0, 900.0, 200.0, 150.0, 180.0, 170.0]})
    >>> caught_up(t, 1000, 3), caught_up(t, 100, 3)
    (1, None)
    """
    if timeline.height == 0:
        return None
    last = int(timeline["second"].max())
    within = dict.fromkeys(range(last + 1), False)
    within.update({int(sec): p50 is not None and p50 <= bound_ms for sec, p50 in timeline.select("second", "p50").iter_rows()})
    run = 0
    for sec in range(last + 1):
        run = run + 1 if within[sec] else 0
        if run == hold:
            return sec - hold + 1
    return None


def analyse(kind: str, keys: np.ndarray, ts: np.ndarray, out_path: Path, t0_ms: float, steady: dict[str, float]) -> dict[str, Any]:
    """Latency figures, catch-up and completeness of one run (see the module docstring)."""
    inputs = pl.DataFrame({"k": keys.astype(np.int64), "seq": np.arange(len(keys), dtype=np.int64), "ts": ts})
    raw = out_path.read_bytes()
    recv = np.load(str(out_path) + ".recv.npy")
    if kind in ("floor", "transport"):  # the input records themselves come back
        schema = {"k": pl.Int64, "v": pl.Int64, "ts": pl.Int64}
        out = (pl.read_ndjson(raw, schema=schema) if raw else pl.DataFrame(schema=schema)).with_columns(recv_ms=pl.Series(recv))
        out = out.filter(pl.col("k") != PROBE_KEY)
        first = out.group_by("v").agg(recv_ms=pl.col("recv_ms").min(), copies=pl.len())
        joined = inputs.join(first, left_on="seq", right_on="v", how="left")
        missing = joined.filter(pl.col("recv_ms").is_null()).height
        extra = int(first["copies"].sum() - first.height) if first.height else 0
        extra += first.filter(~pl.col("v").is_in(inputs["seq"].implode())).height
        complete = {"lost_records": missing, "extra_records": extra, "windows_wrong": None}
    else:
        schema = {"k": pl.Int64, "window_start": pl.Int64, "count": pl.Int64}
        out = pl.read_ndjson(raw).select(*schema) if raw else pl.DataFrame(schema=schema)
        if out.schema["window_start"] == pl.String:  # lockgate writes a Datetime column as "2026-12-04 15:34:40" (UTC)
            out = out.with_columns(window_start=pl.col("window_start").str.to_datetime(time_unit="ms", time_zone="UTC").dt.epoch("ms"))
        out = out.with_columns(recv_ms=pl.Series(recv))
        out = out.filter(pl.col("k") != PROBE_KEY)
        inputs = inputs.with_columns(window_start=pl.col("ts") - pl.col("ts") % WINDOW_MS).with_columns(
            i=pl.col("seq").cum_count().over("k", "window_start", order_by="seq").cast(pl.Int64))
        reached = (out.sort("recv_ms", maintain_order=True)
                      .with_columns(reached=pl.col("count").cum_max().over("k", "window_start"))
                      .group_by("k", "window_start", "reached").agg(recv_ms=pl.col("recv_ms").min())
                      .sort("reached"))
        joined = inputs.sort("i").join_asof(reached, left_on="i", right_on="reached", by=["k", "window_start"],
                                            strategy="forward", check_sortedness=False)
        produced = inputs.group_by("k", "window_start").agg(n=pl.len())
        best = out.group_by("k", "window_start").agg(best=pl.col("count").max())
        per_window = produced.join(best, on=["k", "window_start"], how="full", coalesce=True).fill_null(0)
        wrong = per_window.filter(pl.col("n") != pl.col("best"))
        missing = int(per_window.select((pl.col("n") - pl.col("best")).clip(0).sum()).item())
        extra = int(per_window.select((pl.col("best") - pl.col("n")).clip(0).sum()).item())
        complete = {"lost_records": missing, "extra_records": extra, "windows_wrong": wrong.height}
    seen = joined.filter(pl.col("recv_ms").is_not_null()).with_columns(
        latency=pl.col("recv_ms") - pl.col("ts"), second=((pl.col("ts") - t0_ms) // 1000).cast(pl.Int64))
    # p50/p99 per second of the load, warm-up included: when the engine caught up, and whether it stayed
    timeline = (seen.group_by("second").agg(p50=pl.col("latency").quantile(0.5), p99=pl.col("latency").quantile(0.99))
                .sort("second"))
    up = caught_up(timeline, steady["bound_ms"], int(steady["hold"]))
    start = max(steady["warmup"], up if up is not None else 0)
    end = max(0.0, (float(ts.max()) - t0_ms) / 1000 + 0.001) if len(ts) else 0.0
    after_warmup = seen.filter(pl.col("ts") >= t0_ms + steady["warmup"] * 1000)["latency"]
    steady_part = seen.filter(pl.col("ts") >= t0_ms + start * 1000)["latency"] if up is not None else seen.clear()["latency"]
    complete["p50_p99_per_second"] = [[r["second"], round(r["p50"], 1), round(r["p99"], 1)] for r in timeline.iter_rows(named=True)]
    ok = complete["lost_records"] == 0 and complete["extra_records"] == 0 and not complete["windows_wrong"]
    return {"records": len(keys), "caught_up_seconds": up, "steady": up is not None,
            "measured_from_seconds": start if up is not None else None,
            "measured_seconds": round(end - start, 1) if up is not None else 0.0,
            "measured_records": steady_part.len(), **_figures(steady_part),
            "after_warmup": {"measured_records": after_warmup.len(), **_figures(after_warmup)},
            "complete": ok, **complete}


# --- the engines of one run, the table ---------------------------------------------------


def engines(cadence_ms: int, default_wait_ms: int, only: set[str]) -> list[dict[str, Any]]:
    """The engine configurations; an "equal cadence" one that repeats a default one is left out."""
    out = [{"key": "transport", "kind": "transport", "cadence_ms": None,
            "label": "transport: producer -> broker -> reader, no engine"},
           {"key": "ks_default", "kind": "kstreams", "cadence_ms": None,
            "label": f"Kafka Streams, defaults (commit.interval.ms {KS_EOS_COMMIT_MS}), cache off: emits every record"},
           {"key": "ks_cache", "kind": "kstreams", "cadence_ms": None, "cache": True,
            "label": f"Kafka Streams, defaults (commit.interval.ms {KS_EOS_COMMIT_MS}), cache on (10 MB): emits per commit"}]
    if cadence_ms != KS_EOS_COMMIT_MS:
        out.append({"key": "ks_cadence", "kind": "kstreams", "cadence_ms": cadence_ms, "label": f"Kafka Streams, commit.interval.ms {cadence_ms}, cache off"})
    out.append({"key": "floor", "kind": "floor", "cadence_ms": cadence_ms, "label": f"floor: EOS forward loop, 1 transaction / {cadence_ms} ms"})
    out.append({"key": "lg_default", "kind": "lockgate", "cadence_ms": None, "label": f"lockgate, defaults (max_wait {default_wait_ms} ms)"})
    if cadence_ms != default_wait_ms:
        out.append({"key": "lg_cadence", "kind": "lockgate", "cadence_ms": cadence_ms, "label": f"lockgate, max_wait {cadence_ms} ms"})
    # the same window without key=: its rows go through a repartition topic first (the cost of the hop)
    out.append({"key": "lg_repartition", "kind": "lockgate_repartition", "cadence_ms": None, "repartition": True,
                "label": f"lockgate through a repartition topic, defaults (max_wait {default_wait_ms} ms)"})
    return [e for e in out if e["kind"] in only]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs (steady-state figures of the runs that caught up); complete only if every run was."""
    out: dict[str, Any] = {}
    for name in [*QUANTILES, "max"]:
        values = [r[name] for r in runs if r[name] is not None]
        out[name] = round(common.median(values), 1) if values else None
    late = [r["after_warmup"]["p99"] for r in runs if r["after_warmup"]["p99"] is not None]
    out["p99_after_warmup"] = round(common.median(late), 1) if late else None
    ups = [r["caught_up_seconds"] for r in runs if r["caught_up_seconds"] is not None]
    out["caught_up_seconds"] = common.median(ups) if ups else None
    out["caught_up_seconds_max"] = max(ups) if ups else None
    out["not_caught_up_runs"] = sum(1 for r in runs if not r["steady"])
    measured = [r["measured_seconds"] for r in runs if r["steady"]]
    out["measured_seconds"] = common.median(measured) if measured else 0.0
    cores = [r["engine_cores"] for r in runs if r.get("engine_cores") is not None]
    out["engine_cores"] = round(common.median(cores), 2) if cores else None
    commits = [r["commits_per_second"] for r in runs if r.get("commits_per_second") is not None]
    out["commits_per_second"] = round(common.median(commits), 1) if commits else None
    out["reader_busy_max"] = max(r.get("reader_busy", 0.0) for r in runs)
    steals = [r["steal"] for r in runs if r.get("steal") is not None]
    out["steal_max"] = max(steals) if steals else None
    # the runs the host left alone: the same medians, of runs that lost at most STEAL_NOISY of the machine
    quiet = [r["p99"] for r in runs if r["p99"] is not None and r.get("steal") is not None and r["steal"] <= STEAL_NOISY]
    out["quiet_p99"] = round(common.median(quiet), 1) if quiet else None
    out["quiet_runs"] = len(quiet)
    out["producer_max_gap_ms"] = max(r.get("producer_max_gap_ms", 0) for r in runs)
    out["complete"] = all(r["complete"] for r in runs)
    out["lost_records"] = sum(r["lost_records"] for r in runs)
    out["extra_records"] = sum(r["extra_records"] for r in runs)
    out["runs"] = len(runs)
    return out


def stage_histograms(runs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], bool]:
    """lockgate's histograms (median p50/p99 over runs, ms): the ``stage_*`` ones if there are any, else all of them."""
    hists = [r.get("engine", {}).get("histograms", {}) for r in runs]
    names = sorted({n for h in hists for n in h})
    staged = [n for n in names if n.startswith("stage_")]
    chosen = staged or names
    out = {}
    for n in chosen:
        p50 = [h[n]["p50"] for h in hists if n in h and h[n].get("p50") is not None]
        p99 = [h[n]["p99"] for h in hists if n in h and h[n].get("p99") is not None]
        if p50 and p99:
            out[n] = {"p50_ms": round(common.median(p50) * 1000, 2), "p99_ms": round(common.median(p99) * 1000, 2)}
    return out, bool(staged)


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None) -> float | None:
    if not num or not den or num.get("p99") in (None, 0) or den.get("p99") in (None, 0):
        return None
    return round(num["p99"] / den["p99"], 2)


def run_ratios(num: list[dict[str, Any]], den: list[dict[str, Any]]) -> list[float]:
    """Each run's p99 ratio of two engines (runs where both have a steady p99), in run order.

    >>> run_ratios([{"p99": 200.0}, {"p99": None}, {"p99": 300.0}], [{"p99": 400.0}, {"p99": 100.0}, {"p99": 150.0}])
    [0.5, 2.0]
    """
    return [round(a["p99"] / b["p99"], 2) for a, b in zip(num, den, strict=False) if a.get("p99") and b.get("p99")]


def quiet_ratio(num: dict[str, Any], den: dict[str, Any]) -> str:
    """The p99 ratio of two engines' runs the host left alone (see ``summarise``), with how many runs each had; "-" without.

    >>> quiet_ratio({"quiet_p99": 200.0, "quiet_runs": 2}, {"quiet_p99": 250.0, "quiet_runs": 1})
    '0.80 (2, 1)'
    >>> quiet_ratio({"quiet_p99": None, "quiet_runs": 0}, {"quiet_p99": 250.0, "quiet_runs": 1})
    '-'
    """
    if not num.get("quiet_p99") or not den.get("quiet_p99"):
        return "-"
    return f"{num['quiet_p99'] / den['quiet_p99']:.2f} ({num['quiet_runs']}, {den['quiet_runs']})"


def report(result: dict[str, Any]) -> str:
    """The Markdown of a result: one table of engines per rate, the ratios, lockgate's stages."""
    st = result["steady_state"]
    intro = (f"Steady state: the load runs at the full rate from its first second; an engine has caught up at the first "
             f"second from which its per-second p50 stays <= {st['bound_ms']:g} ms for {st['hold']:g} s in a row; its figures "
             f"are of the records produced from max({st['warmup']:g} s, caught up) to the end of the load, the same rule for every "
             f"engine.  \"caught up\" is the median over runs (the slowest run in brackets).  \"p99 after warm-up\" is of every "
             f"record after {st['warmup']:g} s, catch-up included.\n")
    parts = [intro]
    for rate_key, per_rate in result["rates"].items():
        s = per_rate["summary"]
        rows = []
        for e in result["engines"]:
            f = s.get(e["key"])
            if f is None:
                continue
            comp = "yes" if f["complete"] else f"**FAILURE**: {f['lost_records']:,} lost, {f['extra_records']:,} extra"
            if f["caught_up_seconds"] is None:
                up = f"**never** (in {f['runs']} runs)"
            else:
                up = f"{f['caught_up_seconds']:g} s ({f['caught_up_seconds_max']:g})"
                if f["not_caught_up_runs"]:
                    up += f", **never in {f['not_caught_up_runs']} of {f['runs']} runs**"
            rows.append([e["label"], up, f"{f['measured_seconds']:g}", _cell(f["p50"]), _cell(f["p99"]), _cell(f["p999"]), _cell(f["max"]),
                         _cell(f["p99_after_warmup"]), "-" if f.get("engine_cores") is None else f"{f['engine_cores']:.2f}",
                         "-" if f.get("commits_per_second") is None else f"{f['commits_per_second']:g}", comp])
        parts.append(f"#### {int(rate_key):,} ev/s, {result['seconds']:g} s of load, steady state, medians of {result['runs']} runs "
                     "(each figure its own median; ratios of those medians), latency in ms\n")
        parts.append(common.markdown_table(["engine", "caught up after", "measured s", "p50", "p99", "p999", "max", "p99 after warm-up", "engine cores", "commits/s", "complete"], rows))
        busy = max((f["reader_busy_max"] for f in s.values()), default=0.0)
        parts.append(f"\nThe reader was busy at most {busy:.0%} of the time from the load's start to the last output (the rest it waited for records)"
                     + (": **it may have set the pace**" if busy > 0.8 else "") + ".")
        stolen = {e["key"]: s[e["key"]]["steal_max"] for e in result["engines"] if (s.get(e["key"]) or {}).get("steal_max") is not None}
        if stolen:
            worst = max(stolen.values())
            parts.append(f"The host took up to {worst:.0%} of this machine's CPU time during a run (steal time; per engine, its worst run: "
                         + ", ".join(f"{key} {v:.0%}" for key, v in stolen.items()) + ")"
                         + (f": **runs over {STEAL_NOISY:.0%} measure the neighbours as much as the engines**" if worst > STEAL_NOISY else "") + ".")
        held = {e["label"]: s[e["key"]]["producer_max_gap_ms"] for e in result["engines"] if e["key"] in s and s[e["key"]]["producer_max_gap_ms"] > PRODUCER_HELD_MS}
        if held:
            parts.append("**The producer was held up** (longest pause between its 10 ms slices; its records waited in its queue "
                         "and their latency counts that): " + "; ".join(f"{label}: {gap:,} ms" for label, gap in held.items()) + ".")
        ratio_rows = []
        cad_ks = "ks_cadence" if "ks_cadence" in s else "ks_default"
        cad_lg = "lg_cadence" if "lg_cadence" in s else "lg_default"
        same = " (equal cadence = defaults)" if cad_ks == "ks_default" and cad_lg == "lg_default" else ""
        for label, num, den, target in [
            ("lockgate p99 / Kafka Streams p99, defaults (KS cache off: emits every record)", "lg_default", "ks_default", 0.9),
            (f"lockgate p99 / Kafka Streams p99, equal cadence {result['cadence_ms']} ms{same}", cad_lg, cad_ks, 0.9),
            ("lockgate p99 / Kafka Streams p99, defaults with its cache on (emits per commit, as lockgate per batch)", "lg_default", "ks_cache", 0.9),
            ("lockgate p99 / floor p99 (defaults)", "lg_default", "floor", None),
            ("lockgate p99 / lockgate at the A/B base p99 (defaults)", "lg_default", "lg_base", None),
            ("floor p99 / transport p99", "floor", "transport", None),
        ]:
            r = _ratio(s.get(num), s.get(den))
            if r is None:
                continue
            problems = [*(["an incomplete run"] if not (s[num]["complete"] and s[den]["complete"]) else []),
                        *(["a run that never caught up"] if s[num]["not_caught_up_runs"] or s[den]["not_caught_up_runs"] else [])]
            verdict = (f"not valid: {' and '.join(problems)}; " if problems else "") + (
                f"target <= {target}: {'met' if r <= target else 'NOT met'}; goal 0.5: "
                + ("met" if r <= 0.5 else f"p99 must fall {r / 0.5:.2f}x") if target else "-")
            paired = run_ratios(per_rate["runs"].get(num, []), per_rate["runs"].get(den, []))
            calm = quiet_ratio(s[num], s[den])
            ratio_rows.append([label, f"{r:.2f}", " / ".join(f"{x:.2f}" for x in paired) or "-", calm, verdict])
        if ratio_rows:
            parts.append("")
            parts.append(common.markdown_table(["ratio of steady-state p99 (same run)", "value", "each run's own ratio",
                                                f"of runs with host steal <= {STEAL_NOISY:.0%}", "target / goal"], ratio_rows))
            parts.append("\nThe value is the ratio of the two medians; each run's own ratio pairs the engines measured minutes apart, "
                         "so how far those spread is how far one bench can be trusted on this machine.  The next column is the "
                         "ratio of the medians of the runs the host left alone (the runs of each engine counted in brackets), "
                         "where there is one of each.")
        stages = per_rate.get("lockgate_histograms", {})
        for key, (hist, staged) in stages.items():
            parts.append("")
            note = "per stage" if staged else "no stage_* histograms in this engine yet; what pipe.metrics() has"
            parts.append(f"lockgate ({key}) histograms, whole run incl. warm-up, {note}:\n")
            parts.append(common.markdown_table(["histogram", "p50 ms", "p99 ms"], [[n, f"{h['p50_ms']:.1f}", f"{h['p99_ms']:.1f}"] for n, h in hist.items()]))
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    from lockgate.engine.config import BatchPolicy

    default_wait_ms = round(BatchPolicy().max_wait_s * 1000)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers")
    parser.add_argument("--rates", default="50000,10000", help="records/s, comma-separated")
    parser.add_argument("--rate", type=int, help="one rate (overrides --rates)")
    parser.add_argument("--seconds", type=float, default=50.0, help="seconds of load at the full rate, warm-up included")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load never measured, for every engine")
    parser.add_argument("--steady-ms", type=float, help="caught up: per-second p50 at most this (default: max(1000, 10 x cadence))")
    parser.add_argument("--steady-hold", type=int, default=5, help="... for this many seconds in a row")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cadence-ms", type=int, default=default_wait_ms, help="the equal cadence (default: lockgate's default max_wait)")
    parser.add_argument("--engines", default="transport,kstreams,floor,lockgate")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--base", help="A/B: also run lockgate at this git revision (a worktree), beside this checkout's, in every run")
    args = parser.parse_args(argv)
    if args.seconds <= args.warmup + args.steady_hold:
        parser.error("--seconds must be more than --warmup + --steady-hold")
    rates = [args.rate] if args.rate else [int(r) for r in args.rates.split(",")]
    brokers = common.resolve_brokers(args.brokers)
    chosen = engines(args.cadence_ms, default_wait_ms, set(args.engines.split(",")))
    if any(e["kind"] == "kstreams" for e in chosen):
        build_kstreams()
    with common.ab_checkouts(args.base) if args.base else contextlib.nullcontext({}) as shims:
        if shims:
            chosen = with_base(chosen, shims, args.base)
        return measure(args, brokers, rates, chosen, default_wait_ms)


def with_base(chosen: list[dict[str, Any]], shims: dict[str, str], rev: str) -> list[dict[str, Any]]:
    """The engines with lockgate's defaults at ``rev`` (``lg_base``) before ``lg_default``; every lockgate engine on a shim."""
    out = []
    for e in chosen:
        if e["kind"].startswith("lockgate"):
            e = {**e, "pythonpath": shims["new"]}
        if e["key"] == "lg_default":
            out.append({**e, "key": "lg_base", "pythonpath": shims["base"], "label": f"lockgate at {rev}, defaults (A/B base)"})
        out.append(e)
    return out


def measure(args: argparse.Namespace, brokers: str, rates: list[int], chosen: list[dict[str, Any]], default_wait_ms: int) -> int:
    """Every engine at every rate, ``args.runs`` interleaved runs; the JSON and the Markdown written."""
    steady = {"warmup": args.warmup, "bound_ms": args.steady_ms or max(1000.0, 10.0 * args.cadence_ms), "hold": args.steady_hold}
    result: dict[str, Any] = {"benchmark": "latency", "seconds": args.seconds, "warmup": args.warmup, "steady_state": steady,
                              "runs": args.runs, "cadence_ms": args.cadence_ms, "lockgate_default_max_wait_ms": default_wait_ms,
                              "kstreams_eos_commit_interval_ms": KS_EOS_COMMIT_MS, "kstreams_cache": "statestore.cache.max.bytes=0",
                              "engines": chosen, "rates": {}, "machine": common.machine()}
    for rate in rates:
        per_engine: dict[str, list[dict[str, Any]]] = {e["key"]: [] for e in chosen}
        for run in range(args.runs):  # interleaved: every engine at the same moment of a noisy machine
            for e in chosen:
                r = run_once(e, brokers, rate, args.seconds, steady, run)
                per_engine[e["key"]].append(r)
                up = f"caught up after {r['caught_up_seconds']} s" if r["steady"] else "never caught up"
                print(f"# {rate:,}/s run {run + 1} {e['label']}: {up}, steady p50 {r['p50']} p99 {r['p99']} p999 {r['p999']} max {r['max']} ms "
                      f"over {r['measured_seconds']} s (after warm-up, catch-up included: p50 {r['after_warmup']['p50']} p99 {r['after_warmup']['p99']}), "
                      f"complete {r['complete']} (lost {r['lost_records']}, extra {r['extra_records']}), "
                      f"produced {r['produced_rps']:,}/s, engine used {r['engine_cores']} cores, {r['commits_per_second'] or '-'} commits/s, reader busy {r['reader_busy']:.0%}, producer's longest pause {r['producer_max_gap_ms']} ms, ready after {r['ready_seconds']} s, "
                      f"1-min load average {r['load_average_1m'][0]} -> {r['load_average_1m'][1]} on {r['cpus']} CPUs, "
                      f"host steal {'-' if r['steal'] is None else format(r['steal'], '.0%')}"
                      + (f", floor {r['engine']}" if e["kind"] == "floor" else ""), file=sys.stderr)
        result["rates"][str(rate)] = {
            "runs": per_engine,
            "summary": {k: summarise(v) for k, v in per_engine.items()},
            "lockgate_histograms": {k: stage_histograms(v) for k, v in per_engine.items() if k.startswith("lg_")},
        }
    path = common.write_json(args.out, "latency", result)
    common.write_markdown(path, report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
