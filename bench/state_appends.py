"""A prepare's state append beside a busy Python thread: the engine's path against its floor, a prebuilt table.

Until 2026-12-07 an epoch's prepare had an appender thread turn a window's state delta
into Arrow (``storage/state.py`` ``state_rows``: concat, tags, ``to_arrow``, one cast per
column) and write it with Lance's ``write_dataset``, while the runner thread ran the next
batch's Python and the produce loop its own.  Each Polars or pyarrow call the appender
makes releases the GIL and then waits for it, up to a switch interval (5 ms) when
another thread is running Python.  Now the runner builds the rows as it starts the
epoch (``EpochTransaction.build_rows``) and the appender only writes.  This bench times
both, alone and beside a thread that only runs Python:

- ``engine``: ``state_rows`` then ``write_state_rows``, build and write on one thread (the old prepare path);
- ``floor``: ``write_dataset`` of the same rows already built as an Arrow table (what an
  appender does now).

Medians over ``--runs`` interleaved runs of ``--appends`` appends each; the p50/p90 per
configuration in ms, and engine / floor.

Usage::

    python bench/state_appends.py [--rows 4000] [--appends 80] [--runs 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lance
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common as common  # noqa: E402
from lockgate.storage.row_tags import DELETED, tag  # noqa: E402
from lockgate.storage.state import state_rows, write_state_rows  # noqa: E402


def _busy(stop: threading.Event) -> None:
    """Run Python until ``stop``: the runner or the produce loop beside an appender."""
    x = 0
    while not stop.is_set():
        for j in range(200):
            x += j


def _time(fn: Callable[[int], object], appends: int) -> dict[str, float]:
    ms = []
    for i in range(appends):
        started = time.perf_counter()
        fn(i)
        ms.append((time.perf_counter() - started) * 1000)
        time.sleep(0.01)  # epochs come apart
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90))}


def one_run(rows: int, appends: int) -> dict[str, dict[str, float]]:
    """Both paths, alone and beside a busy Python thread, each into a fresh table."""
    upserts = pl.DataFrame({"k": np.arange(rows), "w": np.zeros(rows, dtype=np.int64), "count": np.ones(rows, dtype=np.int64),
                            "sum": np.random.default_rng(0).random(rows)})
    deletes = upserts.head(0).select("k", "w")
    built = tag(upserts.with_columns(pl.lit(False).alias(DELETED)), batch_id=1, epoch=1).to_arrow()
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as work:
        for beside in ("alone", "busy"):
            stop = threading.Event()
            thread = threading.Thread(target=_busy, args=(stop,), daemon=True) if beside == "busy" else None
            if thread is not None:
                thread.start()
            try:
                uri = f"{work}/engine-{beside}.lance"
                lance.write_dataset(built, uri)
                out[f"engine_{beside}"] = _time(lambda i, uri=uri: write_state_rows(uri, state_rows(built.schema, upserts, deletes, i, i), "bench"), appends)
                uri = f"{work}/floor-{beside}.lance"
                lance.write_dataset(built, uri)
                out[f"floor_{beside}"] = _time(lambda i, uri=uri: lance.write_dataset(built, uri, mode="append"), appends)
            finally:
                stop.set()
                if thread is not None:
                    thread.join()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4_000, help="rows of the state delta (a 50k ev/s epoch touches ~4,000 keys of 1,000 x windows)")
    parser.add_argument("--appends", type=int, default=80)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    runs = []
    for run in range(args.runs):
        r = one_run(args.rows, args.appends)
        runs.append(r)
        print(f"# run {run + 1}: " + ", ".join(f"{k} p50 {v['p50']:.1f} ms" for k, v in r.items()), file=sys.stderr)
    keys = list(runs[0])
    summary: dict[str, Any] = {k: {q: round(common.median([r[k][q] for r in runs]), 2) for q in ("p50", "p90")} for k in keys}
    for beside in ("alone", "busy"):
        summary[f"engine_over_floor_{beside}"] = round(summary[f"engine_{beside}"]["p50"] / summary[f"floor_{beside}"]["p50"], 2)
    path = common.write_json(args.out, "state_appends", {"benchmark": "state_appends", "rows": args.rows, "appends": args.appends,
                                                         "runs": runs, "summary": summary, "machine": common.machine()})
    md = common.markdown_table(
        ["beside", "engine path p50 / p90 ms", "floor (prebuilt table) p50 / p90 ms", "engine / floor p50"],
        [(beside, f"{summary[f'engine_{beside}']['p50']:.1f} / {summary[f'engine_{beside}']['p90']:.1f}",
          f"{summary[f'floor_{beside}']['p50']:.1f} / {summary[f'floor_{beside}']['p90']:.1f}", summary[f"engine_over_floor_{beside}"])
         for beside in ("alone", "busy")],
    )
    common.write_markdown(path, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
