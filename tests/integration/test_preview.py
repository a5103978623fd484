"""``pipe.preview(n)``: the plan over the next n records, and nothing produced, written or committed."""

from __future__ import annotations

import polars as pl
import pytest

import lockgate as lg
from tests.conftest import json_frame, json_values, produce, read_committed

pytestmark = pytest.mark.kafka


def test_preview_shows_what_the_sinks_would_get_and_commits_nothing(brokers, make_topic, state_dir, unique):
    topic = make_topic(f"pv-in-{unique}", partitions=1)  # one partition: "the next n records" is one sequence
    produce(brokers, topic, json_values([{"n": i, "page": f"/p{i % 3}"} for i in range(100)]))
    pipe = lg.Pipeline(f"pv-{unique}", brokers=brokers, state=state_dir)
    src = pipe.source(topic, format=lg.JSON(schema={"n": pl.Int64, "page": pl.String}))
    odd = src.filter(pl.col("n") % 2 == 1).with_columns(double=pl.col("n") * 2)
    odd.to_kafka(f"pv-out-{unique}")
    odd.to_table("odd")

    first = pipe.preview(10)
    assert set(first) == {f"pv-out-{unique}", "odd"}
    rows = first["odd"]
    assert rows.columns[-3:] == ["n", "page", "double"] and 0 < rows.height <= 10
    assert (rows["n"] % 2 == 1).all() and (rows["double"] == rows["n"] * 2).all()
    # nothing left the preview: no table, no output records, no committed offsets (the run reads everything)
    with pytest.raises(lg.StorageError):
        lg.read_table(state_dir, "odd").collect()
    assert pipe.preview(10)["odd"]["n"].to_list() == rows["n"].to_list(), "the same next records again"
    summary = pipe.run(until="caught_up", timeout=120)
    assert summary.records == 100
    assert sorted(json_frame(read_committed(brokers, f"pv-out-{unique}"), {"n": pl.Int64})["n"].to_list()) == list(range(1, 100, 2))
    # after the run, the next records are the new ones
    produce(brokers, topic, json_values([{"n": 1001, "page": "/new"}]))
    assert pipe.preview(5, timeout=5)["odd"]["n"].to_list() == [1001]


def test_preview_of_a_window_starts_from_the_committed_state_and_leaves_it_alone(brokers, make_topic, state_dir, unique):
    topic = make_topic(f"pvw-in-{unique}", partitions=1)
    base = 1_700_000_000_000
    produce(brokers, topic, json_values([{"user": "a", "ts": base + i * 1_000} for i in range(30)]))
    pipe = lg.Pipeline(f"pvw-{unique}", brokers=brokers, state=state_dir)
    events = pipe.source(topic, format=lg.JSON(schema={"user": pl.String, "ts": pl.Datetime("ms")}), event_time="ts", watermark="1s")
    events.window(lg.Tumbling("1m"), by="user", name="w", emit="update").agg(n=pl.len()).to_table("counts")
    pipe.run(until="caught_up", timeout=120)
    before = lg.read_state(state_dir, pipe.name, "w").collect()
    assert before["n"].to_list() == [30]
    produce(brokers, topic, json_values([{"user": "a", "ts": base + 35_000 + i} for i in range(5)]))  # the same minute
    preview = pipe.preview(5, timeout=5)["counts"]
    assert preview["n"].to_list() == [35], "the preview folds into the committed state"
    assert lg.read_state(state_dir, pipe.name, "w").collect()["n"].to_list() == [30], "which it does not change"
    assert lg.read_table(state_dir, "counts").collect()["n"].to_list() == [30]


def test_preview_of_a_missing_topic_names_it_and_the_fix(brokers, state_dir, unique):
    pipe = lg.Pipeline(f"pv-missing-{unique}", brokers=brokers, state=state_dir)
    pipe.source(f"pv-nowhere-{unique}", format=lg.JSON(schema={"n": pl.Int64})).to_table("t")
    with pytest.raises(lg.PipelineDefinitionError, match=rf"preview: source topic 'pv-nowhere-{unique}' does not exist.*lockgate sample"):
        pipe.preview(5)
