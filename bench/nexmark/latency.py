"""Nexmark latency at a fixed rate, exactly once: each query's p50/p99 on lockgate and on Flink, same broker, same run.

Per query and engine, on fresh topics: the engine starts (lockgate in a Python process of
its own, default ``BatchPolicy``; Flink 2.2 in its own JVM, unbounded Kafka sources,
exactly-once sink, a checkpoint, hence a sink commit, every ``--cadence-ms``, 100 ms as
lockgate's ``max_wait``), a read_committed reader reads the output topic in a process of
its own (``bench/latency.py``'s reader: each record's wall-clock receive time), and this
process writes Nexmark events (``bench/nexmark/generator.py``, ``--rate`` events/s, the
1:3:46 mix) paced in 10 ms slices, each event when its ``date_time`` comes: event time
is the wall clock at which the event is due.

A result's *due* time is when its input was complete, in event time, so in wall time:

- q0, q1: the bid's ``date_time`` (q2's output has no time of its bid: it is not measured);
- q3: the later of the auction's and its seller's ``date_time`` (the pair exists then);
- q5, q7, q11: the window's end (q5's hop window, whose top comes out at the next
  watermark step on both engines); q8: the window's start + 10 s.

q4 is not measured: the engines' outputs differ in form (Flink runs the suite's running
average, updated by every bid; lockgate's q4 averages closed auctions per window).

Latency is receive time minus due time.  The figures are of the results due from
``--warmup`` seconds after the load's start (JVM compilation, group joins) to
``--tail`` seconds before its end (a window due near the end waits for a watermark that
the last events may not bring).  The table gives p50, p99 and max per query and engine
and the ratio of the p99s (lockgate / Flink: below 1, lockgate is faster).

Usage::

    python bench/nexmark/latency.py [--brokers HOST:PORT] [--queries q0,q3,q5,q7,q8] [--engines lockgate,flink]
                                    [--rate 10000] [--seconds 40] [--warmup 15] [--runs 1] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import confluent_kafka as ck  # noqa: E402

from bench import _common as common  # noqa: E402
from bench.latency import _read  # noqa: E402
from bench.nexmark.generator import Events, generate  # noqa: E402
from bench.nexmark.queries import QUERIES, READS, WINDOW_MS  # noqa: E402
from bench.nexmark.run import FLINK_JAR, build_flink  # noqa: E402

PARTITIONS = 8
#: q2's output has no time of its bid; q4's differs in form between the engines (see above)
UNMEASURED = ("q2", "q4")
SLICE_S = 0.010
QUANTILES = {"p50": 0.5, "p99": 0.99}

LOCKGATE = """
import json, os, signal, sys
sys.path.insert(0, os.environ["B_ROOT"])
import lockgate as lg
from bench.nexmark.queries import QUERIES
pipe = lg.Pipeline(os.environ["B_NAME"], brokers=os.environ["B_BROKERS"], state=os.environ["B_STATE"], batch=lg.BatchPolicy())
QUERIES[os.environ["B_QUERY"]](pipe, json.loads(os.environ["B_TOPICS"]), rate=int(os.environ["B_RATE"]))
signal.signal(signal.SIGTERM, lambda *_: pipe.stop())
summary = pipe.run(progress=False)
print(json.dumps({"records": summary.records, "batches": summary.batches}), flush=True)
"""


def _start(engine: str, brokers: str, query: str, topics: dict[str, str], name: str, rate: int, cadence_ms: int, work: Path) -> subprocess.Popen:
    log = open(work / f"{engine}.log", "wb")  # noqa: SIM115 - closed with the process
    if engine == "flink":
        cmd = ["java", "-jar", str(FLINK_JAR), "--brokers", brokers, "--bids", topics["bid"], "--persons", topics["person"],
               "--auctions", topics["auction"], "--query", query, "--out", f"{name}-out", "--group", name, "--bounded", "false",
               "--checkpoint-ms", str(cadence_ms)]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
    env = {**os.environ, "B_ROOT": str(Path(__file__).resolve().parents[2]), "B_NAME": name, "B_BROKERS": brokers,
           "B_STATE": str(work / "state"), "B_QUERY": query, "B_TOPICS": json.dumps(topics), "B_RATE": str(rate)}
    return subprocess.Popen([sys.executable, "-c", LOCKGATE], env=env, stdout=subprocess.PIPE, stderr=log)


def _stop(proc: subprocess.Popen, engine: str, work: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    if proc.returncode not in (0, -signal.SIGTERM, 143, -signal.SIGKILL):
        raise RuntimeError(f"{engine} exited with {proc.returncode}:\n{(work / f'{engine}.log').read_text(errors='replace')[-3000:]}")


def _produce_paced(brokers: str, topics: dict[str, str], events: Events) -> float:
    """Every event when its ``date_time`` comes (10 ms slices), to its kind's topic and partition; the longest pause between slices (s)."""
    frames = {"person": (events.persons, "id"), "auction": (events.auctions, "id"), "bid": (events.bids, "auction")}
    order = pl.concat([
        frame.select(pl.lit(kind).alias("kind"), pl.col(key).alias("key"), "date_time", pl.int_range(pl.len()).alias("row"))
        for kind, (frame, key) in frames.items()
    ]).sort("date_time", maintain_order=True)
    values = {kind: frame.write_ndjson().encode().splitlines() for kind, (frame, _) in frames.items()}
    kinds, keys, due, rows = (order[c].to_numpy() for c in ("kind", "key", "date_time", "row"))
    producer = ck.Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "linger.ms": 1,
                            "queue.buffering.max.messages": 1_000_000})
    sent, held, last = 0, 0.0, time.time()
    while sent < len(due):
        now = time.time()
        held, last = max(held, now - last), now
        upto = int(np.searchsorted(due, now * 1000, side="right"))
        for i in range(sent, upto):  # the producer side of the bench: the events due in this slice
            kind, key = kinds[i], int(keys[i])
            common.produce_waiting(producer, topics[kind], values[kind][rows[i]], str(key).encode(), partition=key % PARTITIONS)
        sent = upto
        producer.poll(0)
        if sent < len(due):
            time.sleep(max(0.0, min(SLICE_S, due[sent] / 1000 - time.time())))
    producer.flush(60)
    return held


