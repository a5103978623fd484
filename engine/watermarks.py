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

import json
from collections.abc import Iterable, Mapping

import numpy as np
import polars as pl
from lockgate.engine.columns import PARTITION, TOPIC, one_topic

__all__ = ["ShuffledWatermark", "SourceWatermark"]


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
        """Take a batch's event times (NumPy for one topic, else one group_by); returns the new maxima of the partitions it touched."""
        if frame.height == 0:
            return {}
        touched = {}
        times = frame.get_column(time_column)
        topic = one_topic(frame) if times.dtype.is_integer() and not times.null_count() else None
        if topic is not None:  # one topic, no missing event time (the usual batch): per-partition maxima in NumPy, no query
            parts, values = frame.get_column(PARTITION).to_numpy(), times.to_numpy()
            rows = [(topic, int(p), int(values[parts == p].max())) for p in np.unique(parts)]
        else:
            rows = frame.group_by(TOPIC, PARTITION).agg(pl.col(time_column).max()).rows()
        for topic, partition, top in rows:  # one row per partition, not per record
            if top is None:  # a partition whose records all lack an event time
                continue
            tp = (topic, partition)
            current = self.max_event.get(tp)
            self.max_event[tp] = top if current is None else max(current, top)
            self.last_seen[tp] = now
            touched[tp] = self.max_event[tp]
        return touched

    def live(self, tp: tuple[str, int], now: float) -> bool:
        """Whether ``tp`` holds the watermark: records not read yet, or records within ``idle_timeout``."""
        return tp in self.backlog or (now - self.last_seen.get(tp, now)) * 1000 < self.idle_ms

    def report(self, topic: str, now: float) -> dict[int, tuple[int | None, bool]]:
        """Each owned partition of ``topic``: its maximum event time and whether it is live (a repartition mark's content)."""
        return {p: (top, self.live((t, p), now)) for (t, p), top in self.max_event.items() if t == topic}

    @property
    def emitted(self) -> int | None:
        """The watermark as last returned by :meth:`current` (None before any)."""
        return self._emitted

    def current(self, now: float) -> int | None:
        """The source's watermark in epoch ms, or None while a live partition has no event time yet."""
        live = [tp for tp in self.max_event if self.live(tp, now)]
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


class ShuffledWatermark(SourceWatermark):
    """The watermark of a repartition topic, from the marks its records carry (:mod:`lockgate.engine.repartition`).

    A repartition partition mixes the rows of every upstream partition.  Its
    "maximum event time" is what the marks read in it say: once every one of the
    ``upstream`` partitions has been heard of, the minimum over the live ones of
    their maximum event times (an idle upstream partition does not hold it, as on
    a source), and never less than before.  Rows of a repartition partition only
    keep it live (from processing time, as a source's records do).  When every
    repartition partition is silent the watermark stays where the marks put it:
    jumping to the highest maximum a mark reported (as a source does when all its
    partitions are idle) made the rows of an upstream partition still waiting in the
    fetch queue late, and only a mark can say that upstream partitions went idle.
    The restored maxima (the commit log's, after a restart) are where each
    partition starts until the marks have been heard again.

    A stream join's repartition topic has two upstream topics: its marks name theirs
    (``"t"``), and ``upstream`` counts the partitions of both.

    >>> wm = ShuffledWatermark(delay_ms=0, idle_ms=30_000, upstream=2)
    >>> wm.assign([("t-repartition", 0)], now=0.0)
    >>> wm.take_mark(("t-repartition", 0), b'{"p": {"0": [50000, true]}}', now=1.0)
    >>> wm.current(now=1.0) is None              # upstream partition 1 not heard of yet
    True
    >>> wm.take_mark(("t-repartition", 0), b'{"p": {"1": [40000, true]}}', now=1.0)
    >>> wm.current(now=1.0)
    40000
    >>> wm.take_mark(("t-repartition", 0), b'{"p": {"1": [45000, false]}}', now=2.0)   # 1 went idle
    >>> wm.current(now=2.0)
    50000
    """

    def __init__(self, delay_ms: int, idle_ms: int, floor: int | None = None, upstream: int = 0) -> None:
        super().__init__(delay_ms, idle_ms, floor)
        #: how many partitions the upstream topics have (a mark must have named each before it counts)
        self.upstream = upstream
        #: per repartition partition, what the marks read in it say of each upstream (topic, partition)
        self.heard: dict[tuple[str, int], dict[tuple[str, int], tuple[int | None, bool]]] = {}

    def assign(self, partitions: Iterable[tuple[str, int]], now: float, restored: Mapping[tuple[str, int], int] | None = None) -> None:
        partitions = list(partitions)
        super().assign(partitions, now, restored)
        for tp in partitions:
            self.heard.setdefault(tp, {})

    def revoke(self, partitions: Iterable[tuple[str, int]]) -> None:
        partitions = list(partitions)
        super().revoke(partitions)
        for tp in partitions:
            self.heard.pop(tp, None)

    def observe(self, frame: pl.DataFrame, now: float, time_column: str = "__lg_t") -> dict[tuple[str, int], int]:
        """Rows keep their partitions live; their event times move nothing (the marks do)."""
        if frame.height:
            for topic, partition in frame.select(TOPIC, PARTITION).unique().iter_rows():  # one row per partition
                self.last_seen[(topic, partition)] = now
        return {}

    def take_mark(self, tp: tuple[str, int], mark: bytes, now: float) -> None:
        """A mark read in repartition partition ``tp`` (after the rows before it in the partition)."""
        if tp not in self.max_event:
            return  # a partition revoked meanwhile
        heard = self.heard.setdefault(tp, {})
        said = json.loads(mark)
        topic = said.get("t", "")
        for partition, (top, live) in said["p"].items():
            heard[(topic, int(partition))] = (top, bool(live))
        self.last_seen[tp] = now
        tops = [top for top, _ in heard.values() if top is not None]
        if len(heard) < self.upstream:
            return
        live = [top for top, is_live in heard.values() if is_live]
        if any(top is None for top in live):
            return
        value = min(live) if live else (max(tops) if tops else None)  # type: ignore[type-var]
        if value is not None:
            current = self.max_event.get(tp)
            self.max_event[tp] = value if current is None else max(current, value)
