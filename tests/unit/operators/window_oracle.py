"""The batch oracle of the window tests: random records, random batch cuts, and a Polars batch computation.

No broker: window logic is pure.  Records come with bounded disorder and are cut
into random batches; the watermark after each batch is the maximum event time so
far minus the delay; at the end the watermark jumps past every window.  Each
window kind's test module runs :func:`check_fold_equals_a_polars_batch_computation`
for its kind; the storage tests reuse the scenarios.
"""

from __future__ import annotations

import polars as pl
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from lockgate.operators.windows import (
    Hopping,
    Session,
    Sliding,
    Tumbling,
    WindowLogic,
    WindowSpec,
)
from polars.testing import assert_frame_equal

SCHEMA = pl.Schema({"k": pl.String, "x": pl.Int64, "y": pl.Float64, "t": pl.Int64, "z": pl.String})
DECOMPOSABLE = {
    "n": pl.len(), "c": pl.col("y").count(), "s": pl.col("x").sum(), "lo": pl.col("x").min(), "hi": pl.col("y").max(),
    "avg": pl.col("y").mean(), "var": pl.col("x").var(), "sd": pl.col("y").std(), "first": pl.col("x").first(), "last": pl.col("y").last(),
}
ELEMENTWISE = {k: v for k, v in DECOMPOSABLE.items() if k not in ("var", "sd")}  # the hot index merges these in NumPy
TEXT = {"n": pl.len(), "fz": pl.col("z").first(), "lz": pl.col("z").last(), "mz": pl.col("z").max()}  # partials that are not numbers
BUFFERED = {"u": pl.col("x").n_unique(), "med": pl.col("y").median(), "q": pl.col("x").quantile(0.5), "n": pl.len(), "first": pl.col("x").first()}
FAR = 10**15
WINDOWS = {
    "tumbling": Tumbling("10s"),
    "hopping": Hopping("10s", "4s"),
    "sliding": Sliding("7s"),
    "session": Session("3s"),
}


def _records(draw: st.DrawFn, disorder_ms: int) -> pl.DataFrame:
    n = draw(st.integers(1, 60))
    base = 1_700_000_000_000
    clock = 0
    rows = []
    for i in range(n):
        clock += draw(st.integers(0, 2_500))
        t = base + clock - draw(st.integers(0, disorder_ms))
        y = draw(st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False)))
        x = draw(st.integers(-50, 50))
        rows.append({"k": draw(st.sampled_from(["a", "b", "c"])), "x": x, "y": y, "t": t, "z": f"z{x}"})
    return pl.DataFrame(rows, schema=SCHEMA)


@st.composite
def scenarios(draw: st.DrawFn, disorder_ms: int = 4_000) -> tuple[pl.DataFrame, list[int]]:
    records = _records(draw, disorder_ms)
    cuts = sorted(draw(st.lists(st.integers(1, max(1, records.height - 1)), max_size=6, unique=True)))
    return records, [c for c in cuts if c < records.height]


