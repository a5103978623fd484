"""The interval join logic against a Polars batch join of the same rows (random keys, disorder, batch boundaries)."""

from __future__ import annotations

import random

import polars as pl
import pytest

from lockgate.errors import PipelineDefinitionError
from lockgate.operators.interval_join import IntervalJoinLogic
from lockgate.operators.join_rows import StreamJoinSpec

LEFT = pl.Schema({"k": pl.Int64, "t": pl.Int64, "v": pl.Int64})
RIGHT = pl.Schema({"k": pl.Int64, "t": pl.Int64, "w": pl.Int64})


def _spec(lower_ms: int, upper_ms: int, how: str) -> StreamJoinSpec:
    return StreamJoinSpec.build("j", on="k", lower_ms=lower_ms, upper_ms=upper_ms, how=how, left_schema=LEFT, right_schema=RIGHT,
                                  left_time="t", right_time="t")


def _stream(rng: random.Random, n: int, keys: int, disorder_ms: int, column: str) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({"k": rng.randrange(keys), "t": i * 100 + rng.randrange(-disorder_ms, disorder_ms + 1), column: i})
    return rows


def _run(spec: StreamJoinSpec, left: list[dict], right: list[dict], batches: int, delay_ms: int, rng: random.Random):
    """Feed both streams in random batch boundaries, watermark = max seen - delay; returns (emitted, late left, late right, on-time rows)."""
    logic = IntervalJoinLogic(spec)
    cuts_l = sorted(rng.sample(range(1, len(left)), batches - 1))
    cuts_r = sorted(rng.sample(range(1, len(right)), batches - 1))
    parts_l = [left[a:b] for a, b in zip([0, *cuts_l], [*cuts_l, len(left)], strict=True)]
    parts_r = [right[a:b] for a, b in zip([0, *cuts_r], [*cuts_r, len(right)], strict=True)]
    watermark, top = None, None
    emitted, late_l, late_r, on_time_l, on_time_r = [], [], [], [], []
    for pl_rows, pr_rows in zip(parts_l, parts_r, strict=True):
        before = watermark
        for row in pl_rows + pr_rows:
            top = row["t"] if top is None else max(top, row["t"])
        watermark = top - delay_ms if watermark is None else max(watermark, top - delay_ms)
        out = logic.on_batch(pl.DataFrame(pl_rows, schema=LEFT), pl.DataFrame(pr_rows, schema=RIGHT),
                             watermark_before=before, watermark_after=watermark)
        emitted.append(out.pairs)
        late_l.append(out.late_left)
        late_r.append(out.late_right)
        on_time_l += [r for r in pl_rows if before is None or r["t"] >= before]
        on_time_r += [r for r in pr_rows if before is None or r["t"] >= before]
    end = logic.on_batch(pl.DataFrame(schema=LEFT), pl.DataFrame(schema=RIGHT), watermark_before=watermark, watermark_after=2**62)
    emitted.append(end.pairs)
    return pl.concat(emitted), pl.concat(late_l), pl.concat(late_r), on_time_l, on_time_r, logic


def _oracle(spec: StreamJoinSpec, left: list[dict], right: list[dict]) -> pl.DataFrame:
    lf, rf = pl.DataFrame(left, schema=LEFT), pl.DataFrame(right, schema=RIGHT)
    pairs = lf.join(rf, on="k", suffix="_right").filter(
        (pl.col("t_right") >= pl.col("t") + spec.lower_ms) & (pl.col("t_right") <= pl.col("t") + spec.upper_ms)
    )
    if spec.how == "left":
        unmatched = lf.join(pairs.select("k", "t", "v"), on=["k", "t", "v"], how="anti")
        pairs = pl.concat([pairs, unmatched], how="diagonal_relaxed")
    return pairs.select("k", "t", "v", "t_right", "w")


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select("k", "t", "v", "t_right", "w").sort(["v", "w"], nulls_last=True)


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("bounds", [(-2_000, 2_000), (-500, 3_000), (1_000, 4_000)], ids=["symmetric", "skewed", "after-only"])
@pytest.mark.parametrize("seed", range(6))
def test_an_interval_join_over_random_batches_equals_a_polars_join_of_the_rows_that_were_on_time(how, bounds, seed):
    rng = random.Random(seed)
    spec = _spec(*bounds, how)
    left = _stream(rng, 400, keys=7, disorder_ms=1_500, column="v")
    right = _stream(rng, 500, keys=7, disorder_ms=1_500, column="w")
    emitted, late_l, late_r, on_time_l, on_time_r, logic = _run(spec, left, right, batches=rng.randrange(3, 30), delay_ms=1_000, rng=rng)
    assert late_l.height + len(on_time_l) == len(left) and late_r.height + len(on_time_r) == len(right)
    assert late_l.height + late_r.height > 0, "the disorder exceeds the delay: some rows must be late"
    assert emitted.height > 0
    assert _sorted(emitted).equals(_sorted(_oracle(spec, on_time_l, on_time_r)))
    assert logic.buffered == (0, 0), "a watermark past every row leaves nothing buffered"


