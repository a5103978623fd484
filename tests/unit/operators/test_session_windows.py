"""Session windows equal a Polars batch computation; a record that bridges two sessions merges them."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lockgate.operators.windows import Session, WindowLogic

from tests.unit.operators.window_oracle import (
    AGGREGATIONS,
    SCHEMA,
    SETTINGS,
    check_fold_equals_a_polars_batch_computation,
    make_spec,
)


@pytest.mark.parametrize(
    "aggs", [pytest.param(aggs, id=f"session-{name}") for name, aggs in AGGREGATIONS.items() if name != "element-wise"]
)
@pytest.mark.parametrize("emit", ["final", "update"])
@SETTINGS
@given(data=st.data())
def test_session_windows_equal_a_polars_batch_computation(aggs, emit, data):
    check_fold_equals_a_polars_batch_computation("session", aggs, emit, data)


def test_session_windows_merge_when_a_record_bridges_two_sessions():
    spec = make_spec(Session("5s"), {"n": pl.len(), "s": pl.col("x").sum()}, "update")
    logic = WindowLogic(spec)
    one = logic.on_batch(pl.DataFrame({"k": ["a", "a"], "x": [1, 2], "y": [0.0, 0.0], "t": [0, 8_000], "z": ["a", "b"]}, schema=SCHEMA), None)
    assert sorted(one.emitted["n"].to_list()) == [1, 1]
    two = logic.on_batch(pl.DataFrame({"k": ["a"], "x": [3], "y": [0.0], "t": [4_000], "z": ["c"]}, schema=SCHEMA), None)
    updates = two.emitted.filter(~pl.col("retracted"))
    assert updates.select("n", "s").to_dicts() == [{"n": 3, "s": 6}]
    assert updates["window_end"].dt.epoch("ms").to_list() == [13_000]
    retracted = two.emitted.filter(pl.col("retracted"))
    assert retracted["window_start"].dt.epoch("ms").to_list() == [8_000], "the merged-away session is retracted"
    assert logic.state.partials.height == 1