def run_fold(spec: WindowSpec, records: pl.DataFrame, cuts: list[int], delay: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Fold the batches, then close everything; return (emitted, late)."""
    logic = WindowLogic(spec)
    emitted, late = [], []
    bounds = [0, *cuts, records.height]
    seen_max = None
    for lo, hi in zip(bounds, bounds[1:]):
        batch = records.slice(lo, hi - lo)
        seen_max = batch["t"].max() if seen_max is None else max(seen_max, batch["t"].max())
        out = logic.on_batch(batch, seen_max - delay)
        emitted.append(out.emitted)
        late.append(out.late)
    final = logic.on_batch(records.clear(), FAR)
    emitted.append(final.emitted)
    return pl.concat(emitted, how="vertical_relaxed"), pl.concat(late, how="vertical_relaxed")


def watermarks_before(records: pl.DataFrame, cuts: list[int], delay: int) -> list[int | None]:
    """The watermark each record's batch was judged by (max event time of earlier batches - delay)."""
    bounds = [0, *cuts, records.height]
    out, wm = [], None
    for lo, hi in zip(bounds, bounds[1:]):
        ts = records["t"].to_list()[lo:hi]
        out += [wm] * len(ts)
        top = max(ts) - delay
        wm = top if wm is None else max(wm, top)
    return out


def oracle_late(window, records: pl.DataFrame, cuts: list[int], delay: int, lateness: int) -> list[bool]:
    """Which records are late: every window of theirs had closed before their batch (fixed and sliding windows)."""
    marks = []
    for t, wm in zip(records["t"].to_list(), watermarks_before(records, cuts, delay)):
        if wm is None:
            marks.append(False)
        elif isinstance(window, Sliding):
            marks.append(t + lateness <= wm)
        else:
            marks.append(all(end + lateness <= wm for _, end in _fixed_windows(window, t)))
    return marks


def _fixed_windows(window, t: int) -> list[tuple[int, int]]:
    if isinstance(window, Tumbling):
        start = (t // window.size_ms) * window.size_ms
        return [(start, start + window.size_ms)]
    first = (t // window.every_ms) * window.every_ms
    return [(s, s + window.size_ms) for s in range(first, t - window.size_ms, -window.every_ms) if s + window.size_ms > t]


def oracle(window, records: pl.DataFrame, aggs: dict, judged_by: list[int | None] | None = None, lateness: int = 0) -> pl.DataFrame:
    """The batch computation: label every record with its windows in plain Python, then one group_by.

    A record does not count in a window that had closed before its batch (``judged_by``).
    """
    rows = records.with_row_index("__i")
    if isinstance(window, (Tumbling, Hopping)):
        marks = judged_by or [None] * rows.height
        labels = [
            (i, s, e)
            for i, t, wm in zip(rows["__i"], rows["t"], marks)
            for s, e in _fixed_windows(window, t)
            if wm is None or e + lateness > wm
        ]
        lab = pl.DataFrame(labels, schema={"__i": pl.UInt32, "window_start": pl.Int64, "window_end": pl.Int64}, orient="row")
        grouped = rows.join(lab, on="__i").sort("__i").group_by("k", "window_start", "window_end", maintain_order=True).agg(**aggs)
    elif isinstance(window, Session):
        by_key = rows.sort("k", "t")
        labels, prev = [], {}
        sid = -1
        for i, k, t in zip(by_key["__i"], by_key["k"], by_key["t"]):
            if k not in prev or t - prev[k] >= window.gap_ms:
                sid += 1
            prev[k] = t
            labels.append((i, sid))
        lab = pl.DataFrame(labels, schema={"__i": pl.UInt32, "__sid": pl.Int64}, orient="row")
        joined = rows.join(lab, on="__i").sort("__i")
        bounds = joined.group_by("__sid").agg(window_start=pl.col("t").min(), window_end=pl.col("t").max() + window.gap_ms)
        grouped = joined.join(bounds, on="__sid").group_by("k", "window_start", "window_end", maintain_order=True).agg(**aggs)
    else:  # a window (t - size, t] per distinct (key, t); its records in arrival order
        ends = rows.select("k", pl.col("t").alias("window_end")).unique()
        members = ends.join(rows, on="k").filter(
            (pl.col("t") > pl.col("window_end") - window.size_ms) & (pl.col("t") <= pl.col("window_end"))
        )
        grouped = (
            members.sort("__i").group_by("k", "window_end", maintain_order=True).agg(**aggs)
            .with_columns(window_start=pl.col("window_end") - window.size_ms)
        )
    return grouped.select(
        "k", pl.col("window_start").cast(pl.Datetime("ms")), pl.col("window_end").cast(pl.Datetime("ms")), *aggs
    )


def assert_same_windows(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    cols = ["k", "window_start", "window_end"]
    assert_frame_equal(
        got.select(expected.columns).sort(cols), expected.sort(cols), check_exact=False, rel_tol=1e-6, abs_tol=1e-6, check_dtypes=True
    )


def make_spec(window, aggs, emit, lateness_ms: int = 0, schema: pl.Schema = SCHEMA, shard: str | None = None) -> WindowSpec:
    return WindowSpec.build(
        "w", window, by="k", aggs=aggs, schema=schema, time_column="t", allowed_lateness=f"{lateness_ms}ms", emit=emit, shard=shard
    )


def with_partition(records: pl.DataFrame) -> pl.DataFrame:
    """The records as read from a topic keyed by ``k``: keys a and c in partition 0, b in partition 1."""
    return records.with_columns(p=pl.col("k").replace_strict({"a": 0, "b": 1, "c": 0}, return_dtype=pl.Int32))


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


AGGREGATIONS = {"decomposable": DECOMPOSABLE, "element-wise": ELEMENTWISE, "text-partials": TEXT, "buffered": BUFFERED}


def check_fold_equals_a_polars_batch_computation(kind: str, aggs: dict, emit: str, data: st.DataObject) -> None:
    """The property every window kind's test runs: folds over random batches equal the batch oracle."""
    window = WINDOWS[kind]
    delay = 3_000
    lateness = data.draw(st.sampled_from([0, 2_000]))
    # sessions: disorder within the watermark delay (no late records); the others may see late records
    records, cuts = data.draw(scenarios(disorder_ms=delay if kind == "session" else 9_000))
    spec = make_spec(window, aggs, emit, lateness)
    if data.draw(st.booleans(), label="state keyed by input partition"):
        records = with_partition(records)
        spec = make_spec(window, aggs, emit, lateness, schema=records.schema, shard="p")
    emitted, late = run_fold(spec, records, cuts, delay)
    if kind == "session":
        assert late.height == 0
        kept = records
    else:
        marks = oracle_late(window, records, cuts, delay, lateness)
        keep = pl.Series(marks).not_()
        kept = records.filter(keep)
        assert late.height == sum(marks), "every late record is reported, and only those"
        assert sorted(late["x"].to_list()) == sorted(records.filter(~keep)["x"].to_list())
    judged = [wm for wm, late_ in zip(watermarks_before(records, cuts, delay), oracle_late(window, records, cuts, delay, lateness) if kind != "session" else [False] * records.height) if not late_]
    expected = oracle(window, kept, aggs, judged, lateness)
    if emit == "final":
        assert "retracted" not in emitted.columns
        assert_same_windows(emitted, expected)
    else:
        last = emitted.with_row_index("__o").sort("__o").group_by("k", "window_start", maintain_order=True).last()
        if "retracted" in last.columns:
            last = last.filter(~pl.col("retracted"))
        assert_same_windows(last.drop("__o"), expected)
