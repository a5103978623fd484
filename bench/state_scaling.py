"""Per-micro-batch commit cost of a window operator as its state grows.

For 10,000, 1,000,000 and 10,000,000 open (key, window) pairs of a tumbling
count + sum + max window, each micro-batch touches 10,000 of them (existing
pairs).  Timed per batch: the fold (merge into hot state) and the prepare step of
the commit (appending the changed state rows and the prepare record to LanceDB).
Kafka's share of a commit does not depend on the state size and is left out.
Each size runs in its own process so that its peak RSS is its own.

    python bench/state_scaling.py [--sizes 10000,1000000,10000000] [--batches 200] [--runs 3]

p99 needs samples: with 40 batches it is the largest of 39 (the first fold, which
builds the hot index, is the maximum and falls out), so one stray stall of the
shared machine decides it; 200 batches make it the 2nd largest of 199.

Targets (issue 3): p99 at 10M <= 1.5 x p99 at 10k; peak RSS at 10M <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

TOUCH = 10_000
WINDOW_MS = 60_000


def one_size(size: int, batches: int, seed: int) -> dict[str, Any]:
    """Run in a child process: build the state, then time ``batches`` folds + prepares."""
    from lockgate.operators.windows import Tumbling, WindowLogic, WindowSpec, WindowState
    from lockgate.storage.state import WindowStore
    from lockgate.storage.commit_log import CommitLog, PartitionRange

    schema = pl.Schema({"user": pl.String, "amount": pl.Int64, "__lg_t": pl.Int64})
    spec = WindowSpec.build(
        "w", Tumbling("1m"), by="user", aggs={"n": pl.len(), "total": pl.col("amount").sum(), "top": pl.col("amount").max()},
        schema=schema, time_column="__lg_t",
    )
    # the open state: `size` keys in one far-future window (never closes during the run)
    start = 10 * WINDOW_MS
    # keys "u0", "u1", ...; the harness keeps no list of them (at 10M it would be ~240 MB of its own):
    # a batch's touched keys are drawn as numbers and formatted the same way
    keys = pl.concat_str(pl.lit("u"), pl.int_range(size).cast(pl.String))
    keys = pl.select(keys.alias("user")).to_series()
    partials = pl.DataFrame(
        {
            "user": keys,
            "window_start": pl.repeat(start, size, dtype=pl.Int64, eager=True),
            "window_end": pl.repeat(start + WINDOW_MS, size, dtype=pl.Int64, eager=True),
            "__n_n": pl.repeat(1, size, dtype=pl.Int64, eager=True),
            "__total_s": pl.repeat(5, size, dtype=pl.Int64, eager=True),
            "__top_v": pl.repeat(5, size, dtype=pl.Int64, eager=True),
        }
    ).cast(dict(spec.partial_schema()))  # type: ignore[arg-type]
    state = WindowState(partials, WindowState.empty(spec).rows, watermark=0, seq=0)
    logic = WindowLogic(spec, state)  # owns the state from here on
    del partials, keys, state  # the state holds them until the first batch moves them into the hot index
    rng = np.random.default_rng(seed)
    state_dir = tempfile.mkdtemp(prefix="lockgate-bench-state-")
    store, log = WindowStore(state_dir, "bench", spec), CommitLog(state_dir)
    fold_ms, prepare_ms = [], []
    for b in range(batches):
        touched = pl.select(pl.concat_str(pl.lit("u"), pl.lit(pl.Series(rng.choice(size, TOUCH, replace=False))).cast(pl.String)).alias("user")).to_series()
        batch = pl.DataFrame({"user": touched, "amount": pl.int_range(TOUCH, eager=True), "__lg_t": pl.repeat(start + 1, TOUCH, eager=True)})
        t0 = time.perf_counter()
        logic.on_batch(batch, 0)
        t1 = time.perf_counter()
        store.append(logic.take_delta(), batch_id=b + 1, epoch=b + 1)
        log.prepare("bench", epoch=b + 1, batch_id=b + 1, ranges=[PartitionRange("in", 0, b, b + 1)], tables={})
        t2 = time.perf_counter()
        assert logic.state.open_windows == size
        fold_ms.append((t1 - t0) * 1000)
        prepare_ms.append((t2 - t1) * 1000)
    total = [f + p for f, p in zip(fold_ms, prepare_ms, strict=True)]
    return {
        "size": size,
        "batches": batches,
        "p50_ms": round(statistics.median(total), 2),
        "p99_ms": round(sorted(total)[max(0, int(len(total) * 0.99) - 1)], 2),
        "fold_p50_ms": round(statistics.median(fold_ms), 2),
        "prepare_p50_ms": round(statistics.median(prepare_ms), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(one_size(args.child, args.batches, args.seed)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    per_size: dict[int, list[dict[str, Any]]] = {s: [] for s in sizes}
    for run in range(args.runs):
        for size in sizes:  # interleaved, so machine noise hits every size alike
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(size), "--batches", str(args.batches), "--seed", str(run * 1000)],
                capture_output=True, text=True, check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            per_size[size].append(result)
            print(f"# run {run + 1} size {size:,}: {result}", file=sys.stderr)
    summary = {
        s: {
            "p50_ms": common.median([r["p50_ms"] for r in rs]),
            "p99_ms": common.median([r["p99_ms"] for r in rs]),
            "fold_p50_ms": common.median([r["fold_p50_ms"] for r in rs]),
            "prepare_p50_ms": common.median([r["prepare_p50_ms"] for r in rs]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
        for s, rs in per_size.items()
    }
    smallest, largest = sizes[0], sizes[-1]
    ratio = summary[largest]["p99_ms"] / summary[smallest]["p99_ms"]
    result = {
        "benchmark": "state_scaling", "touch_per_batch": TOUCH, "batches": args.batches, "runs": args.runs,
        "sizes": summary, "p99_ratio_largest_over_smallest": round(ratio, 2), "target_ratio": 1.5,
        "target_peak_rss_mb": 1536, "per_run": {str(k): v for k, v in per_size.items()}, "machine": common.machine(),
    }
    path = common.write_json(args.out, "state_scaling", result)
    print(json.dumps(result["sizes"], indent=2))
    print(common.markdown_table(
        ["open pairs", "commit p50 ms", "commit p99 ms", "fold p50 ms", "prepare p50 ms", "peak RSS MB", "p99 / p99 at smallest"],
        [[f"{s:,}", v["p50_ms"], v["p99_ms"], v["fold_p50_ms"], v["prepare_p50_ms"], v["peak_rss_mb"],
          f"{v['p99_ms'] / summary[smallest]['p99_ms']:.2f}"] for s, v in summary.items()],
    ))
    print(f"\n# target: p99 ratio <= 1.5 ({'met' if ratio <= 1.5 else 'NOT met'}: {ratio:.2f}); "
          f"peak RSS at {largest:,} <= 1536 MB ({summary[largest]['peak_rss_mb']} MB)", file=sys.stderr)
    print(f"# written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
