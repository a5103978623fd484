"""Windows after a stream join: exact against a Polars join + group_by, the watermark held back by what the join may still emit."""

from __future__ import annotations

import random

import polars as pl
import pytest

import lockgate as lg
from lockgate.errors import PipelineDefinitionError

LEFT = {"k": pl.Int64, "g": pl.Int64, "t": pl.Int64, "v": pl.Int64}
RIGHT = {"k": pl.Int64, "t": pl.Int64, "w": pl.Int64}
BEFORE_MS, AFTER_MS, WINDOW_MS = 2_000, 3_000, 5_000
#: the window after the join: shorter than the join's, so a window join's pairs (emitted when its 5 s window closes) fall in windows the join's watermark passed
AFTER_WINDOW_MS = 1_000


def _streams(seed: int, n: int = 3_000) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = random.Random(seed)
    left = [{"k": rng.randrange(40), "g": rng.randrange(3), "t": i * 20 + rng.randrange(0, 200), "v": i} for i in range(n)]
    right = [{"k": rng.randrange(40), "t": i * 20 + rng.randrange(0, 200), "w": i} for i in range(n)]
    return pl.DataFrame(left, schema=LEFT), pl.DataFrame(right, schema=RIGHT)


def _batches(left: pl.DataFrame, right: pl.DataFrame, size: int) -> list[dict[str, pl.DataFrame]]:
    """Both streams in arrival order (by index, so within a stream event time is out of order by up to 200 ms), ``size`` rows a batch."""
    return [{"left": left[i:i + size], "right": right[i:i + size]} for i in range(0, left.height, size)]


def _pipeline(name: str, window: str, by: str) -> lg.Pipeline:
    pipe = lg.Pipeline(name, brokers="unused:9092")
    left = pipe.source("left", format=lg.JSON(schema=LEFT), event_time="t", watermark="300ms")
    right = pipe.source("right", format=lg.JSON(schema=RIGHT), event_time="t", watermark="300ms")
    if window == "interval":
        joined = left.join(right, on="k", within=(f"{BEFORE_MS}ms", f"{AFTER_MS}ms"), name="pairs")
    else:
        joined = left.join(right, on="k", window=lg.Tumbling(f"{WINDOW_MS}ms"), name="pairs")
    joined.window(lg.Tumbling(f"{AFTER_WINDOW_MS}ms"), by=by, name="per_window").agg(n=pl.len(), w=pl.col("w").sum()).to_table("out")
    joined.dead_letters().to_table("dead")
    return pipe


def _oracle(left: pl.DataFrame, right: pl.DataFrame, window: str, by: str) -> pl.DataFrame:
    pairs = left.join(right, on="k", suffix="_right")
    if window == "interval":
        pairs = pairs.filter((pl.col("t_right") >= pl.col("t") - BEFORE_MS) & (pl.col("t_right") <= pl.col("t") + AFTER_MS))
    else:
        pairs = pairs.filter(pl.col("t") // WINDOW_MS == pl.col("t_right") // WINDOW_MS)
    start = pl.col("t") // AFTER_WINDOW_MS * AFTER_WINDOW_MS
    return pairs.group_by(by, start.alias("start")).agg(n=pl.len(), w=pl.col("w").sum()).sort(by, "start")


@pytest.mark.parametrize("by", ["k", "g"], ids=["keyed-by-the-join-key", "through-a-second-hop"])
@pytest.mark.parametrize("window", ["interval", "window"], ids=["interval-join", "window-join"])
def test_a_window_after_a_stream_join_counts_every_pair_once_and_none_is_late(window, by):
    left, right = _streams(seed=7)
    pipe = _pipeline(f"after-{window}-{by}", window, by)
    out = lg.run_plan(pipe.plan(), _batches(left, right, 150))
    assert out["dead"].height == 0, out["dead"].select("_lg_reason", "_lg_error").head(3)
    got = out["out"].select(by, pl.col("window_start").dt.epoch("ms").alias("start"), "n", "w").sort(by, "start")
    expected = _oracle(left, right, window, by)
    assert expected.height > 20
    assert got.cast(dict(expected.schema)).equals(expected)  # type: ignore[arg-type]


def test_a_window_after_a_join_closes_only_once_the_join_can_emit_nothing_more_into_it():
    """Without the holdback, a pair whose left row lies up to ``after`` behind the right one would find its window closed."""
    left, right = _streams(seed=11)
    pipe = _pipeline("after-holdback", "interval", "k")
    plan = pipe.plan()
    window = next(n for n in plan.nodes if n.name == "per_window")
    assert window.holdback_ms == AFTER_MS
    out = lg.run_plan(plan, _batches(left, right, 150), end_of_input=False)
    expected = _oracle(left, right, "interval", "k")
    got = out["out"].select("k", pl.col("window_start").dt.epoch("ms").alias("start"), "n", "w").sort("k", "start")
    closed = expected.filter(pl.col("start") + AFTER_WINDOW_MS + AFTER_MS <= left["t"].max() - 300)  # type: ignore[operator]
    assert closed.join(got, on=["k", "start", "n", "w"], how="anti").height == 0
    assert out["dead"].height == 0


def test_a_window_after_a_join_that_keeps_one_state_is_refused_with_the_fix():
    pipe = lg.Pipeline("after-unsharded", brokers="unused:9092")
    left = pipe.source("left", format=lg.JSON(schema=LEFT), event_time="t")
    right = pipe.source("right", format=lg.JSON(schema=RIGHT), event_time="t")
    joined = left.join(right, on="k", within="1s", repartition=False, name="pairs")
    with pytest.raises(PipelineDefinitionError, match=r"window 'per_k'.*stream join 'pairs'.*repartition=False"):
        joined.window(lg.Tumbling("5s"), by="k", name="per_k").agg(n=pl.len())
