"""Scale out: the windows benchmark's pipeline as 1 and as N instances (processes) of one consumer group.

The input is the one of ``bench/windows.py`` (N JSON events, 100,000 users, 8 partitions
keyed by user, 10 minutes of event time); the pipeline is its lockgate pipeline with
``pipe.source(..., key="user")``, so each window keeps its state per input partition
and the instances share the partitions.  Each run is a fresh pipeline (group, output
topic, state directory); its instances start together as separate processes
(``LOCKGATE_INSTANCE=0..N-1``) and each runs until caught up.

Rates per run (records / seconds):

wall
    from the start of the processes to the end of the last one (interpreter start, group
    join and every rebalance included: what scaling out costs and gives).
steady
    from the first record any instance read to the end of the last one.

Runs are interleaved (1, N, 1, N, ...); the headline is the median of ``--runs`` of each
and the ratio N/1.  The first run of each is checked: the committed output topic holds
exactly the closed windows of the oracle and the tables of all instances equal it.

Usage::

    python bench/scale_out.py [--brokers HOST:PORT] [--records 2000000] [--instances 2] [--runs 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import windows as wb


def _instance(i: int, name: str, brokers: str, topic: str, state: str, out_topic: str, queue: Any) -> None:
    os.environ["LOCKGATE_INSTANCE"] = str(i)
    pipe = wb.build_pipeline(name, brokers, state, topic, out_topic)
    summary = pipe.run(until="caught_up", timeout=1800)
    queue.put({"instance": i, "records": summary.records, "batches": summary.batches, "end": time.time(),
               "first_record": None if summary.seconds_from_first_record is None else time.time() - summary.seconds_from_first_record,
               "stopped_because": summary.stopped_because})


def run(brokers: str, topic: str, instances: int, records: int, tag: str, run_no: int, state_root: Path) -> dict[str, Any]:
    """One fresh pipeline as ``instances`` processes until every one is caught up."""
    name = f"bench-scale-{tag}-n{instances}-r{run_no}"
    state, out_topic = str(state_root / name), f"{name}-out"
    ctx = mp.get_context("spawn")  # no fork: the parent has Polars' and librdkafka's threads
    queue = ctx.Queue()
    started = time.time()
    procs = [ctx.Process(target=_instance, args=(i, name, brokers, topic, state, out_topic, queue)) for i in range(instances)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=1900) for _ in procs]
    for p in procs:
        p.join()
    end = max(r["end"] for r in results)
    first = min(r["first_record"] for r in results if r["first_record"] is not None)
    total = sum(r["records"] for r in results)
    if total < records:
        raise RuntimeError(f"{name}: the instances read {total} of {records} records: {results}")
    return {
        "instances": instances, "run": run_no, "pipeline": name, "output_topic": out_topic, "state": state,
        "records_read": total, "per_instance": sorted((r["instance"], r["records"], r["batches"]) for r in results),
        "wall_seconds": round(end - started, 3), "steady_seconds": round(end - first, 3),
        "wall_rps": round(records / (end - started)), "steady_rps": round(records / (end - first)),
    }


def check(brokers: str, result: dict[str, Any], expected: Any) -> dict[str, Any]:
    """The committed output and table equal the oracle of the closed windows."""
    return wb.check_lockgate(brokers, {**result, "dead_letters": 0}, expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers")
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    brokers = common.resolve_brokers(args.brokers)
    tag = uuid.uuid4().hex[:8]
    topic = f"bench-scale-in-{tag}"
    t0_ms = wb.event_time_origin()
    events = wb.make_events(args.records, t0_ms)
    print(f"# {args.records:,} events into {topic}", file=sys.stderr)
    produced = wb.produce(brokers, topic, events, "lz4")
    expected, oracle_info = wb.oracle(events)
    state_root = Path(tempfile.mkdtemp(prefix="lockgate-bench-scale-"))
    runs: dict[int, list[dict[str, Any]]] = {1: [], args.instances: []}
    checks = []
    try:
        for run_no in range(1, args.runs + 1):
            for n in (1, args.instances):
                r = run(brokers, topic, n, args.records, tag, run_no, state_root)
                runs[n].append(r)
                print(f"# {n} instance(s), run {run_no}: {r['steady_rps']:,} rec/s steady, {r['wall_rps']:,} wall "
                      f"{r['per_instance']}", file=sys.stderr)
                if run_no == 1:
                    checks.append({"instances": n, **check(brokers, r, expected)})
                    print(f"# check: {checks[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(state_root, ignore_errors=True)
        common.delete_topics(brokers, [topic, *(r["output_topic"] for rs in runs.values() for r in rs)])
    one, many = (common.median([r["steady_rps"] for r in runs[k]]) for k in (1, args.instances))
    one_w, many_w = (common.median([r["wall_rps"] for r in runs[k]]) for k in (1, args.instances))
    result = {
        "benchmark": "scale_out", "records": args.records, "instances": args.instances, "runs": args.runs,
        "input": produced, "oracle": oracle_info, "machine": common.machine(), "checks": checks,
        "median_steady_rps": {"1": one, str(args.instances): many}, "median_wall_rps": {"1": one_w, str(args.instances): many_w},
        "ratio_steady": round(many / one, 2), "ratio_wall": round(many_w / one_w, 2), "all_runs": runs,
    }
    path = common.write_json(args.out, "scale_out", result)
    print(common.markdown_table(
        ["benchmark", "records", "1 instance rec/s", f"{args.instances} instances rec/s", "ratio"],
        [[f"windows, steady (median of {args.runs})", f"{args.records:,}", f"{one:,.0f}", f"{many:,.0f}", f"{many / one:.2f}"],
         [f"windows, wall (median of {args.runs})", f"{args.records:,}", f"{one_w:,.0f}", f"{many_w:,.0f}", f"{many_w / one_w:.2f}"]],
    ))
    print(f"\n# written to {path}")
    print(json.dumps({"ok": all(c["ok"] for c in checks)}), file=sys.stderr)


if __name__ == "__main__":
    main()
