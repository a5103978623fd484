"""Plan execution without a broker: ``run_plan`` over dataframes, and the event time computed once per batch."""

from __future__ import annotations

import random

import polars as pl
import pytest

import lockgate as lg
from lockgate.engine import stateful
from lockgate.engine.decode import BatchDecoder
from lockgate.engine.execution import operate, run_plan
from lockgate.engine.source import RawBatch
from lockgate.engine.stateful import WindowRuntime
from lockgate.storage.commit_log import CommitLog

SCHEMA = {"user": pl.String, "n": pl.Int64, "t": pl.Int64}


def _pipe(tmp_path) -> lg.Pipeline:
    return lg.Pipeline("exec", brokers="127.0.0.1:1", state=str(tmp_path))  # never reached: nothing here talks to Kafka


def test_stateless_steps_run_over_frames_and_each_sink_gets_its_rows(tmp_path):
    pipe = _pipe(tmp_path)
    src = pipe.source("clicks", format=lg.JSON(schema=SCHEMA))
    odd = src.filter(pl.col("n") % 2 == 1).with_columns(double=pl.col("n") * 2)
    odd.to_kafka("odd-out", key="user")
    src.to_table("users")
    frame = pl.DataFrame({"user": ["a", "b", "c", "d"], "n": [1, 2, 3, 4], "t": [0, 0, 0, 0]})
    out = run_plan(pipe.plan(), [{"clicks": frame[:2]}, {"clicks": frame[2:]}])
    assert set(out) == {"odd-out", "users"}
    assert out["odd-out"].select("user", "n", "double").rows() == [("a", 1, 2), ("c", 3, 6)]
    assert out["users"]["user"].to_list() == ["a", "b", "c", "d"]
    # the Kafka columns are filled: the topic, partition 0, offsets counting up across the batches
    assert out["users"].select("_topic", "_partition", "_offset").rows() == [("clicks", 0, i) for i in range(4)]


