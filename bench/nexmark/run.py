"""Nexmark from Kafka, exactly once: each query's throughput on lockgate, checked against its oracle.

One input (``bench/nexmark/produce.py``'s three topics), then for each query and run a
fresh pipeline (group, output topic, state) reads the topics the query needs until caught
up; the first run of each query is checked: the committed output topic equals the Polars
oracle of ``bench/nexmark/queries.py``.  Rates are events of the topics the query reads
(bids; persons and auctions for q3 and q8; bids and auctions for q4) per second, ``steady`` from the first record read to the end, ``wall`` with the group
join; lockgate runs one process (one core of the machine's two for the operators, the
other for librdkafka's threads and Lance's), so events/s per core is the rate over 1.

With ``--engines lockgate,flink`` the Flink peer (``bench/peers/flink``: Flink 2.2 SQL in
local mode, parallelism 1, exactly-once Kafka sink, checkpoints every second; built with
``mvn -q package`` on the first run) runs the same queries on the same topic, one after
the other; its ``job`` rate is from the job's own start to its end (no JVM start, no SQL
planning), its ``wall`` rate includes them.  Events per CPU-second divide the events by the
CPU time (user + system, every thread) of the whole run: for lockgate this process's during
the run (clients, group join, librdkafka's and Lance's threads), for Flink the JVM's from
its start to its exit (JIT, SQL planning and the local cluster's start included, which
weighs on small inputs).  So each engine also runs each query once over empty topics (the
same three, made empty): that run's CPU is the engine's fixed cost (interpreter or JVM
start, planning, group join, first checkpoint), and "net" events per CPU-second divide by
a run's CPU less it: the cost of the events themselves, per core.  Flink closes every window at the end of its
bounded input; its check keeps the windows the last watermark closed, as the oracle does.
For q4 Flink runs the suite's SQL (an unbounded join and a running average per category,
written as a changelog to an upsert topic) and is checked against that query's end state
(``queries.running_q4``); lockgate's q4 closes each auction at its end and averages per 10 s
window, as the original Nexmark q4 does: the same join and aggregates, not the same rows.

Usage::

    python bench/nexmark/run.py [--brokers HOST:PORT] [--events 1000000] [--runs 3] [--queries q0,q1,q2,q3,q4,q5,q7,q8,q11]
                                [--engines lockgate,flink] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lockgate as lg  # noqa: E402
from bench import _common as common  # noqa: E402
from bench.nexmark.generator import generate  # noqa: E402
from bench.nexmark.produce import write  # noqa: E402
from bench.nexmark.queries import QUERIES, READS, TOP_WINDOW_MS, WINDOW_MS, canonical, last_watermark, oracle, running_q4  # noqa: E402

FLINK_DIR = Path(__file__).resolve().parents[1] / "peers" / "flink"
FLINK_JAR = FLINK_DIR / "target" / "flink-nexmark.jar"

BATCH = lg.BatchPolicy(max_records=50_000, max_wait="100ms")


def _cpu(who: int) -> float:
    """User + system CPU seconds of this process (``RUSAGE_SELF``: every thread) or of its waited-for children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_lockgate(brokers: str, topics: dict[str, str], query: str, records: int, tag: str, run: int, state_root: Path) -> dict[str, Any]:
    """One fresh pipeline of ``query`` until caught up; its timings (``records``: the events of the topics it reads; 0: the empty baseline)."""
    name = f"nexmark-{tag}-{query}-r{run}"
    pipe = lg.Pipeline(name, brokers=brokers, state=str(state_root / name), batch=BATCH)
    QUERIES[query](pipe, topics)
    cpu = _cpu(resource.RUSAGE_SELF)
    if records == 0:
        started = time.perf_counter()
        pipe.run(until="caught_up", timeout=600, progress=False)
        seconds = time.perf_counter() - started
        return {"run": run, "pipeline": name, "records": 0, "wall_seconds": round(seconds, 3), "cpu_seconds": round(_cpu(resource.RUSAGE_SELF) - cpu, 2),
                "output_topic": f"{name}-out"}
    timings, metrics = common.timed_run(pipe, records, run, timeout=1800)
    cpu = _cpu(resource.RUSAGE_SELF) - cpu
    return {**timings, "cpu_seconds": round(cpu, 2), "events_per_cpu_s": round(records / cpu), "output_topic": f"{name}-out", "records_out": metrics.get("records_out", {}).get(f"{name}-out", 0)}


def build_flink() -> Path:
    """``mvn -q package`` in bench/peers/flink when the jar is missing or older than its sources; the jar."""
    sources = [p for p in FLINK_DIR.rglob("*") if p.is_file() and "target" not in p.parts]
    if not FLINK_JAR.exists() or max(p.stat().st_mtime for p in sources) > FLINK_JAR.stat().st_mtime:
        print("# building bench/peers/flink (mvn -q package)", file=sys.stderr)
        subprocess.run(["mvn", "-q", "package", "-DskipTests"], cwd=FLINK_DIR, check=True)
    return FLINK_JAR


