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
