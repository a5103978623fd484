"""A/B of two commits on the windows pipeline: the change's speed as a ratio measured in one run.

The shared machines drift by 2-3x between days (bench/windows.py: the same code ran
403k records/s on 2026-11-25 and 162k on 2026-12-01), so a change is judged by
interleaving it with its base on the same input, not against yesterday's figure.

``--base REV`` is checked out into a temporary git worktree; each run starts a fresh
interpreter whose ``lockgate`` package is that worktree (a directory of links put
first on ``PYTHONPATH``) or this checkout (linked the same way, whatever ``pip install -e`` points at), alternately (b1 n1 b2 n2 ...).  Every run is
bench/windows.py's lockgate pipeline (fresh group, output topic and state) over one
input topic made once; the first run of each side is checked against the oracle.

Usage::

    python bench/ab_windows.py --base REV [--brokers HOST:PORT] [--records 2000000] [--pairs 4] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import windows

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(1, {bench!r})
import lockgate, windows
result = windows.run_lockgate({brokers!r}, {topic!r}, {records}, {run}, {tag!r}, Path(tempfile.mkdtemp()), 1800.0)
result["lockgate_file"] = lockgate.__file__
print("RESULT " + json.dumps(result))
"""


def one_run(side: str, pythonpath: str, brokers: str, topic: str, records: int, run: int, tag: str) -> dict[str, Any]:
    env = common.shim_env(pythonpath)
    code = CHILD.format(bench=str(HERE), brokers=brokers, topic=topic, records=records, run=run, tag=f"{tag}-{side}")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir())
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{side} run {run} failed (exit {out.returncode}): {out.stderr[-3000:]}")
    return {"side": side, **json.loads(lines[-1][len("RESULT "):])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare this checkout with")
    parser.add_argument("--brokers", help="Kafka bootstrap servers (default: start the local broker)")
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--pairs", type=int, default=4, help="base/new run pairs, interleaved")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    brokers = common.resolve_brokers(args.brokers)
    base_rev = subprocess.run(["git", "rev-parse", args.base], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    new_rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "engine", "operators", "storage", "lockgate"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip())
    tag = f"ab-{common.stamp().lower()}-{uuid.uuid4().hex[:4]}"
    topic = f"bench-windows-in-{tag}"
    runs: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    with common.ab_checkouts(base_rev) as paths:
        try:
            t0 = windows.event_time_origin()
            events = windows.make_events(args.records, t0)
            expected, _ = windows.oracle(events)
            produced = windows.produce(brokers, topic, events, "lz4")
            del events
            print(f"# input {topic}: {produced}", file=sys.stderr)
            for pair in range(1, args.pairs + 1):
                for side, path in paths.items():
                    result = one_run(side, path, brokers, topic, args.records, pair, tag)
                    runs.append(result)
                    print(f"# {side} {pair}: {result['steady_rps']:,} rec/s ({result['lockgate_file']})", file=sys.stderr)
                    if pair == 1:
                        checks[side] = windows.check_lockgate(brokers, result, expected)
                    shutil.rmtree(result["state"], ignore_errors=True)
        finally:
            windows.delete_topics_with(brokers, [topic, f"bench-windows-lg-{tag}"])

    medians = {side: common.median([r["steady_rps"] for r in runs if r["side"] == side]) for side in ("base", "new")}
    ratio = medians["new"] / medians["base"]
    result = {
        "benchmark": "ab_windows", "records": args.records, "pairs": args.pairs,
        "base": base_rev, "new": new_rev + (" + uncommitted changes" if dirty else ""),
        "steady_rps_median": medians, "ratio_new_over_base": round(ratio, 3),
        "per_run": [{k: r[k] for k in ("side", "run", "steady_rps", "steady_seconds", "batches")} for r in runs],
        "checks": checks, "machine": common.machine(),
    }
    path = common.write_json(args.out, "ab_windows", result)
    print(json.dumps(result, indent=2))
    print()
    print(common.markdown_table(
        ["benchmark", "records", f"base {base_rev[:7]} rec/s", f"new {new_rev[:7]} rec/s", "new / base"],
        [[f"windows A/B (steady, median of {args.pairs} interleaved pairs)", f"{args.records:,}",
          f"{medians['base']:,.0f}", f"{medians['new']:,.0f}", f"{ratio:.3f}"]],
    ))
    print(f"\n# written to {path}", file=sys.stderr)
    return 0 if all(c["ok"] for c in checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
