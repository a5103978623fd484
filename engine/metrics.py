"""Counters, gauges and histograms of a running pipeline, read with ``pipe.metrics()``.

Examples
--------
>>> from lockgate.engine.metrics import Metrics
>>> m = Metrics()
>>> m.add("records_in", 3, topic="clicks")
>>> m.snapshot()["records_in"]
{'clicks': 3}
>>> m.observe("commit_seconds", 0.03)
>>> m.snapshot()["histograms"]["commit_seconds"]["count"]
1
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

__all__ = ["Metrics"]

_PER_LABEL = ("records_in", "records_out", "dlq", "table_rows", "late")
_TOTALS = ("batches", "commits", "aborts", "empty_polls")
#: histogram bucket bounds, in seconds
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value
        self.count += 1

    def observe_many(self, values: np.ndarray) -> None:
        """A whole batch's values at once (vectorised: one per record is fine)."""
        if len(values) == 0:
            return
        idx = np.searchsorted(np.asarray(BUCKETS), values, side="left")
        for i, n in enumerate(np.bincount(idx, minlength=len(BUCKETS))[: len(BUCKETS)]):
            self.counts[i] += int(n)
        self.sum += float(values.sum())
        self.count += len(values)

    def snapshot(self) -> dict[str, Any]:
        return {"buckets": list(zip(BUCKETS, self.counts, strict=True)), "sum": self.sum, "count": self.count}


class Metrics:
    """Thread-safe counters; per-topic/table ones keyed by their label."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._labelled: dict[str, dict[str, int]] = {k: defaultdict(int) for k in _PER_LABEL}
        self._totals: dict[str, float] = dict.fromkeys(_TOTALS, 0)
        self._last: dict[str, float] = {}
        self._gauges: dict[str, dict[Hashable, float]] = {}
        self._histograms: dict[str, _Histogram] = defaultdict(_Histogram)

    def add(self, name: str, amount: int = 1, *, topic: str | None = None) -> None:
        """Add to a counter (``topic`` labels the per-topic and per-table ones)."""
        with self._lock:
            if name in self._labelled:
                self._labelled[name][topic or ""] += amount
            else:
                self._totals[name] = self._totals.get(name, 0) + amount

    def set(self, name: str, value: float) -> None:
        """Set a gauge (e.g. ``last_batch_seconds``)."""
        with self._lock:
            self._last[name] = value

    def gauges(self, name: str, values: Mapping[Hashable, float]) -> None:
        """Replace a labelled gauge (e.g. ``lag`` per partition, ``state_rows`` per operator)."""
        with self._lock:
            self._gauges[name] = dict(values)

    def observe(self, name: str, value: float | np.ndarray) -> None:
        """Add one value (or an array of them) to a histogram, in seconds."""
        with self._lock:
            if isinstance(value, np.ndarray):
                self._histograms[name].observe_many(value)
            else:
                self._histograms[name].observe(value)

    def snapshot(self) -> dict[str, Any]:
        """A copy of every counter, gauge and histogram."""
        with self._lock:
            out: dict[str, Any] = {k: dict(v) for k, v in self._labelled.items()}
            out.update(self._totals)
            out.update(self._last)
            out.update({k: dict(v) for k, v in self._gauges.items()})
            out["histograms"] = {k: h.snapshot() for k, h in self._histograms.items()}
            return out
