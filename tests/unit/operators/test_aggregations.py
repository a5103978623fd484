"""Aggregation plans: decomposable aggregations are recognised, and their partials merged over any split equal
the aggregation over all rows; anything else keeps rows."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lockgate.operators.windows import classify
from polars.testing import assert_series_equal

KINDS = ["len", "count", "sum", "min", "max", "mean", "var", "std", "first", "last"]


def _expr(kind: str) -> pl.Expr:
    return pl.len() if kind == "len" else getattr(pl.col("x"), kind)()


@pytest.mark.parametrize(
    ("expr", "kind"),
    [(_expr(k), k) for k in KINDS]
    + [(pl.col("x").sum().alias("other"), "sum"), (pl.col("x").n_unique(), "rows"), (pl.col("x").median(), "rows"),
       ((pl.col("x") * 2).sum(), "rows"), (pl.col("x").sum() + pl.col("y").sum(), "rows")],
)
def test_decomposable_aggregations_are_recognised_and_anything_else_keeps_rows(expr, kind):
    assert classify("a", expr).kind == kind


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_partials_merged_over_any_split_equal_the_aggregation_over_all_rows(kind, data):
    values = data.draw(st.lists(st.one_of(st.none(), st.integers(-1_000, 1_000)), min_size=1, max_size=30))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(values) - 1)))))
    rows = pl.DataFrame({"x": values, "__seq": range(len(values))}, schema={"x": pl.Int64, "__seq": pl.Int64})
    agg = classify("a", _expr(kind))
    bounds = [0, *[c for c in cuts if c < len(values)], len(values)]
    parts = [rows.slice(lo, hi - lo).select(**agg.partials()) for lo, hi in zip(bounds, bounds[1:])]
    order = data.draw(st.permutations(range(len(parts))), label="the order in which partials arrive")
    merged = pl.concat([parts[i] for i in order], how="vertical_relaxed").select(**agg.merges())
    got = merged.select(agg.final())["a"]
    expected = rows.select(_expr(kind).alias("a"))["a"]
    assert_series_equal(got, expected, check_dtypes=False, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)
