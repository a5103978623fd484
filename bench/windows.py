"""Windowed aggregation throughput: lockgate against Quix Streams, exactly once, same broker, same run.

N JSON events ``{"user": "u01234", "amount": 4711, "ts": <epoch ms>}`` (100,000 users,
integer amounts 1..9999) in 8 partitions, keyed by user (partition = user number % 8),
spread evenly over 10 minutes of event time (starting about an hour before the run: see
``event_time_origin``), mostly in order: 10 % of the events are
delayed by 1 ms .. 3 s (not before the first minute), less than the 5 s watermark /
grace, so no event is late.
Both engines compute, per user and tumbling 1-minute event-time window (``ts``),
count + sum + max of ``amount``, emit each window once when it closes, and write
it with Kafka transactions (exactly once):

lockgate
    ``source(JSON, event_time="ts", watermark="5s", key="user") -> window(Tumbling("1m"), by="user",
    emit="final").agg(count, total, biggest) -> to_kafka(key=user) + to_table``,
    one transaction per micro-batch (``BatchPolicy(max_records=50_000, max_wait="100ms")``).
    The topic is keyed by user, as the source declares, so the window keeps its state per
    input partition (as Quix and Kafka Streams do); ``--whole-topic`` leaves ``key=`` out
    (one state for all partitions, the mode that needs every partition in one instance).
Quix Streams
    ``tumbling_window(1 min, grace 5 s).agg(Count(), Sum("amount"), Max("amount"))
    .final(closing_strategy="partition") -> to_topic``, ``processing_guarantee="exactly-once"``
    (one transaction per checkpoint, commit_interval 5 s), RocksDB state with changelog
    topics; event time from ``ts`` through a ``timestamp_extractor``.  Quix has no table
    sink: it writes only the topic (lockgate writes the topic and a LanceDB table).
    It runs in a subprocess (bench/_quix_windows.py) under its own interpreter, by
    default a venv under ~/.cache/lockgate-bench (created on first use): quixstreams
    pins ``confluent-kafka<2.13`` and would otherwise downgrade the client lockgate runs on.

Windows close when event time passes their end + 5 s, so at the end of the input the
last minute stays open in both: only the windows that closed are emitted.  The check
(not timed) compares what each engine committed with a Polars oracle of the closed
windows (lockgate: the ``read_committed`` output count and the committed table's
values; Quix: the values of its ``read_committed`` output).

Rates per run (records / seconds):

steady
    from the first record to the end (lockgate: ``seconds_from_first_record``; Quix:
    the first processed record to the return of ``app.run()``, last checkpoint committed).
wall
    including creating the clients and joining the group.

Runs are interleaved (q1 a1 l1 q2 a2 l2 ...).  Headline: the medians of 3 steady rates and their
ratio; targets: lockgate >= 10x Quix Streams and >= 500,000 records/s.

Baseline (a), measured in the same run because the shared machines vary from day to day
(the same code ran 403k records/s one day and 185k another): a bare confluent-kafka
``consume`` loop over the same input topic that touches every value and does nothing
else (``_common.bare_consume``, the client's floor).  ``lockgate / bare`` is the share of
the client's own speed that the whole pipeline keeps; it travels across machines where
the absolute rates do not.  If Quix on all N
records takes too long, ``--quix-records M`` runs it on M events from the same generator
(same users, same 10 minutes of event time) in their own topic; the JSON and the table say so.

Usage::

    python bench/windows.py [--brokers HOST:PORT] [--records 2000000] [--quix-records N] [--runs 3]
                            [--only quix|lockgate] [--out bench/results]

Without ``--brokers`` the local broker is started (``lockgate.engine.broker.start()``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from confluent_kafka.admin import AdminClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

import lockgate as lg

PARTITIONS = 8
KEYS = 100_000
SPAN_MS = 600_000  # 10 minutes of event time
WINDOW_MS = 60_000
WATERMARK_MS = 5_000
DELAYED_SHARE = 0.10
MAX_DELAY_MS = 3_000  # < WATERMARK_MS: no event is late
SEED = 20_251_125
TARGET_RATIO = 10.0
TARGET_RPS = 500_000
BATCH = lg.BatchPolicy(max_records=50_000, max_wait="100ms")
SCHEMA = {"user": pl.String, "amount": pl.Int64, "ts": pl.Datetime("ms")}
TABLE = "per_minute"
QUIX_WORKER = Path(__file__).resolve().parent / "_quix_windows.py"
QUIX_VENV = Path(os.environ.get("LOCKGATE_BENCH_QUIX_VENV", Path.home() / ".cache" / "lockgate-bench" / "quix-venv"))
QUIX_REQUIREMENT = "quixstreams>=3.0"


# ---------------------------------------------------------------- data and oracle


def event_time_origin() -> int:
    """The first minute of event time: a minute boundary about 1 h ago (epoch ms).

    Recent on purpose: Quix stamps each window result with its window start, and a
    topic's time retention (7 days by default) deletes segments whose newest timestamp
    is older, under the running benchmark (seen: the first minutes vanished mid-run).
    """
    return (int(time.time() * 1000) - 3_600_000) // WINDOW_MS * WINDOW_MS


def make_events(n: int, t0_ms: int, seed: int = SEED) -> pl.DataFrame:
    """``n`` events from ``t0_ms`` on: user (100,000 keys), amount, ts (epoch ms), partition (user number % 8), value."""
    rng = np.random.default_rng(seed)
    user_no = rng.integers(0, KEYS, n)
    amount = rng.integers(1, 10_000, n)
    base = t0_ms + (np.arange(n, dtype=np.int64) * SPAN_MS) // n
    delay = np.where(rng.random(n) < DELAYED_SHARE, rng.integers(1, MAX_DELAY_MS + 1, n), 0)
    df = pl.DataFrame({"user_no": user_no, "amount": amount, "ts": np.maximum(base - delay, t0_ms)})
    return df.with_columns(
        user=pl.format("u{}", pl.col("user_no").cast(pl.String).str.zfill(5)),
        partition=(pl.col("user_no") % PARTITIONS).cast(pl.Int32),
    ).with_columns(
        value=pl.concat_str(
            pl.lit('{"user":"'), pl.col("user"), pl.lit('","amount":'), pl.col("amount").cast(pl.String),
            pl.lit(',"ts":'), pl.col("ts").cast(pl.String), pl.lit("}"),
        )
    ).select("user", "amount", "ts", "partition", "value")


def oracle(events: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The windows that close by the end of the input, and how that was decided.

    Per partition, stream time = max event time; the watermark is the minimum over the
    partitions minus 5 s (lockgate).  Quix's "partition" closing uses each partition's own
    stream time; the data are made so that both give the same set: every partition's
    stream time lies well inside the last minute.
    """
    per_partition = events.group_by("partition").agg(pl.col("ts").max()).sort("partition")
    watermark = int(per_partition["ts"].min()) - WATERMARK_MS
    highest = int(per_partition["ts"].max()) - WATERMARK_MS
    windows = (
        events.with_columns(start=(pl.col("ts") // WINDOW_MS) * WINDOW_MS)
        .group_by("user", "start")
        .agg(count=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max())
        .with_columns(end=pl.col("start") + WINDOW_MS)
    )
    closed = windows.filter(pl.col("end") <= watermark)
    ambiguous = windows.filter((pl.col("end") > watermark - 1) & (pl.col("end") <= highest)).height
    info = {
        "windows_total": windows.height,
        "windows_closed": closed.height,
        "watermark_ms": watermark,
        "windows_closing_rule_dependent": ambiguous,  # 0: global-min watermark and per-partition stream time agree
        "minutes_closed": closed["start"].n_unique(),
    }
    return closed, info


def produce(brokers: str, topic: str, events: pl.DataFrame, compression: str) -> dict[str, Any]:
    """Create ``topic`` and write ``events`` to it, key = user, partition = user number % 8 (not timed)."""
    t0 = time.perf_counter()
    common.create_topic(brokers, topic, PARTITIONS)
    producer = ck.Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": compression,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "enable.idempotence": True,  # a retried request never lands after later ones (the oracle assumes write order)
            "acks": "all",
        }
    )
    errors: list[str] = []

    def on_delivery(err: ck.KafkaError | None, _msg: ck.Message) -> None:
        if err is not None:
            errors.append(err.str())

    nbytes = 0
    for i, (user, partition, value) in enumerate(events.select("user", "partition", "value").iter_rows()):
        v = value.encode()
        nbytes += len(v)
        common.produce_waiting(producer, topic, v, user.encode(), partition=partition, on_delivery=on_delivery)
        if i % 20_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or errors:
        raise RuntimeError(f"setup: {left} records not delivered, {len(errors)} errors (first: {errors[:1]})")
    return {"topic": topic, "records": events.height, "seconds": round(time.perf_counter() - t0, 2),
            "value_bytes_mean": round(nbytes / max(events.height, 1), 1)}


