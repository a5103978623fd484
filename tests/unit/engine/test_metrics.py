"""Histograms report p50 and p99 within 1 % of the exact percentile, kept batch-wise in fixed memory."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lockgate.engine.metrics import Metrics


def _nearest_rank(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q, method="inverted_cdf"))


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        arrays(np.float64, st.integers(1, 300), elements=st.floats(1e-5, 5_000.0, allow_nan=False, allow_infinity=False)),
        min_size=1, max_size=5,
    )
)
def test_p50_and_p99_are_within_one_percent_of_the_exact_percentiles(batches):
    metrics = Metrics()
    for batch in batches:
        metrics.observe("latency_seconds", batch)
    hist = metrics.snapshot()["histograms"]["latency_seconds"]
    values = np.concatenate(batches)
    assert hist["count"] == len(values)
    for key, q in (("p50", 0.5), ("p99", 0.99)):
        exact = _nearest_rank(values, q)
        assert abs(hist[key] - exact) <= 0.0101 * exact, (key, hist[key], exact)


def test_single_observations_and_batches_give_the_same_percentiles():
    values = np.random.default_rng(7).lognormal(-3, 1.5, 5_000)
    one_by_one, batched = Metrics(), Metrics()
    for v in values:
        one_by_one.observe("commit_seconds", float(v))
    batched.observe("commit_seconds", values)
    a, b = one_by_one.snapshot()["histograms"]["commit_seconds"], batched.snapshot()["histograms"]["commit_seconds"]
    assert (a["p50"], a["p99"], a["count"]) == (b["p50"], b["p99"], b["count"])


def test_percentiles_stay_inside_what_was_observed():
    metrics = Metrics()
    metrics.observe("commit_seconds", 0.0)  # a latency clipped at 0
    metrics.observe("commit_seconds", 0.0)
    hist = metrics.snapshot()["histograms"]["commit_seconds"]
    assert hist["p50"] == 0.0 and hist["p99"] == 0.0
    metrics.observe("batch_seconds", np.array([1e7]))  # past the fine buckets' top (about 28 hours)
    assert metrics.snapshot()["histograms"]["batch_seconds"]["p99"] == 1e7
