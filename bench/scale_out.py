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

Each run count is done for two pipelines: keyed (``key="user"``: no hop) and repartitioned
(no ``key=``: the window's rows go through its repartition topic first, the default), so the hop's cost
(repartitioned / keyed on one instance, target >= 0.6) is measured in the same run.
Runs are interleaved (keyed 1, keyed N, repartitioned 1, repartitioned N, ...); the headline
is the median of ``--runs`` of each and the ratio N/1.  The first run of each is checked: the committed output topic holds
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


def _instance(i: int, name: str, brokers: str, topic: str, state: str, out_topic: str, queue: Any, hop: bool = False) -> None:
    os.environ["LOCKGATE_INSTANCE"] = str(i)
    pipe = wb.build_pipeline(name, brokers, state, topic, out_topic, per_partition=not hop, repartition=hop)
    summary = pipe.run(until="caught_up", timeout=1800)
    queue.put({"instance": i, "records": summary.records, "batches": summary.batches, "end": time.time(),
               "first_record": None if summary.seconds_from_first_record is None else time.time() - summary.seconds_from_first_record,
               "stopped_because": summary.stopped_because})


def run(
    brokers: str, topic: str, instances: int, records: int, tag: str, run_no: int, state_root: Path, hop: bool = False
) -> dict[str, Any]:
    """One fresh pipeline as ``instances`` processes until every one is caught up (``hop``: through a repartition topic)."""
    name = f"bench-scale-{tag}-{'hop' if hop else 'keyed'}-n{instances}-r{run_no}"
    state, out_topic = str(state_root / name), f"{name}-out"
    ctx = mp.get_context("spawn")  # no fork: the parent has Polars' and librdkafka's threads
    queue = ctx.Queue()
    started = time.time()
    procs = [ctx.Process(target=_instance, args=(i, name, brokers, topic, state, out_topic, queue, hop)) for i in range(instances)]
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
        "instances": instances, "hop": hop, "run": run_no, "pipeline": name, "output_topic": out_topic, "state": state,
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
    variants = [(hop, n) for hop in (False, True) for n in (1, args.instances)]
    runs: dict[tuple[bool, int], list[dict[str, Any]]] = {v: [] for v in variants}
    checks = []
    try:
        for run_no in range(1, args.runs + 1):
            for hop, n in variants:  # interleaved: keyed 1, keyed N, repartitioned 1, repartitioned N, ...
                r = run(brokers, topic, n, args.records, tag, run_no, state_root, hop)
                runs[(hop, n)].append(r)
                print(f"# {'repartitioned' if hop else 'keyed'}, {n} instance(s), run {run_no}: {r['steady_rps']:,} rec/s steady, "
                      f"{r['wall_rps']:,} wall {r['per_instance']}", file=sys.stderr)
                if run_no == 1:
                    checks.append({"instances": n, "hop": hop, **check(brokers, r, expected)})
                    print(f"# check: {checks[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(state_root, ignore_errors=True)
        common.delete_topics(brokers, [topic, *(r["output_topic"] for rs in runs.values() for r in rs)])
    steady = {v: common.median([r["steady_rps"] for r in runs[v]]) for v in variants}
    wall = {v: common.median([r["wall_rps"] for r in runs[v]]) for v in variants}
    n = args.instances
    label = {False: "keyed (key=user: no hop)", True: "repartitioned (no key=: through the repartition topic)"}
    result = {
        "benchmark": "scale_out", "records": args.records, "instances": n, "runs": args.runs,
        "input": produced, "oracle": oracle_info, "machine": common.machine(), "checks": checks,
        "median_steady_rps": {f"{'hop' if h else 'keyed'}-{k}": v for (h, k), v in steady.items()},
        "median_wall_rps": {f"{'hop' if h else 'keyed'}-{k}": v for (h, k), v in wall.items()},
        "ratio_steady": round(steady[(False, n)] / steady[(False, 1)], 2), "ratio_wall": round(wall[(False, n)] / wall[(False, 1)], 2),
        "ratio_steady_repartitioned": round(steady[(True, n)] / steady[(True, 1)], 2),
        "hop_cost_steady_1": round(steady[(True, 1)] / steady[(False, 1)], 2),
        "hop_cost_wall_1": round(wall[(True, 1)] / wall[(False, 1)], 2),
        "all_runs": {f"{'hop' if h else 'keyed'}-{k}": rs for (h, k), rs in runs.items()},
    }
    path = common.write_json(args.out, "scale_out", result)
    rows = []
    for hop in (False, True):
        for kind, table in (("steady", steady), ("wall", wall)):
            one, many = table[(hop, 1)], table[(hop, n)]
            rows.append([f"windows, {label[hop]}, {kind} (median of {args.runs})", f"{args.records:,}", f"{one:,.0f}", f"{many:,.0f}", f"{many / one:.2f}"])
    print(common.markdown_table(["benchmark", "records", "1 instance rec/s", f"{n} instances rec/s", "ratio"], rows))
    print(common.markdown_table(
        ["the hop's cost, 1 instance", "keyed rec/s", "repartitioned rec/s", "repartitioned / keyed (target >= 0.6)"],
        [[kind, f"{t[(False, 1)]:,.0f}", f"{t[(True, 1)]:,.0f}", f"{t[(True, 1)] / t[(False, 1)]:.2f}"] for kind, t in (("steady", steady), ("wall", wall))],
    ))
    print(f"\n# written to {path}")
    print(json.dumps({"ok": all(c["ok"] for c in checks)}), file=sys.stderr)


if __name__ == "__main__":
    main()
