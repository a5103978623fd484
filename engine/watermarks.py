"""Per-partition event-time watermarks with an idle timeout.

A partition's watermark is the maximum event time seen in it minus the source's
``watermark`` delay.  A source's watermark is the minimum over its assigned
partitions that had records within ``idle_timeout`` (processing time), or that
still hold records not read (the *backlog*, from the consumer's positions): a
silent partition does not hold windows open forever, but one that waits for its
turn in the consumer's fetch queue is not silent, and its records are not made
late by the others.  When every partition is idle, the source's watermark is the
maximum over them.  Watermarks never go back.

Examples
--------
>>> import polars as pl
>>> from lockgate.engine.watermarks import SourceWatermark
>>> wm = SourceWatermark(delay_ms=5_000, idle_ms=30_000)
>>> wm.assign([("clicks", 0), ("clicks", 1)], now=0.0)
>>> sorted(wm.observe(pl.DataFrame({"_topic": ["clicks"] * 2, "_partition": [0, 1], "__lg_t": [60_000, 50_000]}), now=1.0).items())
[(('clicks', 0), 60000), (('clicks', 1), 50000)]
>>> wm.current(now=2.0)        # min(60 s, 50 s) - 5 s
45000
>>> wm.backlog = {("clicks", 1)}
>>> wm.current(now=40.0)       # partition 1 still has records to read: it holds the watermark
45000
>>> wm.backlog = set()
>>> wm.current(now=40.0)       # both idle: the maximum
55000
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import polars as pl
from lockgate.engine.columns import PARTITION, TOPIC

__all__ = ["SourceWatermark"]


class SourceWatermark:
    """The watermark of one source, from its partitions' maximum event times."""

    def __init__(self, delay_ms: int, idle_ms: int, floor: int | None = None) -> None:
        self.delay_ms = delay_ms
        self.idle_ms = idle_ms
        self.max_event: dict[tuple[str, int], int | None] = {}
        self.last_seen: dict[tuple[str, int], float] = {}
        #: the watermark emitted so far; ``floor``: where a rebuilt tracker starts (the last committed watermark)
        self._emitted: int | None = floor
        #: partitions with records not read yet (set before each batch): never idle
        self.backlog: set[tuple[str, int]] = set()

    def assign(self, partitions: Iterable[tuple[str, int]], now: float, restored: Mapping[tuple[str, int], int] | None = None) -> None:
        """Partitions this instance now owns, with their restored maximum event times."""
        for tp in partitions:
            self.max_event.setdefault(tp, None)
            if restored and tp in restored and restored[tp] is not None:
                current = self.max_event[tp]
                self.max_event[tp] = restored[tp] if current is None else max(current, restored[tp])
            self.last_seen[tp] = now

    def revoke(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions this instance no longer owns."""
        for tp in partitions:
            self.max_event.pop(tp, None)
            self.last_seen.pop(tp, None)

    def observe(self, frame: pl.DataFrame, now: float, time_column: str = "__lg_t") -> dict[tuple[str, int], int]:
        """Take a batch's event times (one group_by); returns the new maxima of the partitions it touched."""
        if frame.height == 0:
            return {}
        tops = frame.group_by(TOPIC, PARTITION).agg(pl.col(time_column).max())
        touched = {}
        for topic, partition, top in tops.iter_rows():  # one row per partition, not per record
            if top is None:  # a partition whose records all lack an event time
                continue
            tp = (topic, partition)
            current = self.max_event.get(tp)
            self.max_event[tp] = top if current is None else max(current, top)
            self.last_seen[tp] = now
            touched[tp] = self.max_event[tp]
        return touched

    @property
    def emitted(self) -> int | None:
        """The watermark as last returned by :meth:`current` (None before any)."""
        return self._emitted

    def current(self, now: float) -> int | None:
        """The source's watermark in epoch ms, or None while a live partition has no event time yet."""
        backlog = self.backlog
        live = [tp for tp in self.max_event if tp in backlog or (now - self.last_seen.get(tp, now)) * 1000 < self.idle_ms]
        if live:
            values = [self.max_event[tp] for tp in live]
            if any(v is None for v in values):
                return self._emitted
            candidate = min(v for v in values if v is not None) - self.delay_ms
        else:
            known = [v for v in self.max_event.values() if v is not None]
            if not known:
                return self._emitted
            candidate = max(known) - self.delay_ms
        self._emitted = candidate if self._emitted is None else max(self._emitted, candidate)
        return self._emitted
