"""The window join logic against a Polars batch join of the same rows (random keys, disorder, batch boundaries, restarts)."""

from __future__ import annotations

import random

import polars as pl
import pytest

from lockgate.errors import PipelineDefinitionError
from lockgate.operators.join_rows import StreamJoinSpec
from lockgate.operators.window_join import WindowJoinLogic
from lockgate.operators.windows import Hopping, Tumbling
from lockgate.operators.windows.fixed import assign_windows

LEFT = pl.Schema({"k": pl.Int64, "t": pl.Int64, "v": pl.Int64})
RIGHT = pl.Schema({"k": pl.Int64, "t": pl.Int64, "w": pl.Int64})


def _spec(window, how: str) -> StreamJoinSpec:
    return StreamJoinSpec.build("j", on="k", lower_ms=0, upper_ms=0, how=how, left_schema=LEFT, right_schema=RIGHT,
                                left_time="t", right_time="t", window=window)


def _stream(rng: random.Random, n: int, column: str) -> list[dict]:
    return [{"k": rng.randrange(6), "t": i * 100 + rng.randrange(-1_500, 1_501), column: i} for i in range(n)]


def _parts(rng: random.Random, rows: list[dict], batches: int) -> list[list[dict]]:
    cuts = sorted(rng.sample(range(1, len(rows)), batches - 1))
    return [rows[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]


def _oracle(spec: StreamJoinSpec, left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
    """Each side's (row, window) pairs that were open when the row came (column ``open_after``), joined on key and window."""
    def windows(frame: pl.DataFrame) -> pl.DataFrame:
        pairs = assign_windows(spec.window, frame.with_columns(pl.col("t").alias("__t"))).drop("__t")
        return pairs.filter(pl.col("before").is_null() | (pl.col("window_end") > pl.col("before"))).drop("before")
    joined = windows(left).join(windows(right).drop("window_end"), on=["k", "window_start"], how=spec.how, suffix="_right")
    return joined.select("k", "t", "v", "t_right", "w", "window_start")


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select("k", "t", "v", "t_right", "w", "window_start").sort(["v", "w", "window_start"], nulls_last=True)


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("window", [Tumbling("2s"), Hopping("3s", "1s")], ids=["tumbling", "hopping"])
@pytest.mark.parametrize("seed", range(5))
def test_a_window_join_over_random_batches_and_restarts_equals_a_polars_join_of_the_windows_open_when_each_row_came(how, window, seed):
    rng = random.Random(seed)
    spec = _spec(window, how)
    left, right = _stream(rng, 300, "v"), _stream(rng, 300, "w")
    batches = rng.randrange(4, 25)
    logic, watermark, top = WindowJoinLogic(spec), None, None
    stored: dict[str, pl.DataFrame] = {}
    emitted, late, seen = [], 0, {"left": [], "right": []}
    for pl_rows, pr_rows in zip(_parts(rng, left, batches), _parts(rng, right, batches), strict=True):
        before = watermark
        for row in pl_rows + pr_rows:
            top = row["t"] if top is None else max(top, row["t"])
        watermark = top - 1_000 if watermark is None else max(watermark, top - 1_000)
        out = logic.on_batch(pl.DataFrame(pl_rows, schema=LEFT), pl.DataFrame(pr_rows, schema=RIGHT), watermark_before=before,
                             watermark_after=watermark)
        emitted.append(out.pairs)
        late += out.late_left.height + out.late_right.height
        seen["left"] += [{**r, "before": before} for r in pl_rows]
        seen["right"] += [{**r, "before": before} for r in pr_rows]
        for side, delta in zip(("left", "right"), logic.take_delta(snapshot=rng.random() < 0.2), strict=True):
            rows = pl.concat([f for f in (stored.get(side), delta.upserts) if f is not None], how="vertical_relaxed")
            rows = rows.unique("__lg_row", keep="last", maintain_order=True)
            stored[side] = rows.filter(~pl.col("__lg_row").is_in(delta.deletes["__lg_row"].implode()))
        if rng.random() < 0.3:  # a restart from the stored rows only
            logic = WindowJoinLogic(spec, stored["left"], stored["right"], watermark=watermark)
    emitted.append(logic.on_batch(pl.DataFrame(schema=LEFT), pl.DataFrame(schema=RIGHT), watermark_before=watermark, watermark_after=2**62).pairs)
    got = pl.concat(emitted).with_columns(pl.col("window_start").dt.epoch("ms"))
    frames = {s: pl.DataFrame(seen[s], schema={**(LEFT if s == "left" else RIGHT), "before": pl.Int64}) for s in seen}
    assert late > 0, "the disorder exceeds the delay: some rows must be late"
    assert got.height > 0
    assert _sorted(got).equals(_sorted(_oracle(spec, frames["left"], frames["right"])))
    assert logic.buffered == (0, 0)


def test_a_pair_comes_out_only_once_the_watermark_reaches_its_window_end_and_carries_the_window():
    logic = WindowJoinLogic(_spec(Tumbling("10s"), "left"))
    left = pl.DataFrame({"k": [1, 2], "t": [1_000, 2_000], "v": [1, 2]}, schema=LEFT)
    right = pl.DataFrame({"k": [1], "t": [9_999], "w": [7]}, schema=RIGHT)
    assert logic.on_batch(left, right, watermark_before=None, watermark_after=9_999).pairs.height == 0
    out = logic.on_batch(left.clear(), right.clear(), watermark_before=9_999, watermark_after=10_000).pairs
    assert out.select("k", "v", "w").sort("k").rows() == [(1, 1, 7), (2, 2, None)]
    assert [d.timestamp() for d in out["window_end"]] == [10.0, 10.0]
    assert logic.on_batch(left.clear(), right.clear(), watermark_before=10_000, watermark_after=50_000).pairs.height == 0


def test_a_window_join_refuses_a_session_window_and_streams_that_already_have_window_columns():
    from lockgate.operators.windows import Session

    with pytest.raises(PipelineDefinitionError, match="lg.Tumbling"):
        _spec(Session("1s"), "inner")
    with pytest.raises(PipelineDefinitionError, match="window_start"):
        StreamJoinSpec.build("j", on="k", lower_ms=0, upper_ms=0, how="inner", left_schema=pl.Schema({**LEFT, "window_start": pl.Int64}),
                             right_schema=RIGHT, left_time="t", right_time="t", window=Tumbling("1s"))