def _epoch_ms(frame: pl.DataFrame, column: str) -> pl.Series:
    """A time column as written by either engine (lockgate: ISO text; Flink: epoch ms) as Int64 epoch ms."""
    values = frame[column]
    if values.dtype == pl.String:
        return values.str.to_datetime(time_unit="ms").dt.epoch("ms")
    return values.cast(pl.Int64)


def due_ms(query: str, out: pl.DataFrame, events: Events) -> pl.Series:
    """When each output row's input was complete (epoch ms of event time, which is the produce wall clock here)."""
    if query in ("q0", "q1"):
        return _epoch_ms(out, "date_time")
    if query == "q3":
        sellers = events.auctions.join(events.persons, left_on="seller", right_on="id", suffix="_person")
        ready = sellers.select("id", due=pl.max_horizontal("date_time", "date_time_person"))
        return out.select("id").join(ready, on="id", how="left", maintain_order="left")["due"]
    if query in ("q5", "q7", "q11"):
        return _epoch_ms(out, "window_end")
    if query == "q8":
        return _epoch_ms(out, "starttime") + WINDOW_MS
    raise KeyError(query)


def run_once(engine: str, brokers: str, query: str, args: argparse.Namespace, run: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    name = f"nexlat-{tag}-{engine}-{query}"
    topics = {kind: f"{name}-{kind}" for kind in ("person", "auction", "bid")}
    for topic in [*topics.values(), f"{name}-out"]:
        common.create_topic(brokers, topic, PARTITIONS)
    work = Path(tempfile.mkdtemp(prefix="lockgate-nexlat-"))
    ctx = mp.get_context("spawn")
    stop, seen, waited = ctx.Event(), ctx.Value("q", 0), ctx.Value("d", 0.0)
    out_path = str(work / "out.ndjson")
    reader = ctx.Process(target=_read, args=(brokers, f"{name}-out", out_path, stop, seen, waited, PARTITIONS))
    reader.start()
    proc = _start(engine, brokers, query, topics, name, args.rate, args.cadence_ms, work)
    try:
        time.sleep(2.0)
        start_ms = int(time.time() * 1000) + 1_000
        events = generate(int(args.rate * args.seconds), seed=run, rate=args.rate, base_time_ms=start_ms)
        held = _produce_paced(brokers, topics, events)
        time.sleep(args.drain)
    finally:
        stop.set()
        reader.join(120)
        _stop(proc, engine, work)
        common.delete_topics(brokers, [*topics.values(), f"{name}-out"])
    raw = Path(out_path).read_bytes()
    if not raw.strip():
        raise RuntimeError(f"{engine} {query}: no output in {args.seconds} s")
    out = pl.read_ndjson(raw)
    recv = np.load(out_path + ".recv.npy")
    latency = pl.DataFrame({"due": due_ms(query, out, events), "recv": recv})
    lo, hi = start_ms + args.warmup * 1000, start_ms + (args.seconds - args.tail) * 1000
    measured = latency.filter((pl.col("due") >= lo) & (pl.col("due") <= hi)).select((pl.col("recv") - pl.col("due")).alias("ms"))["ms"]
    figures = {q: round(float(measured.quantile(f, "nearest")), 1) for q, f in QUANTILES.items()} if measured.len() else {}
    return {"engine": engine, "query": query, "run": run, "outputs": out.height, "measured": measured.len(),
            **figures, "max": round(float(measured.max()), 1) if measured.len() else None,  # type: ignore[arg-type]
            "producer_held_ms": round(held * 1000), "load": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers")
    parser.add_argument("--queries", default=",".join(q for q in QUERIES if q not in UNMEASURED))
    parser.add_argument("--engines", default="lockgate,flink")
    parser.add_argument("--rate", type=int, default=10_000, help="events per second (wall clock and event time)")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--tail", type=float, default=12, help="seconds at the end whose results are not measured")
    parser.add_argument("--drain", type=float, default=5, help="seconds to read on after the load")
    parser.add_argument("--cadence-ms", type=int, default=100, help="Flink's checkpoint (sink commit) interval")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    brokers = common.resolve_brokers(args.brokers)
    queries, engines = args.queries.split(","), args.engines.split(",")
    unknown = [q for q in queries if q not in READS or q in UNMEASURED]
    if unknown:
        parser.error(f"{unknown}: not measured; the queries are {sorted(q for q in READS if q not in UNMEASURED)}")
    if "flink" in engines:
        build_flink()
    runs = []
    for run in range(1, args.runs + 1):
        for query in queries:
            for engine in engines:
                r = run_once(engine, brokers, query, args, run)
                runs.append(r)
                print(f"# {json.dumps(r)}", file=sys.stderr)
    summary: dict[tuple[str, str], dict[str, float | None]] = {}
    for engine in engines:
        for query in queries:
            mine = [r for r in runs if r["engine"] == engine and r["query"] == query and "p99" in r]
            summary[(engine, query)] = {k: common.median([r[k] for r in mine]) if mine else None for k in ("p50", "p99", "max")}
    result = {"benchmark": "nexmark-latency", "rate": args.rate, "seconds": args.seconds, "warmup": args.warmup, "tail": args.tail,
              "cadence_ms": args.cadence_ms, "runs": runs, "machine": common.machine(),
              "median": {f"{e}-{q}": v for (e, q), v in summary.items()}}
    path = common.write_json(args.out, "nexmark_latency", result)
    columns = ["query", *[f"{e} {k} ms" for e in engines for k in ("p50", "p99", "max")]]
    if set(engines) >= {"lockgate", "flink"}:
        columns.append("p99 lockgate / flink")
    rows = []
    for q in queries:
        row: list[Any] = [q]
        for e in engines:
            row += [summary[(e, q)][k] for k in ("p50", "p99", "max")]
        if set(engines) >= {"lockgate", "flink"}:
            a, b = summary[("lockgate", q)]["p99"], summary[("flink", q)]["p99"]
            row.append(f"{a / b:.2f}" if a is not None and b else "-")
        rows.append(row)
    print(common.markdown_table(columns, rows))
    print(f"\n# written to {path}")


if __name__ == "__main__":
    main()