def test_a_left_row_without_a_match_is_emitted_once_only_after_the_watermark_passed_its_interval():
    spec = _spec(-5_000, 30_000, "left")
    logic = IntervalJoinLogic(spec)
    row = pl.DataFrame({"k": [1], "t": [10_000], "v": [1]}, schema=LEFT)
    nothing = pl.DataFrame(schema=RIGHT)
    assert logic.on_batch(row, nothing, watermark_before=None, watermark_after=39_999).pairs.height == 0
    assert logic.on_batch(row.clear(), nothing, watermark_before=39_999, watermark_after=40_000).pairs.height == 0  # 10 s + 30 s: still possible
    out = logic.on_batch(row.clear(), nothing, watermark_before=40_000, watermark_after=40_001)
    assert out.pairs.to_dicts() == [{"k": 1, "t": 10_000, "v": 1, "t_right": None, "w": None}]
    assert logic.on_batch(row.clear(), nothing, watermark_before=40_001, watermark_after=90_000).pairs.height == 0


def test_buffered_rows_are_dropped_as_soon_as_no_future_row_can_match_them():
    spec = _spec(-5_000, 30_000, "inner")
    logic = IntervalJoinLogic(spec)
    left = pl.DataFrame({"k": [1], "t": [10_000], "v": [1]}, schema=LEFT)
    right = pl.DataFrame({"k": [1], "t": [10_000], "w": [1]}, schema=RIGHT)
    logic.on_batch(left, right, watermark_before=None, watermark_after=14_999)
    assert logic.buffered == (1, 1)  # a left row at 15 s could still match the right row (15 s - 5 s <= 10 s)
    logic.on_batch(left.clear(), right.clear(), watermark_before=14_999, watermark_after=15_001)
    assert logic.buffered == (1, 0)
    logic.on_batch(left.clear(), right.clear(), watermark_before=15_001, watermark_after=40_001)
    assert logic.buffered == (0, 0)


def test_clashing_right_columns_get_the_right_suffix_and_the_key_appears_once():
    assert list(_spec(-1, 1, "inner").output_schema().names()) == ["k", "t", "v", "t_right", "w"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"how": "outer"}, "how='inner' or how='left'"),
        ({"lower_ms": 10, "upper_ms": 0}, "is empty"),
        ({"on": "nope"}, "the left stream has no column 'nope'"),
        ({"left_time": "ts"}, "no event-time column 'ts'"),
    ],
)
def test_a_bad_interval_join_is_refused_naming_the_join_the_column_and_the_fix(kwargs, message):
    args = {"on": "k", "lower_ms": -1, "upper_ms": 1, "how": "inner", "left_schema": LEFT, "right_schema": RIGHT,
            "left_time": "t", "right_time": "t", **kwargs}
    with pytest.raises(PipelineDefinitionError, match=message) as err:
        StreamJoinSpec.build("j", **args)
    assert "join 'j'" in str(err.value)


def _apply(stored: pl.DataFrame | None, delta) -> pl.DataFrame:
    """A store's rows after a delta: upserts replace rows of their id, then deletes remove ids."""
    frames = [f for f in (stored, delta.upserts) if f is not None]
    rows = pl.concat(frames, how="vertical_relaxed").unique("__lg_row", keep="last", maintain_order=True)
    return rows.filter(~pl.col("__lg_row").is_in(delta.deletes["__lg_row"].implode()))


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("seed", range(4))
def test_a_join_rebuilt_from_its_deltas_at_any_batch_goes_on_as_if_it_had_never_stopped(how, seed):
    rng = random.Random(seed)
    spec = _spec(-1_000, 2_000, how)
    left = _stream(rng, 300, keys=5, disorder_ms=800, column="v")
    right = _stream(rng, 300, keys=5, disorder_ms=800, column="w")
    whole = _run(spec, left, right, batches=20, delay_ms=1_000, rng=random.Random(seed))[0]
    batches, parts_l, parts_r = 20, [], []
    cut = random.Random(seed)
    cuts_l = sorted(cut.sample(range(1, len(left)), batches - 1))
    cuts_r = sorted(cut.sample(range(1, len(right)), batches - 1))
    parts_l = [left[a:b] for a, b in zip([0, *cuts_l], [*cuts_l, len(left)], strict=True)]
    parts_r = [right[a:b] for a, b in zip([0, *cuts_r], [*cuts_r, len(right)], strict=True)]
    logic, stored_l, stored_r, watermark, top, emitted = IntervalJoinLogic(spec), None, None, None, None, []
    for i, (pl_rows, pr_rows) in enumerate(zip(parts_l, parts_r, strict=True)):
        before = watermark
        for row in pl_rows + pr_rows:
            top = row["t"] if top is None else max(top, row["t"])
        watermark = top - 1_000 if watermark is None else max(watermark, top - 1_000)
        emitted.append(logic.on_batch(pl.DataFrame(pl_rows, schema=LEFT), pl.DataFrame(pr_rows, schema=RIGHT),
                                      watermark_before=before, watermark_after=watermark).pairs)
        delta_l, delta_r = logic.take_delta(snapshot=i % 7 == 6)
        stored_l, stored_r = _apply(stored_l, delta_l), _apply(stored_r, delta_r)
        assert (stored_l.height, stored_r.height) == logic.buffered
        if rng.random() < 0.4:  # a restart: a new logic from the stored rows only
            logic = IntervalJoinLogic(spec, stored_l, stored_r, watermark=watermark)
    emitted.append(logic.on_batch(pl.DataFrame(schema=LEFT), pl.DataFrame(schema=RIGHT), watermark_before=watermark, watermark_after=2**62).pairs)
    assert _sorted(pl.concat(emitted)).equals(_sorted(whole))