@pytest.mark.parametrize("kind", ["tumbling", "hopping"])
def test_windows_over_many_batches_equal_a_polars_group_by_and_close_at_the_end_of_the_input(tmp_path, kind):
    rng = random.Random(7)
    rows = pl.DataFrame({
        "user": [rng.choice("abcde") for _ in range(600)],
        "n": [rng.randrange(100) for _ in range(600)],
        "t": sorted(rng.randrange(0, 300_000) for _ in range(600)),  # in order: nothing is late
        "_partition": [rng.randrange(3) for _ in range(600)],
    })
    window = lg.Tumbling("1m") if kind == "tumbling" else lg.Hopping("1m", every="30s")
    pipe = _pipe(tmp_path)
    src = pipe.source("clicks", format=lg.JSON(schema=SCHEMA), event_time="t", watermark="0s")
    src.window(window, by="user").agg(count=pl.len(), total=pl.col("n").sum()).to_table("per_window")
    cuts = sorted(rng.sample(range(1, 600), 9))
    batches = [{"clicks": part} for part in (rows[a:b] for a, b in zip([0, *cuts], [*cuts, 600], strict=True))]

    out = run_plan(pipe.plan(), batches)["per_window"]

    size, every = 60_000, 60_000 if kind == "tumbling" else 30_000
    starts = [pl.col("t") // every * every - k * every for k in range(size // every)]
    oracle = (
        rows.with_columns(pl.concat_list(starts).alias("window_start")).explode("window_start")
        .filter(pl.col("window_start") + size > pl.col("t"))
        .group_by("user", "window_start").agg(count=pl.len(), total=pl.col("n").sum())
    )
    got = out.select("user", pl.col("window_start").dt.epoch("ms"), "count", "total")
    assert got.sort("user", "window_start").rows() == oracle.sort("user", "window_start").rows()
    # without the end of the input, the last windows stay open: nothing emits them
    assert run_plan(pipe.plan(), batches, end_of_input=False)["per_window"].height < got.height


def test_late_rows_go_to_the_dead_letters_with_the_reason(tmp_path):
    pipe = _pipe(tmp_path)
    src = pipe.source("clicks", format=lg.JSON(schema=SCHEMA), event_time="t")
    src.window(lg.Tumbling("10s"), by="user").agg(count=pl.len()).to_table("counts")
    src.dead_letters().to_table("dead")
    first = pl.DataFrame({"user": ["a"], "n": [1], "t": [25_000]})
    late = pl.DataFrame({"user": ["a"], "n": [2], "t": [1_000]})  # [0, 10 s) closed at watermark 25 s
    out = run_plan(pipe.plan(), [{"clicks": first}, {"clicks": late}])
    assert out["dead"].select("reason", "_offset").rows() == [("late", 1)]
    assert out["counts"]["count"].to_list() == [1]


def test_a_table_join_reads_the_rows_given_for_the_table(tmp_path):
    pipe = _pipe(tmp_path)
    users = pipe.table("users", key="user", format=lg.JSON(schema={"user": pl.String, "country": pl.String}))
    src = pipe.source("clicks", format=lg.JSON(schema=SCHEMA))
    src.join(users, on="user").to_table("joined")
    out = run_plan(
        pipe.plan(), {"clicks": pl.DataFrame({"user": ["a", "b"], "n": [1, 2], "t": [0, 0]})},
        tables={"users": pl.DataFrame({"user": ["a"], "country": ["NL"]})},
    )
    assert out["joined"].select("user", "country").rows() == [("a", "NL"), ("b", None)]


def test_run_plan_names_what_is_wrong_with_its_input(tmp_path):
    pipe = _pipe(tmp_path)
    users = pipe.table("users", key="user", format=lg.JSON(schema={"user": pl.String, "country": pl.String}))
    pipe.source("clicks", format=lg.JSON(schema=SCHEMA)).join(users, on="user").to_table("joined")
    frame = pl.DataFrame({"user": ["a"], "n": [1], "t": [0]})
    with pytest.raises(lg.PipelineDefinitionError, match=r"\['views'\] are not source topics of the plan; its sources read \['clicks'\]"):
        run_plan(pipe.plan(), {"views": frame}, tables={"users": frame.select("user")})
    with pytest.raises(lg.PipelineDefinitionError, match=r"lacks the value columns \['t'\]"):
        run_plan(pipe.plan(), {"clicks": frame.drop("t")}, tables={"users": frame.select("user")})
    with pytest.raises(lg.PipelineDefinitionError, match=r"joins table 'users'.*tables=\{'users': frame\}"):
        run_plan(pipe.plan(), {"clicks": frame})


def test_a_window_fed_by_its_source_reuses_the_event_times_decoded_once(tmp_path, monkeypatch):
    pipe = _pipe(tmp_path)
    src = pipe.source("clicks", format=lg.JSON(schema=SCHEMA), event_time="t", key="user")
    src.window(lg.Tumbling("10s"), by="user").agg(count=pl.len()).to_table("counts")
    plan = pipe.plan()
    raw = RawBatch(topic="clicks", topics=None, partitions=[0, 0], offsets=[0, 1], timestamps=[0, 0], keys=[None, None],
                   values=[b'{"user": "a", "n": 1, "t": 1000}', b'{"user": "a", "n": 2, "t": 12000}'])
    batch = BatchDecoder(plan).decode(raw)
    assert batch.event_times["clicks"]["__lg_t"].to_list() == [1000, 12000]

    def derive_again(*args, **kwargs):
        raise AssertionError("the window derived the event time again")

    monkeypatch.setattr(stateful, "event_time_ms", derive_again)
    windows = WindowRuntime("exec", str(tmp_path), plan, CommitLog(str(tmp_path)))
    windows.assign({("clicks", 0)}, 0.0)
    windows.load(0.0)
    out = operate(plan, batch, {}, windows, 0.0)
    assert out[plan.sinks[0].name].select("user", "count").rows() == [("a", 1)]  # [0, 10 s) closed at 12 s
    assert windows.event_times() == {("clicks", 0): 12000}