def run_flink(brokers: str, topics: dict[str, str], query: str, records: int, tag: str, run: int) -> dict[str, Any]:
    """The Flink peer's job for ``query`` over its topics (one JVM, parallelism 1); its timings."""
    name = f"nexmark-{tag}-flink-{query}-r{run}"
    common.create_topic(brokers, f"{name}-out", 8)
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        ["java", "-jar", str(FLINK_JAR), "--brokers", brokers, "--bids", topics["bid"], "--persons", topics["person"],
         "--auctions", topics["auction"], "--query", query, "--out", f"{name}-out", "--group", name],
        capture_output=True, text=True, timeout=1800, check=False,
    )
    cpu = _cpu(resource.RUSAGE_CHILDREN) - cpu
    if done.returncode != 0:
        raise RuntimeError(f"flink {query}: exit {done.returncode}: {done.stderr[-3000:]}")
    timings = json.loads(done.stdout.strip().splitlines()[-1])
    if timings.get("records_in") not in (records, -1):
        raise RuntimeError(f"flink {query}: read {timings.get('records_in')} of {records} events")
    out = {"run": run, "pipeline": name, "output_topic": f"{name}-out", "records": records, "wall_seconds": timings["seconds"],
           "job_seconds": timings.get("job_seconds"), "cpu_seconds": round(cpu, 2)}
    if records:
        out |= {"wall_rps": round(records / timings["seconds"]), "steady_rps": round(records / (timings.get("job_seconds") or timings["seconds"])),
                "events_per_cpu_s": round(records / cpu)}
    return out


def _flink_rows(query: str, got: pl.DataFrame, watermark_ms: int) -> pl.DataFrame:
    """Flink's output in the oracle's shape: windows (epoch ms bounds) the last watermark closed; q7's bids per window as lists.

    Flink closes every window at the end of its bounded input; lockgate's windows close
    at the last watermark: q5's once the 1 ms window over the counts has closed too.
    """
    if query == "q8":
        return got.filter(pl.col("starttime") + WINDOW_MS <= watermark_ms).with_columns(pl.col("starttime").cast(pl.Datetime("ms")))
    if query not in ("q5", "q7", "q11"):
        return got
    got = got.filter(pl.col("window_end") + (TOP_WINDOW_MS if query == "q5" else 0) <= watermark_ms)
    if query == "q7":
        got = got.group_by("window_start", "window_end", "price").agg(pl.col("auction"), pl.col("bidder"))
    return got.with_columns(pl.col("window_start", "window_end").cast(pl.Datetime("ms")))


