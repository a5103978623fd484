"""The hot index of fixed windows' partials: its lookups equal a plain sorted search, at every size; its merges equal Polars'."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lockgate.operators.windows import index as index_module
from lockgate.operators.windows.index import (
    _DIRECTORY_FROM,
    PartialIndex,
    _bucket_search,
    _directory,
)
from polars.testing import assert_frame_equal

SCHEMA = pl.Schema({"k": pl.String, "window_start": pl.Int64, "window_end": pl.Int64, "__n_n": pl.Int64})
MERGE = {"__n_n": pl.col("__n_n").sum()}


def test_the_bucket_search_finds_what_searchsorted_finds_including_misses_and_the_extremes():
    rng = np.random.default_rng(3)
    for n in (_DIRECTORY_FROM, 300_001):
        h = np.sort(rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True))
        needles = np.concatenate(
            [h[rng.integers(0, n, 4_000)], rng.integers(0, 2**64 - 1, 4_000, dtype=np.uint64), np.array([0, 2**64 - 1], dtype=np.uint64)]
        )
        assert np.array_equal(_bucket_search(h, _directory(h), needles), np.searchsorted(h, needles))


@pytest.mark.parametrize("sort", ["numpy", "polars"])
def test_a_large_index_updates_existing_pairs_and_adds_new_ones_exactly(sort, monkeypatch):
    # inserts sort their hashes with NumPy, or with Polars above _PARALLEL_SORT pairs (a state load): both paths, also
    # for the new pairs of an upsert, whose ids start after the loaded ones
    monkeypatch.setattr(index_module, "_PARALLEL_SORT", 0 if sort == "polars" else 10**9)
    n = 3 * _DIRECTORY_FROM  # large enough for the bucket directory
    keys = [f"u{i}" for i in range(n)]
    frame = pl.DataFrame({"k": keys, "window_start": [0] * n, "window_end": [60] * n, "__n_n": [1] * n}, schema=SCHEMA)
    index = PartialIndex.from_frame(frame, ["k"])
    assert index.main_dir is not None
    rng = np.random.default_rng(5)
    touched = [f"u{i}" for i in rng.choice(n, 5_000, replace=False)] + [f"new{i}" for i in range(1_000)]
    changed = index.upsert(
        pl.DataFrame({"k": touched, "window_start": [0] * 6_000, "window_end": [60] * 6_000, "__n_n": [2] * 6_000}, schema=SCHEMA), MERGE
    )
    assert changed.height == 6_000
    counts = dict(zip(*index.frame().select("k", "__n_n").to_dict(as_series=False).values(), strict=True))
    assert len(counts) == n + 1_000
    assert all(counts[k] == 3 for k in touched[:5_000])
    assert all(counts[f"new{i}"] == 2 for i in range(1_000))
    assert sum(v == 1 for v in counts.values()) == n - 5_000
    # the new pairs are found again: their ids in the index point at their rows
    again = [f"new{i}" for i in range(1_000)]
    index.upsert(pl.DataFrame({"k": again, "window_start": [0] * 1_000, "window_end": [60] * 1_000, "__n_n": [5] * 1_000}, schema=SCHEMA), MERGE)
    counts = dict(zip(*index.frame().select("k", "__n_n").to_dict(as_series=False).values(), strict=True))
    assert len(counts) == n + 1_000 and all(counts[k] == 7 for k in again)


PARTIALS = pl.Schema({
    "k": pl.String, "window_start": pl.Int64, "window_end": pl.Int64,
    "__n_n": pl.Int64, "__s_s": pl.Float64, "__lo_v": pl.Int64, "__hi_v": pl.Float64,
    "__f_v": pl.Float64, "__f_o": pl.Int64, "__l_v": pl.Int64, "__l_o": pl.Int64, "__b_v": pl.Boolean,
})
POLARS_MERGES = {
    "__n_n": pl.col("__n_n").sum(), "__s_s": pl.col("__s_s").sum(), "__lo_v": pl.col("__lo_v").min(),
    "__hi_v": pl.col("__hi_v").max(), "__f_v": pl.col("__f_v").sort_by("__f_o").first(), "__f_o": pl.col("__f_o").min(),
    "__l_v": pl.col("__l_v").sort_by("__l_o").last(), "__l_o": pl.col("__l_o").max(), "__b_v": pl.col("__b_v").max(),
}
ELEMENTWISE = {
    "__n_n": ("add", None), "__s_s": ("add", None), "__lo_v": ("min", None), "__hi_v": ("max", None),
    "__f_v": ("first", "__f_o"), "__f_o": ("min", None), "__l_v": ("last", "__l_o"), "__l_o": ("max", None), "__b_v": ("max", None),
}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_element_wise_merges_equal_the_polars_group_merges_with_nulls_and_nans(data):
    """Each batch's partials of random keys, merged in place, give the rows the Polars aggregation gives."""
    floats = st.one_of(st.none(), st.floats(-1e6, 1e6), st.just(float("nan")))
    ints = st.one_of(st.none(), st.integers(-(2**40), 2**40))
    seq = iter(range(10**6))
    by_polars, by_numpy = PartialIndex(PARTIALS, ["k"]), PartialIndex(PARTIALS, ["k"])
    for _ in range(data.draw(st.integers(1, 6))):
        keys = data.draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True))
        rows = [
            {"k": k, "window_start": 0, "window_end": 60, "__n_n": data.draw(st.integers(0, 9)), "__s_s": data.draw(floats) or 0.0,
             "__lo_v": data.draw(ints), "__hi_v": data.draw(floats), "__f_v": data.draw(floats), "__f_o": next(seq),
             "__l_v": data.draw(ints), "__l_o": next(seq), "__b_v": data.draw(st.one_of(st.none(), st.booleans()))}
            for k in keys
        ]
        batch = pl.DataFrame(rows, schema=PARTIALS)
        expected = by_polars.upsert(batch, POLARS_MERGES)
        got = by_numpy.upsert(batch, POLARS_MERGES, ELEMENTWISE)
        assert_frame_equal(got, expected, check_exact=True)
    assert_frame_equal(by_numpy.frame().sort("k"), by_polars.frame().sort("k"), check_exact=True)
