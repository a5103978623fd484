"""The hot index of fixed windows' partials: its lookups equal a plain sorted search, at every size."""

from __future__ import annotations

import numpy as np
import polars as pl
from lockgate.operators.hotstate import (
    _DIRECTORY_FROM,
    PartialIndex,
    _bucket_search,
    _directory,
)

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


def test_a_large_index_updates_existing_pairs_and_adds_new_ones_exactly():
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