def read_committed(brokers: str, topic: str, *, timeout: float = 300.0) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every record of ``topic`` that a ``read_committed`` consumer sees (after the markers settled)."""
    return [(m.key(), m.value()) for m in common.committed_messages(brokers, topic, timeout=timeout)]


def compare(got: pl.DataFrame, expected: pl.DataFrame) -> dict[str, Any]:
    """``got`` and ``expected`` with columns user, start (epoch ms), count, total, biggest: equal as multisets?"""
    cols = ["user", "start", "count", "total", "biggest"]
    got = got.select(pl.col("user").cast(pl.String), *(pl.col(c).cast(pl.Int64) for c in cols[1:]))
    expected = expected.select(pl.col("user"), *(pl.col(c).cast(pl.Int64) for c in cols[1:]))
    duplicates = got.height - got.select("user", "start").n_unique()
    missing = expected.join(got, on=cols, how="anti").height
    unexpected = got.join(expected, on=cols, how="anti").height
    return {"rows": got.height, "expected": expected.height, "duplicates": duplicates, "missing": missing,
            "unexpected": unexpected, "ok": duplicates == 0 and missing == 0 and unexpected == 0}


def delete_topics_with(brokers: str, fragments: list[str]) -> None:
    """Delete every topic whose name contains one of ``fragments`` (outputs, DLQs, changelogs, repartitions)."""
    if not fragments:
        return
    names = AdminClient({"bootstrap.servers": brokers}).list_topics(timeout=30).topics
    common.delete_topics(brokers, [t for t in names if any(f in t for f in fragments)])


# ---------------------------------------------------------------- Quix Streams


def quix_python(explicit: str | None) -> str:
    """The interpreter that runs the Quix side: ``--quix-python``, else the bench venv (created if missing)."""
    if explicit:
        return explicit
    python = QUIX_VENV / "bin" / "python"
    probe = [str(python), "-c", "import quixstreams"]
    if not python.exists() or subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        print(f"# creating the Quix Streams venv {QUIX_VENV} (pip install '{QUIX_REQUIREMENT}')", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", QUIX_REQUIREMENT], check=True)
    return str(python)


def run_quix(python: str, brokers: str, topic: str, records: int, run: int, tag: str, state_root: Path,
             closing: str, timeout: float) -> dict[str, Any]:
    """One fresh Quix app (fresh group, output topic, state dir, changelogs) over ``topic``, in a subprocess."""
    group = f"bench-windows-quix-{tag}-r{run}"
    out_topic = f"{group}-out"
    common.create_topic(brokers, out_topic, PARTITIONS)
    state_dir = state_root / f"quix-r{run}"
    cmd = [python, str(QUIX_WORKER), "--brokers", brokers, "--input", topic, "--output", out_topic, "--group", group,
           "--state-dir", str(state_dir), "--records", str(records), "--closing", closing,
           "--grace-ms", str(WATERMARK_MS), "--timeout", str(timeout)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout + 120, check=False)
    process_seconds = time.perf_counter() - t0
    noise = ("AuthlibDeprecationWarning", "from ._compat import httpx2")  # authlib's notice on import, not Quix's
    for line in proc.stderr.splitlines():
        if line.strip() and not any(n in line for n in noise):
            print(f"# quix: {line}", file=sys.stderr)
    shutil.rmtree(state_dir, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or "error" in result or not result:
        raise RuntimeError(f"Quix run {run} failed (exit {proc.returncode}): {result or proc.stdout[-2000:]}")
    return {"run": run, "group": group, "output_topic": out_topic, **result,
            "process_seconds": round(process_seconds, 3)}


def check_quix(brokers: str, out_topic: str, expected: pl.DataFrame) -> dict[str, Any]:
    rows = read_committed(brokers, out_topic)
    if rows:
        values = pl.read_ndjson(b"\n".join(v for _, v in rows))
        got = values.with_columns(user=pl.Series([k.decode() if k else None for k, _ in rows], dtype=pl.String))
    else:
        got = pl.DataFrame(schema={"user": pl.String, "start": pl.Int64, "count": pl.Int64, "total": pl.Int64, "biggest": pl.Int64})
    return {"engine": "quix", "read_committed": len(rows), **compare(got, expected)}


# ---------------------------------------------------------------- lockgate


def build_pipeline(
    name: str, brokers: str, state: str, topic: str, out_topic: str, per_partition: bool = True, repartition: bool = False
) -> lg.Pipeline:
    """source JSON -> tumbling 1-minute windows per user, final -> count, sum, max -> to_kafka + to_table."""
    pipe = lg.Pipeline(name, brokers=brokers, state=state, batch=BATCH)
    ev = pipe.source(
        topic, format=lg.JSON(schema=SCHEMA), event_time="ts", watermark=f"{WATERMARK_MS // 1000}s",
        key="user" if per_partition else None,
    )
    # repartition= only when asked: an A/B base from before it existed (bench/ab_windows.py) runs the same keyed pipeline
    w = ev.window(lg.Tumbling("1m"), by="user", emit="final", **({"repartition": True} if repartition else {})).agg(
        count=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max()
    )
    w.to_kafka(out_topic, key="user")
    w.to_table(TABLE)
    return pipe


def run_lockgate(
    brokers: str, topic: str, records: int, run: int, tag: str, state_root: Path, timeout: float, per_partition: bool = True
) -> dict[str, Any]:
    """A fresh pipeline (fresh group, output topic and state) runs until caught up."""
    name = f"bench-windows-lg-{tag}-r{run}"
    out_topic = f"{name}-out"
    state = state_root / f"lg-r{run}"
    pipe = build_pipeline(name, brokers, str(state), topic, out_topic, per_partition)
    timings, metrics = common.timed_run(pipe, records, run, timeout)
    return {
        **timings,
        "output_topic": out_topic,
        "state": str(state),
        "records_out": metrics.get("records_out", {}).get(out_topic, 0),
        "table_rows": metrics.get("table_rows", {}).get(TABLE),
        "late": metrics.get("late"),
        "dead_letters": sum(metrics.get("dlq", {}).values()),
    }


def check_lockgate(brokers: str, result: dict[str, Any], expected: pl.DataFrame) -> dict[str, Any]:
    seen = common.count_committed(brokers, result["output_topic"])  # waits for the commit markers first
    table = lg.read_table(result["state"], TABLE).collect()
    start = pl.col("window_start")
    got = table.select(
        "user",
        start=start.dt.epoch("ms") if table.schema["window_start"].is_temporal() else start,
        count="count", total="total", biggest="biggest",
    )
    cmp = compare(got, expected)
    ok = cmp["ok"] and seen == expected.height and result["dead_letters"] == 0
    return {"engine": "lockgate", "read_committed": seen, "table": cmp, "ok": ok}


# ---------------------------------------------------------------- main


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    return common.median([r[key] for r in runs]) if runs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", help="Kafka bootstrap servers (default: start the local broker)")
    parser.add_argument("--records", type=int, default=2_000_000, help="events for lockgate (and for Quix, see --quix-records)")
    parser.add_argument("--quix-records", type=int, help="events for Quix Streams (default: --records); fewer -> own topic")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["quix", "lockgate"], help="run one engine only")
    parser.add_argument("--out", default="bench/results", help="directory for the JSON result")
    parser.add_argument("--compression", default="lz4", choices=["none", "lz4", "snappy", "zstd", "gzip"],
                        help="compression of the input topic")
    parser.add_argument("--quix-python", help=f"interpreter with quixstreams (default: the venv {QUIX_VENV}, made on first use)")
    parser.add_argument("--quix-closing", default="partition", choices=["partition", "key"],
                        help="Quix window closing strategy; 'partition' (stream time per partition) matches a watermark")
    parser.add_argument("--check-all", action="store_true", help="check the output of every run, not only the first")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the benchmark's topics at the end")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one run may take")
    parser.add_argument("--whole-topic", action="store_true",
                        help="lockgate source without key='user': one window state for all partitions")
    args = parser.parse_args(argv)

    do_quix = args.only in (None, "quix")
    do_lg = args.only in (None, "lockgate")
    quix_records = args.quix_records or args.records
    python = quix_python(args.quix_python) if do_quix else None

    brokers = common.resolve_brokers(args.brokers)
    tag = f"{common.stamp().lower()}-{uuid.uuid4().hex[:4]}"
    topic = f"bench-windows-in-{tag}"
    quix_topic = topic if quix_records == args.records else f"bench-windows-in-q-{tag}"
    fragments = [topic, quix_topic, f"bench-windows-quix-{tag}", f"bench-windows-lg-{tag}"]
    state_root = Path(tempfile.mkdtemp(prefix="lockgate-bench-windows-"))
    print(f"# brokers {brokers}; input {topic}: {args.records:,} events, {KEYS:,} keys, {PARTITIONS} partitions, "
          f"{SPAN_MS // 60_000} min of event time, compression {args.compression}", file=sys.stderr)

    inputs: dict[str, Any] = {}
    oracles: dict[str, Any] = {}
    quix_runs: list[dict[str, Any]] = []
    lg_runs: list[dict[str, Any]] = []
    bare_runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    try:
        t0_ms = event_time_origin()
        inputs["event_time_origin_ms"] = t0_ms
        events = make_events(args.records, t0_ms)
        expected, oracles["lockgate"] = oracle(events)
        if do_lg or quix_topic == topic:
            inputs["main"] = produce(brokers, topic, events, args.compression)
            print(f"# setup: {inputs['main']}; oracle: {oracles['lockgate']}", file=sys.stderr)
        if do_quix and quix_topic != topic:
            q_events = make_events(quix_records, t0_ms)
            q_expected, oracles["quix"] = oracle(q_events)
            inputs["quix"] = produce(brokers, quix_topic, q_events, args.compression)
            print(f"# setup (Quix): {inputs['quix']}; oracle: {oracles['quix']}", file=sys.stderr)
            del q_events
        else:
            q_expected, oracles["quix"] = expected, oracles["lockgate"]
        del events

        for run in range(1, args.runs + 1):
            check_this = run == 1 or args.check_all
            if do_quix:
                assert python is not None
                q = run_quix(python, brokers, quix_topic, quix_records, run, tag, state_root, args.quix_closing, args.timeout)
                quix_runs.append(q)
                print(f"# q{run} Quix Streams {q['quixstreams']}: {_rate(q['steady_rps'])} rec/s steady, "
                      f"{_rate(q['wall_rps'])} rec/s wall ({q['steady_seconds']}s + join {q['join_seconds']}s)", file=sys.stderr)
                if check_this:
                    c = check_quix(brokers, q["output_topic"], q_expected)
                    checks.append({"run": run, **c})
                    print(f"# check q{run}: {c}", file=sys.stderr)
            if do_lg:
                a = common.isolated(common.bare_consume, brokers, topic, args.records, run, args.timeout)
                bare_runs.append(a)
                print(f"# a{run} bare consume: {_rate(a['steady_rps'])} rec/s steady", file=sys.stderr)
                b = common.isolated(run_lockgate, brokers, topic, args.records, run, tag, state_root, args.timeout, not args.whole_topic)
                lg_runs.append(b)
                print(f"# l{run} lockgate: {_rate(b['steady_rps'])} rec/s steady, {_rate(b['wall_rps'])} rec/s wall "
                      f"({b['steady_seconds']}s + join {b['join_seconds']}s, {b['batches']} batches, "
                      f"{b['records_out']:,} out)", file=sys.stderr)
                if check_this:
                    c = check_lockgate(brokers, b, expected)
                    checks.append({"run": run, **c})
                    print(f"# check l{run}: {c}", file=sys.stderr)
                shutil.rmtree(b["state"], ignore_errors=True)
    finally:
        if not args.keep_topics:
            delete_topics_with(brokers, fragments)
        shutil.rmtree(state_root, ignore_errors=True)

    q_steady, q_wall = _median(quix_runs, "steady_rps"), _median(quix_runs, "wall_rps")
    l_steady, l_wall = _median(lg_runs, "steady_rps"), _median(lg_runs, "wall_rps")
    a_steady = _median(bare_runs, "steady_rps")
    ratio = l_steady / q_steady if q_steady and l_steady else None
    of_bare = l_steady / a_steady if a_steady and l_steady else None
    ratio_wall = l_wall / q_wall if q_wall and l_wall else None
    quix_note = "" if quix_records == args.records else f" (Quix on {quix_records:,} events)"
    result = {
        "benchmark": "windows",
        "records": args.records,
        "quix_records": quix_records if do_quix else None,
        "quix_on_fewer_records": do_quix and quix_records != args.records,
        "keys": KEYS,
        "partitions": PARTITIONS,
        "event_time_span_ms": SPAN_MS,
        "disorder": {"delayed_share": DELAYED_SHARE, "max_delay_ms": MAX_DELAY_MS, "watermark_or_grace_ms": WATERMARK_MS},
        "runs": args.runs,
        "only": args.only,
        "input": {"compression": args.compression, **inputs},
        "oracle": oracles,
        "pipeline": {
            "lockgate": "source JSON(user, amount: Int64, ts: Datetime(ms)), event_time=ts, watermark 5s, "
                        f"{'one state for all partitions' if args.whole_topic else 'key=user (state per partition)'} -> "
                        "window(Tumbling 1m, by user, emit final).agg(count=len, total=sum(amount), biggest=max(amount)) "
                        "-> to_kafka(key=user, JSON) + to_table(per_minute); one Kafka transaction per micro-batch",
            "quix": "app.topic(JSON, timestamp_extractor=value['ts']) -> tumbling_window(1 min, grace 5 s)"
                    ".agg(count=Count(), total=Sum('amount'), biggest=Max('amount')).final(closing_strategy="
                    f"'{args.quix_closing}') -> to_topic(JSON); processing_guarantee='exactly-once' (transaction per "
                    "5 s checkpoint), RocksDB state + changelog topics; no table sink in Quix (topic only)",
        },
        "batch_policy": {"max_records": BATCH.max_records, "max_wait_s": BATCH.max_wait_s},
        "brokers": brokers,
        "machine": common.machine(),
        "lockgate_client": {"confluent_kafka": ck.__version__, "librdkafka": ck.libversion()[0]},
        "quix": {"python": python, "steady_rps_median": q_steady, "wall_rps_median": q_wall, "per_run": quix_runs},
        "lockgate": {"steady_rps_median": l_steady, "wall_rps_median": l_wall, "per_run": lg_runs},
        "bare_consume": {"steady_rps_median": a_steady, "per_run": bare_runs,
                         "what": "consume + len(value) per record over the same input topic, nothing else (the client floor)"},
        "lockgate_of_bare": None if of_bare is None else round(of_bare, 3),
        "ratio": None if ratio is None else round(ratio, 2),
        "ratio_wall": None if ratio_wall is None else round(ratio_wall, 2),
        "target": {"ratio": TARGET_RATIO, "lockgate_rps": TARGET_RPS},
        "meets_target": {
            "ratio": None if ratio is None else ratio >= TARGET_RATIO,
            "lockgate_rps": None if l_steady is None else l_steady >= TARGET_RPS,
        },
        "checks": checks,
    }
    path = common.write_json(args.out, "windows", result)
    print(json.dumps(result, indent=2))
    print()

    def verdict() -> str:
        parts = []
        if ratio is not None:
            parts.append(f">= {TARGET_RATIO:g}x {'met' if ratio >= TARGET_RATIO else 'NOT met'}")
        if l_steady is not None:
            parts.append(f">= {TARGET_RPS:,} rec/s {'met' if l_steady >= TARGET_RPS else 'NOT met'}")
        return "; ".join(parts) or f">= {TARGET_RATIO:g}x, >= {TARGET_RPS:,} rec/s"

    print(common.markdown_table(
        ["benchmark", "records", "Quix rec/s", "lockgate rec/s", "ratio", "target"],
        [
            [f"windows (steady, median of {args.runs}){quix_note}", f"{args.records:,}", _rate(q_steady), _rate(l_steady),
             "-" if ratio is None else f"{ratio:.1f}x", verdict()],
            [f"windows (incl. group join){quix_note}", f"{args.records:,}", _rate(q_wall), _rate(l_wall),
             "-" if ratio_wall is None else f"{ratio_wall:.1f}x", "-"],
            *([[f"(a) bare consume of the same topic, median of {len(bare_runs)}", f"{args.records:,}", "-", _rate(a_steady),
                "-" if of_bare is None else f"lockgate / bare = {of_bare:.2f}", "baseline, same run"]] if bare_runs else []),
        ],
    ))
    print(f"\n# written to {path}", file=sys.stderr)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
