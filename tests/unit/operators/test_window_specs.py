"""Window specs: bad definitions fail before any record is read, naming the window and the problem; sizes are durations."""

from __future__ import annotations

import math

import polars as pl
import pytest
from lockgate.errors import PipelineDefinitionError
from lockgate.operators.windows import Hopping, Session, Sliding, Tumbling, WindowSpec

from tests.unit.operators.window_oracle import SCHEMA


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"by": "nope", "aggs": {"n": pl.len()}}, "unknown key column 'nope'"),
        ({"by": "k", "aggs": {"s": pl.col("k").sum()}}, "an aggregation cannot run on the input"),
        ({"by": "k", "aggs": {"s": pl.col("zz").sum()}}, "zz"),
        ({"by": "k", "aggs": {}}, "needs at least one named aggregation"),
        ({"by": "k", "aggs": {"n": pl.len()}, "emit": "sometimes"}, "emit='sometimes'"),
    ],
)
def test_bad_window_definitions_name_the_window_and_the_problem(kwargs, message):
    with pytest.raises(PipelineDefinitionError, match=message):
        WindowSpec.build("w1", Tumbling("1m"), schema=SCHEMA, time_column="t", **kwargs)


def test_window_sizes_must_be_durations():
    with pytest.raises(PipelineDefinitionError, match="lg.Tumbling"):
        Tumbling("a while")
    with pytest.raises(PipelineDefinitionError, match="every <= size"):
        Hopping("1m", "2m")
    assert math.isclose(Hopping("1m", "20s").every_ms, 20_000)


def test_window_kinds_of_the_same_size_stay_distinct_values():
    assert Tumbling("1m") == Tumbling("60s") and hash(Tumbling("1m")) == hash(Tumbling("60s"))
    assert Tumbling("1m") != Sliding("1m")
    assert repr(Sliding("1m")) == "Sliding(size_ms=60000)"
    with pytest.raises(PipelineDefinitionError, match=r"lg\.Sliding\(size\)"):
        Sliding("0s")
    with pytest.raises(PipelineDefinitionError, match=r"lg\.Session\(gap\)"):
        Session("1us")
