"""Tumbling and hopping windows equal a Polars batch computation; late records are reported; the hot index holds up."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lockgate.operators.windows import Tumbling, WindowLogic, WindowSpec

from tests.unit.operators.window_oracle import (
    AGGREGATIONS,
    FAR,
    SCHEMA,
    SETTINGS,
    check_fold_equals_a_polars_batch_computation,
    make_spec,
)


@pytest.mark.parametrize(
    ("kind", "aggs"),
    [pytest.param(kind, aggs, id=f"{kind}-{name}") for kind in ("tumbling", "hopping") for name, aggs in AGGREGATIONS.items()],
)
@pytest.mark.parametrize("emit", ["final", "update"])
@SETTINGS
@given(data=st.data())
def test_fixed_windows_equal_a_polars_batch_computation(kind, aggs, emit, data):
    check_fold_equals_a_polars_batch_computation(kind, aggs, emit, data)


def test_a_global_window_groups_everything():
    spec = WindowSpec.build("g", Tumbling("1m"), by=None, aggs={"n": pl.len()}, schema=SCHEMA, time_column="t")
    batch = pl.DataFrame({"k": ["a", "b"], "x": [1, 2], "y": [1.0, 2.0], "t": [0, 1_000], "z": ["a", "b"]}, schema=SCHEMA)
    out = WindowLogic(spec).on_batch(batch, FAR).emitted
    assert out.columns == ["window_start", "window_end", "n"]
    assert out["n"].to_list() == [2]


def test_a_late_record_of_a_closed_tumbling_window_is_reported_not_merged():
    spec = make_spec(Tumbling("10s"), {"n": pl.len()}, "final")
    logic = WindowLogic(spec)
    first = logic.on_batch(pl.DataFrame({"k": ["a"], "x": [1], "y": [0.0], "t": [5_000], "z": ["a"]}, schema=SCHEMA), 10_000)
    assert first.emitted["n"].to_list() == [1]
    second = logic.on_batch(pl.DataFrame({"k": ["a"], "x": [2], "y": [0.0], "t": [9_000], "z": ["a"]}, schema=SCHEMA), 10_000)
    assert second.late["x"].to_list() == [2]
    assert second.emitted.height == 0


def test_the_hot_index_finds_pairs_across_many_batches_and_sweeps_closed_ones():
    spec = make_spec(Tumbling("10s"), {"n": pl.len(), "s": pl.col("x").sum()}, "final")
    logic = WindowLogic(spec)
    total = {}
    for b in range(30):  # 30 batches over 200 keys and 3 windows: inserts, updates, a merge of the index
        keys = [f"k{(b * 37 + i) % 200}" for i in range(150)]
        ts = [(b // 10) * 10_000 + i for i in range(150)]
        batch = pl.DataFrame({"k": keys, "x": list(range(150)), "y": [0.0] * 150, "t": ts, "z": keys}, schema=SCHEMA)
        for k, t, x in zip(keys, ts, range(150)):
            total[(k, t // 10_000)] = total.get((k, t // 10_000), 0) + x
        logic.on_batch(batch, None)
    assert logic.state.index is not None and len(logic.state.index) == len(total)
    out = logic.on_batch(pl.DataFrame(schema=SCHEMA), FAR)
    got = {(k, ws // 10_000): s for k, ws, s in out.emitted.select("k", pl.col("window_start").dt.epoch("ms"), "s").iter_rows()}
    assert got == total
    assert len(logic.state.index) == 0


def test_a_window_opened_by_an_on_time_batch_is_the_same_pair_when_a_batch_with_a_late_record_updates_it(monkeypatch):
    """The one-query path (no late row) hashes pairs as the general path does: one pair per window, counts merged."""
    from lockgate.operators.windows import fixed

    paths = []
    monkeypatch.setattr(fixed, "_tumbling_partials", _recording(fixed._tumbling_partials, paths, "one query"))
    monkeypatch.setattr(fixed, "assign", _recording(fixed.assign, paths, "general"))
    spec = make_spec(Tumbling("10s"), {"n": pl.len(), "s": pl.col("x").sum()}, "update")
    logic = WindowLogic(spec)

    def batch(ks, xs, ts):
        return pl.DataFrame({"k": ks, "x": xs, "y": [0.0] * len(ks), "t": ts, "z": ks}, schema=SCHEMA)

    first = logic.on_batch(batch(["a", "b", "a"], [1, 2, 3], [21_000, 22_000, 23_000]), 20_000)
    assert paths == ["one query"]
    assert sorted(first.emitted.select("k", "n", "s").rows()) == [("a", 2, 4), ("b", 1, 2)]
    # 5_000 is late (its window [0, 10s) closed at 20s); 24_000 updates a's open window
    second = logic.on_batch(batch(["a", "a"], [10, 20], [5_000, 24_000]), 20_000)
    assert paths == ["one query", "general"]
    assert second.late["x"].to_list() == [10]
    assert second.emitted.select("k", "n", "s").rows() == [("a", 3, 24)]
    third = logic.on_batch(batch(["a", "b"], [100, 200], [25_000, 26_000]), 20_000)
    assert paths[-1] == "one query"
    assert sorted(third.emitted.select("k", "n", "s").rows()) == [("a", 4, 124), ("b", 2, 202)]
    assert logic.state.index is not None and logic.state.index.live == 2


def _recording(fn, paths, name):
    def wrapper(*args, **kwargs):
        paths.append(name)
        return fn(*args, **kwargs)

    return wrapper


def test_the_one_query_fold_runs_on_polars_in_memory_engine_not_the_streaming_default(monkeypatch):
    engines = []
    collect = pl.LazyFrame.collect

    def recording(self, *args, **kwargs):
        engines.append(kwargs.get("engine", "auto"))
        return collect(self, *args, **kwargs)

    monkeypatch.setattr(pl.LazyFrame, "collect", recording)
    spec = make_spec(Tumbling("10s"), {"n": pl.len()}, "update")
    batch = pl.DataFrame({"k": ["a", "b"], "x": [1, 2], "y": [0.0, 0.0], "t": [21_000, 22_000], "z": ["a", "b"]}, schema=SCHEMA)
    WindowLogic(spec).on_batch(batch, 20_000)
    assert "in-memory" in engines and "auto" not in engines
