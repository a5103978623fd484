"""A pipeline that cannot run fails where it is defined, before any record is read, naming the step and column."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

import lockgate as lg

UNREACHABLE = "127.0.0.1:1"  # nothing listens: any attempt to read would fail differently


@pytest.fixture
def clicks() -> lg.Stream:
    pipe = lg.Pipeline("defs", brokers=UNREACHABLE, state="/nonexistent/never-written")
    return pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "url": pl.String, "n": pl.Int64}))


def test_an_unknown_column_in_filter_names_the_operator_and_the_column(clicks):
    with pytest.raises(lg.PipelineDefinitionError, match=r"filter 'filter_1': unknown column 'nope'; the input has columns"):
        clicks.filter(pl.col("nope") > 1)


def test_an_unknown_column_in_with_columns_and_select_is_caught_too(clicks):
    with pytest.raises(lg.PipelineDefinitionError, match=r"with_columns 'enrich': unknown column 'missing'"):
        clicks.with_columns(x=pl.col("missing") + 1, name="enrich")
    with pytest.raises(lg.PipelineDefinitionError, match=r"select 'select_1': unknown column 'gone'"):
        clicks.select("user", "gone")


def test_a_wrong_type_fails_at_definition_with_the_polars_reason(clicks):
    with pytest.raises(lg.PipelineDefinitionError, match=r"with_columns 'with_columns_1': arithmetic on dtypes str"):
        clicks.with_columns(bad=pl.col("user") + 1)
    with pytest.raises(lg.PipelineDefinitionError, match=r"filter 'filter_1'.*Boolean"):
        clicks.filter(pl.col("n"))


def test_a_bad_duration_is_refused_with_the_way_to_write_one():
    pipe = lg.Pipeline("defs", brokers=UNREACHABLE)
    with pytest.raises(lg.PipelineDefinitionError, match=r"watermark: cannot read '5 minutes' as a duration.*'5s'"):
        pipe.source("t", format=lg.JSON(schema={"x": pl.Int64}), watermark="5 minutes")
    with pytest.raises(lg.PipelineDefinitionError, match=r"max_wait.*'soon'"):
        lg.BatchPolicy(max_wait="soon")
    assert lg.BatchPolicy(max_wait=timedelta(milliseconds=20)).max_wait_s == 0.02


def test_a_min_interval_longer_than_max_wait_is_refused_with_both_values_and_the_fix():
    with pytest.raises(lg.PipelineDefinitionError, match=r"min_interval \(200 ms\) is longer than max_wait \(100 ms\).*lower min_interval"):
        lg.BatchPolicy(min_interval="200ms")
    assert lg.BatchPolicy(max_wait="20ms").min_interval_s == 0.05  # the default floor: max_wait, the smaller, closes first
    assert lg.BatchPolicy(min_interval="0ms", max_wait="1s").min_interval_s == 0.0


def test_to_kafka_with_a_missing_key_column_names_the_sink_and_the_column(clicks):
    with pytest.raises(lg.PipelineDefinitionError, match=r"to_kafka 'to_kafka_1': the key column 'account' is not in the stream"):
        clicks.select("url").to_kafka("out", key="account")


def test_event_time_must_be_a_datetime_or_integer_column():
    pipe = lg.Pipeline("defs", brokers=UNREACHABLE)
    with pytest.raises(lg.PipelineDefinitionError, match=r"event_time='when' is not a column"):
        pipe.source("t", format=lg.JSON(schema={"x": pl.Int64}), event_time="when")
    with pytest.raises(lg.PipelineDefinitionError, match=r"event_time column 'x' is String"):
        pipe.source("u", format=lg.JSON(schema={"x": pl.String}), event_time="x")


def test_map_batches_learns_its_schema_from_an_empty_batch(clicks):
    out = clicks.map_batches(lambda df: df.select(pl.col("n") * 3))
    assert out.schema == pl.Schema({"n": pl.Int64})
    with pytest.raises(lg.PipelineDefinitionError, match=r"map_batches 'map_batches_2': the function must return a pl.DataFrame"):
        clicks.map_batches(lambda df: 42)


def test_a_pipeline_without_a_sink_is_refused_before_connecting():
    pipe = lg.Pipeline("defs", brokers=UNREACHABLE)
    pipe.source("t", format=lg.JSON(schema={"x": pl.Int64})).filter(pl.col("x") > 0)
    with pytest.raises(lg.PipelineDefinitionError, match="no sink"):
        pipe.run(until="caught_up")


def test_a_bad_pipeline_name_is_refused():
    with pytest.raises(lg.PipelineDefinitionError, match="pipeline name 'a b'"):
        lg.Pipeline("a b")


def test_step_names_are_unique_and_stable(clicks):
    a = clicks.filter(pl.col("n") > 0)
    b = a.filter(pl.col("n") < 9)
    assert (a.name, b.name) == ("filter_1", "filter_2")
    with pytest.raises(lg.PipelineDefinitionError, match="the name 'filter_1' is taken"):
        clicks.filter(pl.col("n") > 0, name="filter_1")


def test_a_stream_has_no_truth_value(clicks):
    with pytest.raises(TypeError, match="truth value of a lockgate Stream is ambiguous"):
        bool(clicks)


def test_a_json_sink_refuses_binary_columns_and_says_how_to_fix_it(clicks):
    with pytest.raises(lg.PipelineDefinitionError, match=r"to_kafka 'to_kafka_1': lg.JSON cannot write the binary column\(s\) \['raw'\].*base64"):
        clicks.with_columns(raw=pl.col("user").cast(pl.Binary)).to_kafka("out")
