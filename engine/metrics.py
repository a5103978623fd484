"""Counters, gauges and histograms of a running pipeline, read with ``pipe.metrics()``.

Examples
--------
>>> from lockgate.engine.metrics import STAGES, Metrics
>>> m = Metrics()
>>> m.add("records_in", 3, topic="clicks")
>>> m.snapshot()["records_in"]
{'clicks': 3}
>>> m.observe("commit_seconds", 0.03)
>>> m.snapshot()["histograms"]["commit_seconds"]["count"]
1
>>> import numpy as np
>>> m.observe("latency_seconds", np.arange(1, 1001) / 1000)   # one batch: 1 ms ... 1 s
>>> q = m.snapshot()["histograms"]["latency_seconds"]
>>> abs(q["p50"] - 0.5) <= 0.005, abs(q["p99"] - 0.99) <= 0.0099   # within 1 %
(True, True)

Each stage of an epoch has its own histogram (``STAGES``), one value per committed epoch:

>>> m.observe("stage_prepare_seconds", 0.004)
>>> sorted(STAGES)[:3], m.snapshot()["histograms"]["stage_prepare_seconds"]["p99"]
(['stage_commit_seconds', 'stage_decode_seconds', 'stage_mark_seconds'], 0.004)
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

__all__ = ["STAGES", "Metrics"]

_PER_LABEL = ("records_in", "records_out", "dlq", "table_rows", "late")
_TOTALS = ("batches", "commits", "aborts", "empty_polls")
#: the stages of an epoch, each a histogram in seconds: name -> where it starts and ends.
#: The runner observes every stage of an epoch when the epoch's Kafka commit has succeeded
#: (``stage_prepare_seconds``, ``stage_mark_seconds`` and ``stage_materialized_seconds`` when
#: its rows and mark are written to LanceDB), so after a run each count is the number of
#: committed batches.  Timing is a clock read at each end, per batch: nothing per record.
STAGES = {
    "stage_wait_seconds": "the call of the poll that returned the batch, to the batch closed (full, max_wait after its first "
    "record, or the commit before it settled: KafkaSource.poll)",
    # the poll reads in slices of at most 5 ms, so "first records" is within 5 ms of when they were there to read
    "stage_wait_first_seconds": "the call of that poll to the return of its first consume call that brought records",
    "stage_wait_fill_seconds": "that return to the batch closed (further consume calls, while the commit before it ran)",
    "stage_decode_seconds": "the batch's processing starting (just after the poll) to decoded frames (with one source topic, "
    "chunks decode on a thread during the poll: this is what is left)",
    "stage_operators_seconds": "decoded frames to the epoch built: changelog refresh, operators and window folds, encoding the outputs",
    "stage_settle_wait_seconds": "the runner blocked on the epoch's commit thread when it settled the epoch (before the next "
    "epoch's commit may start, after an empty poll, or at the end of the run): the next batch waits here",
    "stage_prepare_seconds": "EpochTransaction.materialize: the LanceDB appends of table rows and state deltas side by side, "
    "then the commit log's (commit protocol step 4, after the Kafka commit, on the materializer: off the commit path)",
    "stage_produce_seconds": "EpochTransaction.produce: begin_transaction, queueing the outputs and the prepare record, "
    "send_offsets_to_transaction (step 2, on the epoch's commit thread)",
    "stage_commit_seconds": "commit_transaction (step 3, after step 2: it waits for the queued records to be acknowledged)",
    "stage_mark_seconds": "the commit-log append that carries the epoch's prepare rows and its commit mark (the end of "
    "step 4, inside stage_prepare)",
    "stage_materialized_seconds": "the epoch's Kafka commit returned, to its rows and commit mark written to LanceDB "
    "(step 4): how far read_state and read_table trail the output topics",
}
#: histogram bucket bounds, in seconds
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))
#: the percentiles ``snapshot()`` reports per histogram, as ``p50`` and ``p99``
QUANTILES = (0.5, 0.99)
# Percentiles come from a second, fine histogram: logarithmic buckets 2 % wide from 1 us to
# about 28 hours (1,281 counts), so a percentile is within 1 % of the value it stands for
# (the Prometheus buckets above are a factor 2-2.5 apart). Fixed memory, one bincount per batch.
_FINE_MIN = 1e-6
_FINE_GROWTH = 1.02
_FINE_LOG = float(np.log(_FINE_GROWTH))
_FINE_N = int(np.ceil(np.log(1e5 / _FINE_MIN) / _FINE_LOG)) + 1


def _fine_index(values: np.ndarray) -> np.ndarray:
    scaled = np.log(np.maximum(values, _FINE_MIN) / _FINE_MIN) / _FINE_LOG
    return np.minimum(scaled.astype(np.int64), _FINE_N - 1)


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.fine = np.zeros(_FINE_N, dtype=np.int64)
        self.sum = 0.0
        self.count = 0
        self.min = float("inf")
        self.max = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.fine[_fine_index(np.asarray(value, dtype=np.float64))] += 1
        self.sum += value
        self.count += 1
        self.min, self.max = min(self.min, value), max(self.max, value)

    def observe_many(self, values: np.ndarray) -> None:
        """A whole batch's values at once (vectorised: one per record is fine)."""
        if len(values) == 0:
            return
        idx = np.searchsorted(np.asarray(BUCKETS), values, side="left")
        for i, n in enumerate(np.bincount(idx, minlength=len(BUCKETS))[: len(BUCKETS)]):
            self.counts[i] += int(n)
        self.fine += np.bincount(_fine_index(values), minlength=_FINE_N)
        self.sum += float(values.sum())
        self.count += len(values)
        self.min, self.max = min(self.min, float(values.min())), max(self.max, float(values.max()))

    def quantile(self, q: float) -> float | None:
        """The value below which a fraction ``q`` of the observations lie (within 1 %); None before any."""
        if self.count == 0:
            return None
        rank = max(1, int(np.ceil(q * self.count)))  # the rank-th smallest observation (nearest rank)
        i = int(np.searchsorted(np.cumsum(self.fine), rank, side="left"))
        middle = _FINE_MIN * _FINE_GROWTH ** (i + 0.5)  # geometric middle of its bucket
        return min(max(middle, self.min), self.max)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"buckets": list(zip(BUCKETS, self.counts, strict=True)), "sum": self.sum, "count": self.count}
        out.update(min=self.min if self.count else None, max=self.max if self.count else None)
        out.update({f"p{round(q * 100)}": self.quantile(q) for q in QUANTILES})
        return out


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
        """A copy of every counter, gauge and histogram (each with its ``p50``, ``p99``, ``min`` and ``max``, in seconds)."""
        with self._lock:
            out: dict[str, Any] = {k: dict(v) for k, v in self._labelled.items()}
            out.update(self._totals)
            out.update(self._last)
            out.update({k: dict(v) for k, v in self._gauges.items()})
            out["histograms"] = {k: h.snapshot() for k, h in self._histograms.items()}
            return out