def check(brokers: str, query: str, output_topic: str, expected: pl.DataFrame, flink_watermark_ms: int | None = None) -> dict[str, Any]:
    """The committed output topic against the oracle (as multisets of rows)."""
    messages = list(common.committed_messages(brokers, output_topic))
    values = [m.value() for m in messages if m.value() is not None]
    got = pl.read_ndjson(b"\n".join(values)) if values else pl.DataFrame(schema=expected.schema)
    if flink_watermark_ms is not None and query == "q4":  # an upsert topic: each category's last value (one key, one partition)
        order = [(m.partition(), m.offset()) for m in messages if m.value() is not None]
        got = got.with_columns(pl.Series("__order", order, dtype=pl.List(pl.Int64))).sort("__order").group_by("category").last().drop("__order")
    elif flink_watermark_ms is not None:
        got = _flink_rows(query, got, flink_watermark_ms)
    got = got.select(
        pl.col(c).str.to_datetime(time_unit="ms") if t == pl.Datetime("ms") and got.schema[c] == pl.String else pl.col(c).cast(t)
        for c, t in expected.schema.items()
    )

    same = got.height == expected.height and canonical(got).equals(canonical(expected))
    return {"query": query, "rows": got.height, "expected": expected.height, "ok": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queries", default=",".join(QUERIES))
    parser.add_argument("--engines", default="lockgate", help="lockgate, flink or both (comma-separated)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    brokers = common.resolve_brokers(args.brokers)
    queries, engines = args.queries.split(","), args.engines.split(",")
    if "flink" in engines:
        build_flink()
    tag = uuid.uuid4().hex[:8]
    events = generate(args.events, seed=1, rate=10_000)
    produced = write(brokers, events, f"nexmark-{tag}")
    topics, bids = produced["topics"], events.bids.height
    counts = {"bid": bids, "person": events.persons.height, "auction": events.auctions.height}
    records = {q: sum(counts[k] for k in READS[q]) for q in queries}
    print(f"# {produced}", file=sys.stderr)
    state_root = Path(tempfile.mkdtemp(prefix="lockgate-bench-nexmark-"))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(e, q): [] for e in engines for q in queries}
    checks = []
    empty = {kind: f"nexmark-{tag}-empty-{kind}" for kind in topics}
    baseline: dict[tuple[str, str], float] = {}
    try:
        for topic in empty.values():
            common.create_topic(brokers, topic, produced["partitions"])
        for query in queries:  # each engine's fixed cost: the same query over empty topics
            for engine in engines:
                if engine == "flink":
                    r = run_flink(brokers, empty, query, 0, f"{tag}-empty", 0)
                else:
                    r = run_lockgate(brokers, empty, query, 0, f"{tag}-empty", 0, state_root)
                baseline[(engine, query)] = r["cpu_seconds"]
                print(f"# {engine} {query} over empty topics: {r['cpu_seconds']} CPU-s, {r['wall_seconds']} s", file=sys.stderr)
        for run in range(1, args.runs + 1):
            for query in queries:  # interleaved: q0 on each engine, q1, ... then again
                for engine in engines:
                    if engine == "flink":
                        r = run_flink(brokers, topics, query, records[query], tag, run)
                    else:
                        r = run_lockgate(brokers, topics, query, records[query], tag, run, state_root)
                    runs[(engine, query)].append(r)
                    print(f"# {engine} {query} run {run}: {r['steady_rps']:,} events/s steady, {r['wall_rps']:,} wall", file=sys.stderr)
                    if run == 1:
                        # Flink runs the suite's q4 (a running average): its own end state; lockgate's q4 closes auctions in windows
                        expected = running_q4(events) if (engine, query) == ("flink", "q4") else oracle(query, events, produced["partitions"])
                        watermark_ms = last_watermark(events, produced["partitions"], READS[query])
                        c = check(brokers, query, r["output_topic"], expected, watermark_ms if engine == "flink" else None)
                        checks.append({"engine": engine, **c})
                        print(f"# check: {checks[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(state_root, ignore_errors=True)
        common.delete_topics(brokers, [*produced["topics"].values(), *empty.values(), *(r["output_topic"] for rs in runs.values() for r in rs)])
    steady = {k: common.median([r["steady_rps"] for r in rs]) for k, rs in runs.items()}
    wall = {k: common.median([r["wall_rps"] for r in rs]) for k, rs in runs.items()}
    per_cpu = {k: common.median([r["events_per_cpu_s"] for r in rs]) for k, rs in runs.items()}
    for (engine, query), rs in runs.items():
        for r in rs:
            r["net_cpu_seconds"] = round(r["cpu_seconds"] - baseline[(engine, query)], 2)
            r["events_per_net_cpu_s"] = round(r["records"] / r["net_cpu_seconds"]) if r["net_cpu_seconds"] > 0 else None
    net = {k: common.median([r["events_per_net_cpu_s"] for r in rs if r["events_per_net_cpu_s"]]) for k, rs in runs.items()}
    result = {"benchmark": "nexmark", "events": args.events, "bids": bids, "runs": args.runs, "machine": common.machine(), "input": produced,
              "checks": checks, "median_steady_events_per_s": {f"{e}-{q}": v for (e, q), v in steady.items()},
              "median_wall_events_per_s": {f"{e}-{q}": v for (e, q), v in wall.items()},
              "median_events_per_cpu_s": {f"{e}-{q}": v for (e, q), v in per_cpu.items()},
              "median_events_per_net_cpu_s": {f"{e}-{q}": v for (e, q), v in net.items()},
              "baseline_cpu_seconds": {f"{e}-{q}": v for (e, q), v in baseline.items()},
              "all_runs": {f"{e}-{q}": rs for (e, q), rs in runs.items()}}
    path = common.write_json(args.out, "nexmark", result)
    exact = {(c["engine"], c["query"]): c["ok"] for c in checks}
    columns = ["query", "events"]
    for engine in engines:
        columns += [f"{engine} events/s (median of {args.runs})", f"{engine} wall", f"{engine} events/CPU-s",
                    f"{engine} events/net CPU-s", f"{engine} exact"]
    if "flink" in engines and "lockgate" in engines:
        columns += ["lockgate / flink", "lockgate / flink per CPU-s", "lockgate / flink per net CPU-s"]
    rows = []
    for q in queries:
        row: list[Any] = [q, f"{records[q]:,}"]
        for engine in engines:
            row += [f"{steady[(engine, q)]:,.0f}", f"{wall[(engine, q)]:,.0f}", f"{per_cpu[(engine, q)]:,.0f}",
                    f"{net[(engine, q)]:,.0f}", exact[(engine, q)]]
        if "flink" in engines and "lockgate" in engines:
            row += [f"{steady[('lockgate', q)] / steady[('flink', q)]:.2f}", f"{per_cpu[('lockgate', q)] / per_cpu[('flink', q)]:.2f}",
                    f"{net[('lockgate', q)] / net[('flink', q)]:.2f}"]
        rows.append(row)
    print(common.markdown_table(columns, rows))
    print(f"\n# written to {path}")
    print(json.dumps({"ok": all(c["ok"] for c in checks)}), file=sys.stderr)

if __name__ == "__main__":
    main()
