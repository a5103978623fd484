"""Stateless operators over whole batches, with no broker: what each applies, and the errors they raise at definition."""

from __future__ import annotations

import polars as pl
import pytest

from lockgate.errors import PipelineDefinitionError
from lockgate.operators.stateless import Filter, MapBatches, Select, WithColumns

SCHEMA = pl.Schema({"user": pl.String, "n": pl.Int64})
BATCH = pl.DataFrame({"user": ["a", "b", "c"], "n": [1, 2, 3]}, schema=SCHEMA)


def test_filter_keeps_the_rows_where_the_predicate_holds_and_refuses_a_non_boolean_predicate():
    assert Filter("f", pl.col("n") > 1).apply(BATCH.lazy()).collect()["user"].to_list() == ["b", "c"]
    with pytest.raises(PipelineDefinitionError, match=r"filter 'f': .*Boolean.*Int64.*input columns"):
        Filter("f", pl.col("n") + 1).resolve(SCHEMA)


def test_with_columns_and_select_apply_positional_and_named_expressions_and_resolve_the_schema():
    added = WithColumns("w", exprs=(pl.col("n").alias("m"),), named={"twice": pl.col("n") * 2})
    assert added.apply(BATCH.lazy()).collect().row(2) == ("c", 3, 3, 6)
    assert added.resolve(SCHEMA) == pl.Schema({"user": pl.String, "n": pl.Int64, "m": pl.Int64, "twice": pl.Int64})
    chosen = Select("s", exprs=("user",), named={"big": pl.col("n") > 1})
    assert chosen.apply(BATCH.lazy()).collect().rows() == [("a", False), ("b", True), ("c", True)]
    with pytest.raises(PipelineDefinitionError, match=r"select 's2': unknown column 'nope'; the input has columns \['user', 'n'\]"):
        Select("s2", exprs=("nope",)).resolve(SCHEMA)


def test_operators_with_expression_dicts_hash_by_name_so_a_plan_can_key_on_them():
    one, other = WithColumns("w", named={"x": pl.lit(1)}), Select("s", named={"x": pl.lit(1)})
    assert {one: 1, other: 2}[one] == 1 and hash(one) == hash("w")


def test_map_batches_runs_any_function_and_names_one_that_fails_on_an_empty_batch():
    double = MapBatches("m", fn=lambda df: df.with_columns(pl.col("n") * 2))
    assert double.apply(BATCH.lazy()).collect()["n"].to_list() == [2, 4, 6]
    assert double.resolve(SCHEMA) == SCHEMA
    with pytest.raises(PipelineDefinitionError, match=r"map_batches 'bad': the function failed on an empty batch .*pass schema="):
        MapBatches("bad", fn=lambda df: df.row(0)).resolve(SCHEMA)  # type: ignore[arg-type, return-value]
