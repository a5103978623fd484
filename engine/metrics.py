"""Counters of a running pipeline, read with ``pipe.metrics()``.

Examples
--------
>>> from lockgate.engine.metrics import Metrics
>>> m = Metrics()
>>> m.add("records_in", 3, topic="clicks")
>>> m.snapshot()["records_in"]
{'clicks': 3}
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

__all__ = ["Metrics"]

_PER_LABEL = ("records_in", "records_out", "dlq", "table_rows", "late")
_TOTALS = ("batches", "commits", "aborts", "empty_polls")


class Metrics:
    """Thread-safe counters; per-topic/table ones keyed by their label."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._labelled: dict[str, dict[str, int]] = {k: defaultdict(int) for k in _PER_LABEL}
        self._totals: dict[str, float] = dict.fromkeys(_TOTALS, 0)
        self._last: dict[str, float] = {}

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

    def snapshot(self) -> dict[str, Any]:
        """A copy of every counter and gauge."""
        with self._lock:
            out: dict[str, Any] = {k: dict(v) for k, v in self._labelled.items()}
            out.update(self._totals)
            out.update(self._last)
            return out
