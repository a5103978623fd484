"""Nexmark from Kafka, exactly once: each query's throughput on lockgate, checked against its oracle.

One input (``bench/nexmark/produce.py``'s three topics, the bids read by the queries),
then for each query and run a fresh pipeline (group, output topic, state) reads the bid
topic until caught up; the first run of each query is checked: the committed output
topic equals the Polars oracle of ``bench/nexmark/queries.py``.  Rates are events (bids)
per second, ``steady`` from the first record read to the end, ``wall`` with the group
join; lockgate runs one process (one core of the machine's two for the operators, the
other for librdkafka's threads and Lance's), so events/s per core is the rate over 1.

The Flink peer of issue 15 (``bench/peers/flink``) is not in this table yet.

Usage::

    python bench/nexmark/run.py [--brokers HOST:PORT] [--events 1000000] [--runs 3] [--queries q0,q1,q2,q7,q11] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from bench.nexmark.queries import QUERIES, oracle  # noqa: E402

BATCH = lg.BatchPolicy(max_records=50_000, max_wait="100ms")


def run_lockgate(brokers: str, topic: str, query: str, bids: int, tag: str, run: int, state_root: Path) -> dict[str, Any]:
    """One fresh pipeline of ``query`` until caught up; its timings."""
    name = f"nexmark-{tag}-{query}-r{run}"
    pipe = lg.Pipeline(name, brokers=brokers, state=str(state_root / name), batch=BATCH)
    QUERIES[query](pipe, topic)
    timings, metrics = common.timed_run(pipe, bids, run, timeout=1800)
    return {**timings, "output_topic": f"{name}-out", "records_out": metrics.get("records_out", {}).get(f"{name}-out", 0)}


def check(brokers: str, query: str, output_topic: str, expected: pl.DataFrame) -> dict[str, Any]:
    """The committed output topic against the oracle (as multisets of rows)."""
    values = [m.value() for m in common.committed_messages(brokers, output_topic)]
    got = pl.read_ndjson(b"\n".join(values)) if values else pl.DataFrame(schema=expected.schema)
    got = got.select(
        pl.col(c).str.to_datetime(time_unit="ms") if t == pl.Datetime("ms") and got.schema[c] == pl.String else pl.col(c).cast(t)
        for c, t in expected.schema.items()
    )

    def canonical(frame: pl.DataFrame) -> pl.DataFrame:
        lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
        return frame.with_columns(pl.col(c).list.sort() for c in lists).sort(pl.all())

    same = got.height == expected.height and canonical(got).equals(canonical(expected))
    return {"query": query, "rows": got.height, "expected": expected.height, "ok": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queries", default=",".join(QUERIES))
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    brokers = common.resolve_brokers(args.brokers)
    queries = args.queries.split(",")
    tag = uuid.uuid4().hex[:8]
    events = generate(args.events, seed=1, rate=10_000)
    produced = write(brokers, events, f"nexmark-{tag}")
    topic = produced["topics"]["bid"]
    print(f"# {produced}", file=sys.stderr)
    state_root = Path(tempfile.mkdtemp(prefix="lockgate-bench-nexmark-"))
    runs: dict[str, list[dict[str, Any]]] = {q: [] for q in queries}
    checks = []
    try:
        for run in range(1, args.runs + 1):
            for query in queries:  # interleaved: q0, q1, ... then again
                r = run_lockgate(brokers, topic, query, events.bids.height, tag, run, state_root)
                runs[query].append(r)
                print(f"# {query} run {run}: {r['steady_rps']:,} events/s steady, {r['wall_rps']:,} wall", file=sys.stderr)
                if run == 1:
                    checks.append(check(brokers, query, r["output_topic"], oracle(query, events, produced["partitions"])))
                    print(f"# check: {checks[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(state_root, ignore_errors=True)
        common.delete_topics(brokers, [*produced["topics"].values(), *(r["output_topic"] for rs in runs.values() for r in rs)])
    steady = {q: common.median([r["steady_rps"] for r in rs]) for q, rs in runs.items()}
    wall = {q: common.median([r["wall_rps"] for r in rs]) for q, rs in runs.items()}
    result = {"benchmark": "nexmark", "events": args.events, "bids": events.bids.height, "runs": args.runs, "machine": common.machine(),
              "input": produced, "checks": checks, "median_steady_events_per_s": steady, "median_wall_events_per_s": wall, "all_runs": runs}
    path = common.write_json(args.out, "nexmark", result)
    rows = [[q, f"{events.bids.height:,}", f"{steady[q]:,.0f}", f"{wall[q]:,.0f}", next(c["ok"] for c in checks if c["query"] == q)]
            for q in queries]
    print(common.markdown_table(["query", "bids", f"lockgate events/s steady (median of {args.runs})", "wall", "exact"], rows))
    print(f"\n# written to {path}")
    print(json.dumps({"ok": all(c["ok"] for c in checks)}), file=sys.stderr)


if __name__ == "__main__":
    main()
