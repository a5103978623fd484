"""Sliding windows (one per record, looking back ``size``) equal a Polars batch computation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.operators.window_oracle import AGGREGATIONS, SETTINGS, check_fold_equals_a_polars_batch_computation


@pytest.mark.parametrize(
    "aggs", [pytest.param(aggs, id=f"sliding-{name}") for name, aggs in AGGREGATIONS.items() if name != "element-wise"]
)
@pytest.mark.parametrize("emit", ["final", "update"])
@SETTINGS
@given(data=st.data())
def test_sliding_windows_equal_a_polars_batch_computation(aggs, emit, data):
    check_fold_equals_a_polars_batch_computation("sliding", aggs, emit, data)
