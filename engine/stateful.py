"""The runtime of a pipeline's window operators: hot state, watermarks, durable deltas.

The engine owns time: it derives each source's watermark from the event times it
has seen (per partition, restored from the commit log after a restart) and from
processing time for idle partitions, then hands each batch to the operator's
window logic, which owns the operator's hot state.  The delta the logic hands out
after each epoch travels with the epoch, in its Kafka transaction, and is appended to
LanceDB after the commit (:mod:`lockgate.engine.commit`, step 4).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import polars as pl
from lockgate.engine.columns import KAFKA_COLUMNS, OFFSET, PARTITION, TIMESTAMP, TOPIC
from lockgate.engine.plan import (
    DEAD_LETTER_SCHEMA,
    TIME_COLUMN,
    StreamJoinNode,
    Plan,
    RepartitionNode,
    SourceNode,
    WindowNode,
    input_topic,
    event_time_ms,
)
from lockgate.engine.repartition import SOURCE_COLUMNS, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TIMESTAMP, route
from lockgate.engine.watermarks import ShuffledWatermark, SourceWatermark
from lockgate.errors import AssignmentError
from lockgate.operators.event_time import epoch_ms
from lockgate.operators.interval_join import IntervalJoinLogic
from lockgate.operators.join_rows import JoinRows, JoinRowsDelta
from lockgate.operators.window_join import WindowJoinLogic
from lockgate.operators.windows import WindowDelta, WindowLogic
from lockgate.storage.join_state import JoinSideStore
from lockgate.storage.state import WindowStore
from lockgate.storage.commit_log import CommitLog
from lockgate.storage.retention import history_due

__all__ = ["StateDelta", "WindowRuntime"]

#: batches after each load in which a window keeping state per partition checks that no key spans two partitions
_KEY_CHECKS = 3

log = logging.getLogger("lockgate.windows")
_TIME = TIME_COLUMN
_META = tuple(KAFKA_COLUMNS)


@dataclass(frozen=True)
class StateDelta:
    """What one window operator's state changed in an epoch, to append to its store."""

    store: WindowStore | JoinSideStore
    changes: WindowDelta | JoinRowsDelta
    shards: tuple[int, ...] | None = None  # the input partitions the snapshot covers (sharded operators)

    @property
    def snapshot(self) -> bool:
        """True when the changes hold every open window, so the history before this epoch can go once it commits."""
        return self.changes.snapshot


class WindowRuntime:
    """Hot state and watermarks of every stateful operator of a plan: its windows and its stream joins."""

    def __init__(self, pipeline: str, state: str, plan: Plan, log_: CommitLog, snapshot_rows: int = 1_000_000) -> None:
        self.pipeline = pipeline
        self.snapshot_rows = snapshot_rows
        self.log = log_
        self.windows = [n for n in plan.nodes if isinstance(n, WindowNode)]
        self.joins = [n for n in plan.nodes if isinstance(n, StreamJoinNode)]
        self.joins_by_name = {j.name: j for j in self.joins}
        self.by_name = {w.name: w for w in self.windows}
        #: the operators whose state needs every partition of their topics, and those topics
        self.unsharded = [w.name for w in self.windows if not w.sharded] + [j.name for j in self.joins if not j.sharded]
        self.whole_topics = {w.source.topic for w in self.windows if w.source is not None and not w.sharded}
        self.sources: dict[str, SourceNode] = {}
        for w in self.windows:
            assert w.source is not None
            self.sources[w.source.name] = w.source
        for j in self.joins:
            assert j.left_source is not None and j.right_source is not None
            for src in (j.left_source, j.right_source):
                self.sources[src.name] = src
                if not j.sharded:
                    self.whole_topics.add(src.topic)
        #: the repartition nodes, whose upstream sources' watermarks travel as marks (:mod:`lockgate.engine.repartition`)
        self.repartitions = plan.repartitions
        for r in self.repartitions:
            assert r.upstream is not None
            self.sources[r.upstream.name] = r.upstream
        self.sent_marks: dict[str, bytes] = {}  # the last mark each repartition node wrote
        #: partition counts of the upstream and repartition topics (set by the runner, or by run_plan)
        self.counts: dict[str, int] = {}
        self.trackers = {name: self._tracker(src) for name, src in self.sources.items()}
        self.stores = {w.name: WindowStore(state, pipeline, w.spec) for w in self.windows if w.spec is not None}
        self.logics: dict[str, WindowLogic] = {}  # each owns its operator's hot state
        self.pending: dict[str, WindowLogic] = {}  # the logics that folded a batch since the last take
        self.join_stores = {j.name: JoinSideStore.pair(state, pipeline, j.spec) for j in self.joins if j.spec is not None}
        self.join_logics: dict[str, JoinRows] = {}  # IntervalJoinLogic or WindowJoinLogic
        self.pending_joins: dict[str, JoinRows] = {}
        #: each source's watermark as of the last committed epoch (see :meth:`committed`)
        self.floors: dict[str, int] = {}
        self.late: list[pl.DataFrame] = []
        #: per repartition source, the marks of this batch not taken yet: its window takes them round by round (:meth:`step`)
        self.unapplied: dict[str, list[tuple[tuple[str, int], int, bytes]]] = {}
        self.loaded = False
        #: the windows that folded no batch since they were loaded (see :meth:`due`)
        self.unfolded: set[str] = set()
        self.key_checks = 0  # batches left in which sharded windows check the declared key (after each load)
        self.owned: set[tuple[str, int]] = set()

    def _tracker(self, src: SourceNode, floor: int | None = None) -> SourceWatermark:
        """A new watermark tracker for ``src``: from its event times, or from the marks of its repartition topic."""
        idle = int(src.idle_timeout.total_seconds() * 1000)
        if src.repartitioned_by is None:
            return SourceWatermark(src.delay_ms, idle, floor=floor)
        return ShuffledWatermark(src.delay_ms, idle, floor=floor, upstream=self._upstream_partitions(src))

    def _upstream_partitions(self, src: SourceNode) -> int:
        """How many upstream partitions the marks of repartition source ``src`` speak of (of both topics, for a stream join's)."""
        topics = {w.upstream.topic for w in src.writers if w.upstream is not None}
        return sum(self.counts.get(topic, 0) for topic in topics)

    def set_counts(self, counts: dict[str, int]) -> None:
        """The partition counts of the upstream and repartition topics (a mark counts once it names every upstream partition)."""
        self.counts.update(counts)
        for name, tracker in self.trackers.items():
            if isinstance(tracker, ShuffledWatermark):
                tracker.upstream = self._upstream_partitions(self.sources[name]) or tracker.upstream

    def mark(self, node: RepartitionNode, had_records: bool, now: float) -> bytes | None:
        """The watermark mark ``node`` writes this epoch, or None.

        When the upstream source had records, or when what it would say changed (a
        partition went idle): an epoch that only read the repartition topic writes no
        mark, or marks would feed epochs forever.
        """
        upstream = node.upstream
        assert upstream is not None
        report = self.trackers[upstream.name].report(upstream.topic, now)
        if node.marks_watermarks:  # a stream join's: each side's own delay, so that one delay fits both downstream
            report = {p: (None if top is None else top - upstream.delay_ms, live) for p, (top, live) in report.items()}
        if node.holdback_ms:  # after a stream join: its rows lie up to this far behind what the upstream says
            report = {p: (None if top is None else top - node.holdback_ms, live) for p, (top, live) in report.items()}
        said = {"t": upstream.topic, "p": {str(p): [top, live] for p, (top, live) in sorted(report.items())}}
        mark = json.dumps(said, separators=(",", ":")).encode()
        if not report or (not had_records and self.sent_marks.get(node.name) == mark):
            return None
        return mark

    def sent(self, node: RepartitionNode, mark: bytes) -> None:
        """``node`` wrote ``mark`` in an epoch (an aborted one is no harm: the next differs or repeats it)."""
        self.sent_marks[node.name] = mark

    @property
    def active(self) -> bool:
        """True when the plan has window operators or stream joins."""
        return bool(self.windows or self.joins)

    @property
    def operators(self) -> list[WindowNode | StreamJoinNode]:
        """The stateful nodes: the windows, then the stream joins."""
        return [*self.windows, *self.joins]

    def state_uris(self) -> list[str]:
        """Every state table's URI (for compaction)."""
        return [s.uri for s in self.stores.values()] + [s.uri for pair in self.join_stores.values() for s in pair]

    def assign(self, partitions: set[tuple[str, int]], now: float) -> None:
        """New partitions: their watermarks start from the committed maximum event times."""
        if not self.active or not partitions:
            return
        if partitions - self.owned:  # the partitions changed: the committed watermark floors were of the others
            self.floors.clear()
        self.owned |= partitions
        restored = self.log.event_times(self.pipeline)
        for name, src in self.sources.items():
            self.trackers[name].assign([tp for tp in partitions if tp[0] == src.topic], now, restored)

    def revoke(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions that left this instance."""
        if partitions & self.owned:
            self.floors.clear()
        self.owned -= partitions
        for tracker in self.trackers.values():
            tracker.revoke(partitions)

    def load(self, now: float) -> None:
        """Load every window operator's committed state (at start, after an aborted epoch, after a rebalance).

        A window whose state is kept per input partition loads only the partitions
        this instance owns; any other loads the whole state.
        """
        for w in self.windows:
            watermark = self.window_watermark(w, now)
            shards = self._shards(w)
            self.logics[w.name] = WindowLogic(w.spec, self.stores[w.name].load(watermark, shards=shards))
            log.info(
                "window %s: loaded %d open windows%s, watermark %s", w.name, self.logics[w.name].state.open_windows,
                "" if shards is None else f" of partitions {list(shards)}", watermark,
            )
        for j in self.joins:
            assert j.spec is not None
            left, right = self.join_stores[j.name]
            shards = self._shards(j)
            kind = IntervalJoinLogic if j.spec.window is None else WindowJoinLogic
            self.join_logics[j.name] = kind(j.spec, left.load(shards), right.load(shards), watermark=self.join_watermark(j, now))
            log.info("join %s: loaded %d left and %d right rows%s, watermark %s", j.name, *self.join_logics[j.name].buffered,
                     "" if shards is None else f" of partitions {list(shards)}", self.join_logics[j.name].watermark)
        self.pending.clear()
        self.pending_joins.clear()
        self.unfolded = {n.name for n in self.operators}
        self.loaded = True
        self.key_checks = _KEY_CHECKS

    def due(self, now: float) -> bool:
        """True when an epoch without records would change something: a window would close, or a repartition mark is news.

        A window closes what its source's watermark passed only when it folds a
        batch; a watermark can move on without records (every partition went idle,
        partitions moved to another instance and the ones left are further on), and
        then the windows it passed wait for the next record, which may be long in
        coming (or never: the end of the input).  Flink fires its timers on the
        watermark itself; the runner folds an empty batch (a *tick*) when this says so.
        """
        if not self.loaded:
            return False
        for w in self.windows:
            logic = self.logics.get(w.name)
            if logic is None or w.source is None or not logic.state.open_windows:
                continue
            current = self.window_watermark(w, now)
            if current is None:
                continue
            if logic.state.watermark is None or current > logic.state.watermark or w.name in self.unfolded:
                return True  # unfolded: loaded at a watermark (a rebalance's) that may have passed windows the load kept open
        for j in self.joins:
            joined = self.join_logics.get(j.name)
            if joined is None or not any(joined.buffered):
                continue
            current = self.join_watermark(j, now)
            if current is not None and (joined.watermark is None or current > joined.watermark or j.name in self.unfolded):
                return True  # buffered rows to drop, unmatched left rows to emit
        return any(self.mark(node, False, now) is not None for node in self.repartitions)

    def watermarks(self) -> dict[str, int | None]:
        """Each source's watermark as emitted so far (taken with an epoch: see :meth:`committed`)."""
        return {name: tracker.emitted for name, tracker in self.trackers.items()}

    def committed(self, watermarks: dict[str, int | None]) -> None:
        """An epoch committed with these watermarks: a reload with the same partitions never starts below them."""
        for name, value in watermarks.items():
            if value is not None:
                floor = self.floors.get(name)
                self.floors[name] = value if floor is None else max(floor, value)

    def reload(self, now: float) -> None:
        """Back to the last committed state: watermarks from the commit log, windows from LanceDB.

        While this instance owns the same partitions, a source's watermark starts at
        least where the last committed epoch had it: rebuilt from the partitions'
        maximum event times alone it could come back lower (a partition that had
        counted as idle is live again at first), and watermarks never go back.  Once
        partitions come or go the floor goes: it was the watermark of other partitions,
        and records of a partition that arrives are judged by their own.
        """
        restored = self.log.event_times(self.pipeline)
        for name in list(self.trackers):
            fresh = self._tracker(self.sources[name], floor=self.floors.get(name))
            fresh.assign([tp for tp in self.owned if tp[0] == self.sources[name].topic], now, restored)
            self.trackers[name] = fresh
        self.load(now)

    def _shards(self, node: WindowNode | StreamJoinNode) -> tuple[int, ...] | None:
        """The owned partitions of a sharded operator's topic (None for one that keeps one state)."""
        source = node.source if isinstance(node, WindowNode) else node.left_source
        if not node.sharded or source is None:
            return None
        return tuple(sorted(p for t, p in self.owned if t == source.topic))

    def missing_partitions(self, counts: dict[str, int]) -> dict[str, int]:
        """For each whole-topic source of which this instance owns some partitions: how many it lacks.

        A stream join that keeps one state needs both its topics whole together: owning
        every partition of one and none of the other would join each side with nothing.
        """
        have = {topic: sum(1 for t, _ in self.owned if t == topic) for topic in self.whole_topics}
        out = {}
        for topic in self.whole_topics:
            if topic in counts and 0 < have[topic] < counts[topic]:  # none: nothing to fold (not assigned yet)
                out[topic] = counts[topic] - have[topic]
        for j in self.joins:
            if j.sharded or j.left_source is None or j.right_source is None:
                continue
            pair = {j.left_source.topic, j.right_source.topic}
            if any(have.get(t) for t in pair):
                for topic in pair:
                    if topic in counts and have.get(topic, 0) < counts[topic]:
                        out[topic] = counts[topic] - have.get(topic, 0)
        return out

    def backlog(self, partitions: set[tuple[str, int]]) -> None:
        """The owned partitions that still hold records not read: none of them counts as idle."""
        for tracker in self.trackers.values():
            tracker.backlog = partitions

    def observe(
        self, times: dict[str, pl.DataFrame], now: float, marks: dict[str, list[tuple[tuple[str, int], int, bytes]]] | None = None,
    ) -> dict[tuple[str, int], int]:
        """Advance the watermarks with a batch's event times; returns each touched partition's maximum.

        A repartition source's ``marks`` (``DecodedBatch.marks``) wait for its window's
        :meth:`step`, which takes them between the rows they follow.
        """
        for name, taken in (marks or {}).items():
            if isinstance(self.trackers.get(name), ShuffledWatermark):
                self.unapplied.setdefault(name, []).extend(taken)
        touched: dict[tuple[str, int], int] = {}
        for name in self.sources:
            frame = times.get(name)
            if frame is not None and frame.height:
                touched.update(self.trackers[name].observe(frame, now))
        return touched

    def event_times(self) -> dict[tuple[str, int], int]:
        """Every owned partition's maximum event time (for the prepare records)."""
        out: dict[tuple[str, int], int] = {}
        for tracker in self.trackers.values():
            out.update({tp: v for tp, v in tracker.max_event.items() if v is not None})
        return out

    def step(
        self, node: WindowNode, frame: pl.DataFrame, now: float, times: dict[str, pl.DataFrame] | None = None,
        watermark: int | None = None,
    ) -> pl.DataFrame:
        """Fold one batch into a window operator; returns what it emits (late rows go to ``self.late``).

        ``times``: the batch's event times per source (``DecodedBatch.event_times``),
        reused when the window reads its source directly (the same rows); behind other
        steps the window derives them from its own rows.  ``watermark`` overrides the
        source's (the end of a bounded input).
        """
        assert node.spec is not None and node.source is not None and node.parent is not None
        column = node.parent.time_column
        assert column is not None
        known = (times or {}).get(node.source.name) if node.parent is node.source else None
        if known is not None and known.height == frame.height and _TIME not in frame.columns:
            timed = frame.hstack([known.get_column(_TIME)])  # no query
        else:
            timed = frame.with_columns(event_time_ms(column, frame.schema[column]))
        if timed.get_column(_TIME).null_count():  # the rare case: a query only then
            missing = timed.filter(pl.col(_TIME).is_null())
            self.late.append(_dead(missing, node.name, "event_time", f"window {node.name!r}: the event time {column!r} is missing"))
            timed = timed.filter(pl.col(_TIME).is_not_null())
        if node.sharded and self.key_checks > 0 and not node.after_join:  # after a stream join its hop placed the keys
            self._check_keyed(node, timed)
        logic = self.logics[node.name]
        self.pending[node.name] = logic
        self.unfolded.discard(node.name)
        emitted = []
        names = node.spec.input_schema.names()
        for rows, marks in _rounds(timed, self.unapplied.pop(node.source.name, [])):
            rows = pl.DataFrame([rows.get_column(n) for n in names])  # the columns picked: no query
            self._take_marks(node.source.name, marks, now)
            closing = self.window_watermark(node, now) if watermark is None else watermark
            result = logic.on_batch(rows, closing)
            emitted.append(result.emitted)
            if result.late.height:
                self.late.append(self._late_letters(node, result.late, closing))
        return emitted[0] if len(emitted) == 1 else pl.concat(emitted, how="vertical_relaxed")

    def window_watermark(self, node: WindowNode, now: float) -> int | None:
        """What window ``node`` closes at: its source's watermark, held back after a stream join (:attr:`WindowNode.holdback_ms`)."""
        assert node.source is not None
        current = self.trackers[node.source.name].current(now)
        return current if current is None or not node.holdback_ms else current - node.holdback_ms

    def join_watermark(self, node: StreamJoinNode, now: float) -> int | None:
        """A stream join's watermark: the smaller of its two sources' watermarks.

        A side none of whose partitions has an event time yet holds the join (None)
        while one of them is live; once all of them are idle it holds nothing, and
        the other side's watermark alone counts (Flink's idle inputs).
        """
        values = []
        for src in (node.left_source, node.right_source):
            assert src is not None
            tracker = self.trackers[src.name]
            value = tracker.current(now)
            if value is None:
                if any(tracker.live(tp, now) for tp in tracker.max_event):
                    return None
                continue
            values.append(value)
        return min(values) if values else None

    def join(self, node: StreamJoinNode, left: pl.DataFrame, right: pl.DataFrame, now: float, watermark: int | None = None) -> pl.DataFrame:
        """Fold one batch of each side into a stream join; returns its pairs (late rows go to ``self.late``).

        Rows are late when their event time is below the join's watermark before the
        batch; ``watermark`` overrides the join's watermark after it (the end of a
        bounded input).
        """
        spec = node.spec
        assert spec is not None
        logic = self.join_logics[node.name]
        self.pending_joins[node.name] = logic
        self.unfolded.discard(node.name)
        assert node.left_source is not None
        if node.left_source.repartitioned_by is not None:  # the marks read with this batch: rows are judged by the ones before
            self._take_marks(node.left_source.name, self.unapplied.pop(node.left_source.name, []), now)
        frames = []
        for side, frame, column in (("left", left, spec.left_time), ("right", right, spec.right_time)):
            missing = epoch_ms(column, frame.schema[column]).is_null()
            if frame.height and frame.select(missing.any()).item():  # the rare case: a query only then
                self.late.append(_dead(frame.filter(missing), node.name, "event_time",
                                       f"join {node.name!r}: the {side} record's event time {column!r} is missing"))
                frame = frame.filter(~missing)
            frames.append(frame)
        before = logic.watermark
        after = self.join_watermark(node, now) if watermark is None else watermark
        out = logic.on_batch(frames[0], frames[1], watermark_before=before, watermark_after=after)  # type: ignore[attr-defined]
        for side, late, column in (("left", out.late_left, spec.left_time), ("right", out.late_right, spec.right_time)):
            if late.height:
                late = self._join_input_records(node, side, late)
                why = (
                    "is below the join's watermark" if spec.window is None else "puts it in windows that had closed at the join's watermark"
                )
                self.late.append(_dead(late, node.name, "late", late.select(_text(
                    f"join {node.name!r}: the {side} record's event time ", epoch_ms(column, late.schema[column]), f" ms ({column!r}) {why} "
                    f"{before} ms (the smaller of both sources' watermarks), so the pairs it could make are already complete; "
                    "raise watermark= on the sources if the disorder is real",
                )).to_series()))
        return out.pairs

    def _join_input_records(self, node: StreamJoinNode, side: str, late: pl.DataFrame) -> pl.DataFrame:
        """Late rows of a join side read from its repartition topic, with the Kafka columns of the input records they came from."""
        source = node.left_source
        assert source is not None
        if not source.hops or not set(SOURCE_COLUMNS) <= set(late.columns):
            return late
        upstream = source.hops[0 if side == "left" else 1].upstream
        assert upstream is not None
        return late.with_columns(
            pl.lit(input_topic(upstream)).alias(TOPIC), pl.col(SOURCE_PARTITION).alias(PARTITION), pl.col(SOURCE_OFFSET).alias(OFFSET),
        )

    def take_marks(self, now: float) -> None:
        """Take the marks no window step took (a batch that reached no window behind the repartition topic)."""
        for name, marks in self.unapplied.items():
            self._take_marks(name, marks, now)
        self.unapplied = {}

    def _take_marks(self, source: str, marks: list[tuple[tuple[str, int], int, bytes]], now: float) -> None:
        """Move repartition source ``source``'s watermark on with ``marks`` (in read order)."""
        tracker = self.trackers[source]
        assert isinstance(tracker, ShuffledWatermark) or not marks
        for tp, _, mark in marks:
            tracker.take_mark(tp, mark, now)  # type: ignore[attr-defined]

    def _late_letters(self, node: WindowNode, late: pl.DataFrame, watermark: int | None) -> pl.DataFrame:
        """Late rows as dead letters, each saying why: its own partition's disorder, or the others' watermark.

        A record that lies more than the watermark delay behind its own partition's
        latest event time is late on its partition alone: the partition is out of order
        by more than ``watermark=`` (a producer without ``enable.idempotence=true``
        stores a retried request after the ones behind it).  Otherwise its partition had
        counted as idle while the other partitions moved the watermark past it.  The
        first case is also logged once per batch and partition, as a WARNING.

        Behind a repartition topic the dead letter names the input record the row came
        from (its topic, partition, offset and timestamp travel with the row), and its
        partition's latest event time is what the watermark marks said of it.
        """
        assert node.spec is not None and node.source is not None
        head = (
            f"window {node.name!r}: the record's windows closed at watermark {watermark} ms "
            f"(allowed lateness {node.spec.allowed_lateness_ms} ms)"
        )
        if not {TOPIC, PARTITION} <= set(late.columns):  # a select before the window dropped them
            return _dead(late, node.name, "late", head)
        tracker = self.trackers[node.source.name]
        delay = tracker.delay_ms
        if node.source.repartitioned_by is not None:
            late, known = self._input_records(node, late)
            if known is None:
                return _dead(late, node.name, "late", head + "; upstream of the repartition topic, its partition was behind "
                             "the watermark of the others (out of order by more than watermark=, or counted as idle)")
        else:
            known = [(tp, v) for tp, v in tracker.max_event.items() if v is not None]
        latest = pl.DataFrame(
            {TOPIC: [tp[0] for tp, _ in known], PARTITION: [tp[1] for tp, _ in known], "__lg_latest": [v for _, v in known]},
            schema={TOPIC: pl.String, PARTITION: pl.Int32, "__lg_latest": pl.Int64},
        )
        rows = late.join(latest.cast({PARTITION: late.schema[PARTITION]}), on=[TOPIC, PARTITION], how="left")
        behind = (pl.col("__lg_latest") - pl.col(_TIME)).alias("__lg_behind")
        rows = rows.with_columns(behind)
        message = rows.select(
            pl.when(pl.col("__lg_behind") > delay)
            .then(_text(
                head + "; its own partition had already delivered event time ", pl.col("__lg_latest"), " ms, ", pl.col("__lg_behind"),
                f" ms after this record: the partition is out of order by more than watermark={delay} ms (is the producer idempotent?)",
            ))
            .otherwise(pl.lit(head + "; its partition had counted as idle (no records to read for idle_timeout) "
                                     "while the other partitions moved the watermark past it"))
        ).to_series()
        disorder = (
            rows.filter(pl.col("__lg_behind") > delay)
            .group_by(TOPIC, PARTITION).agg(pl.len(), pl.col("__lg_behind").max())
            .sort(TOPIC, PARTITION)
        )
        for topic, partition, count, most in disorder.iter_rows():  # one line per partition, not per record
            log.warning(
                "window %s: %d records of %s[%d] came up to %d ms behind that partition's latest event time, more than "
                "its watermark delay of %d ms, so they are late (dead letters, reason 'late'). A producer without "
                "enable.idempotence=true can store a retried request after later ones; if the disorder is real, raise "
                "watermark= on pipe.source or allowed_lateness= on the window.",
                node.name, count, topic, partition, most, delay,
            )
        return _dead(late, node.name, "late", message)

    def _input_records(
        self, node: WindowNode, late: pl.DataFrame
    ) -> tuple[pl.DataFrame, list[tuple[tuple[str, int], int]] | None]:
        """Late rows read from a repartition topic, with the Kafka columns of the input records they came from.

        Also each upstream partition's latest event time, as the marks read by this
        instance reported it (None after two hops: the marks then speak of the first
        repartition topic's partitions).
        """
        assert node.source is not None and node.source.repartitioned_by is not None
        if not set(SOURCE_COLUMNS) <= set(late.columns) or late[SOURCE_PARTITION].null_count():
            return late, None  # a select before the hop dropped the Kafka columns
        upstream = node.source.repartitioned_by.upstream
        assert upstream is not None
        late = late.with_columns(
            pl.lit(input_topic(upstream)).alias(TOPIC), pl.col(SOURCE_PARTITION).alias(PARTITION),
            pl.col(SOURCE_OFFSET).alias(OFFSET), pl.from_epoch(SOURCE_TIMESTAMP, time_unit="ms").alias(TIMESTAMP),
        )
        tracker = self.trackers[node.source.name]
        if upstream.repartitioned_by is not None or not isinstance(tracker, ShuffledWatermark):
            return late, None
        latest: dict[int, int] = {}
        for heard in tracker.heard.values():
            for (topic, partition), (top, _) in heard.items():
                if top is not None and topic in ("", upstream.topic):
                    latest[partition] = max(top, latest.get(partition, top))
        return late, [((upstream.topic, p), top) for p, top in sorted(latest.items())]

    def _check_keyed(self, node: WindowNode, frame: pl.DataFrame) -> None:
        """A window keeping state per partition trusts the source's ``key=``: a key on two partitions breaks that."""
        assert node.spec is not None and node.source is not None
        keys = list(node.spec.by)
        by = node.source.repartitioned_by
        if by is not None:
            count = self.counts.get(node.source.topic)
            if count and frame.height and not (route(frame, by.by, count) == frame[PARTITION].cast(pl.Int32)).all():
                raise AssignmentError(
                    f"window {node.name!r}: rows of the repartition topic {node.source.topic!r} are not on the partition "
                    f"this instance routes their key {list(by.by)} to: instances that write it hash keys differently. "
                    f"Run every instance with the same Polars version (this one has {pl.__version__}); its row hash "
                    "may change between versions, so drain the repartition topic before upgrading Polars."
                )
        seen = frame.select(*keys, PARTITION).unique()
        split = seen.filter(pl.struct(keys).is_duplicated())
        if split.height:
            example = split.sort(PARTITION).group_by(keys, maintain_order=True).agg(PARTITION).row(0)
            raise AssignmentError(
                f"window {node.name!r}: source {node.source.name!r} says its topic {node.source.topic!r} is keyed by "
                f"{list(node.source.key) or ['_key']}, but {dict(zip(keys, example[:-1], strict=True))} came from partitions "
                f"{example[-1]} in one batch, so the window's state cannot be kept per partition. Key the producers by "
                f"{keys}, or leave key= out of pipe.source (the window then needs every partition in one instance)."
            )

    def take(self) -> tuple[tuple[StateDelta, ...], pl.DataFrame]:
        """The epoch's state deltas and dead letters (late records), then forget them.

        An operator whose table holds much more than its open windows (the rows
        loaded and appended since the last load or snapshot; the rule is
        :func:`lockgate.storage.retention.history_due`) writes a snapshot this epoch
        instead of a plain delta.
        """
        deltas = []
        self.key_checks -= 1
        for name, logic in self.pending.items():  # each operator's logic holds its changes since the last take
            store = self.stores[name]
            history = store.loaded_rows + store.appended
            snapshot = history_due(history, logic.state.open_windows, self.snapshot_rows)
            if snapshot:  # counted from now on (an abort reloads, and the load counts again)
                store.loaded_rows, store.appended = 0, 0
            deltas.append(StateDelta(store, logic.take_delta(snapshot=snapshot), self._shards(self.by_name[name])))
        for name, joined in self.pending_joins.items():
            stores = self.join_stores[name]
            history = sum(store.loaded_rows + store.appended for store in stores)
            snapshot = history_due(history, sum(joined.buffered), self.snapshot_rows)
            if snapshot:
                for store in stores:
                    store.loaded_rows, store.appended = 0, 0
            shards = self._shards(self.joins_by_name[name])
            for store, changes in zip(stores, joined.take_delta(snapshot=snapshot), strict=True):
                deltas.append(StateDelta(store, changes, shards))
        dead = pl.concat(self.late, how="vertical_relaxed") if self.late else pl.DataFrame(schema=DEAD_LETTER_SCHEMA)
        self.pending = {}
        self.pending_joins = {}
        self.late = []
        return tuple(deltas), dead

    def open_windows(self) -> dict[str, int]:
        """Open (key, window) pairs, or kept rows, per operator."""
        out = {name: logic.state.open_windows for name, logic in self.logics.items()}
        return out | {name: sum(joined.buffered) for name, joined in self.join_logics.items()}

    def state_bytes(self) -> dict[str, int]:
        """Bytes of hot state per operator."""
        out = {name: logic.state.nbytes for name, logic in self.logics.items()}
        return out | {name: joined.nbytes for name, joined in self.join_logics.items()}


def _rounds(
    frame: pl.DataFrame, marks: list[tuple[tuple[str, int], int, bytes]]
) -> list[tuple[pl.DataFrame, list[tuple[tuple[str, int], int, bytes]]]]:
    """A repartition source's rows cut where its marks fall: (rows, the marks after them), in read order.

    Each upstream epoch ends its record batches in every repartition partition with
    a mark, so the k-th mark of each partition closes the k-th *round*: the rows of
    round k are judged late against the watermark of the marks before them, as they
    would have been upstream (a batch that reads many epochs of a repartition topic,
    after a backlog, would otherwise judge its first rows by the marks of the last
    epochs: on-time rows late, and late rows taken).  Round k's rows are those of a
    partition up to (and with) the record of its k-th mark; the rows after the last
    mark form a last round.  Without marks: one round, the whole frame.

    >>> f = pl.DataFrame({"_topic": ["r"] * 4, "_partition": [0, 0, 1, 0], "_offset": [5, 6, 2, 7], "v": [1, 2, 3, 4]})
    >>> [(rows["v"].to_list(), [o for _, o, _ in m]) for rows, m in _rounds(f, [(("r", 0), 5, b""), (("r", 1), 2, b""), (("r", 0), 6, b"")])]
    [([1, 3], [2, 5]), ([2], [6]), ([4], [])]
    """
    if not marks:
        return [(frame, [])]
    ordered = sorted(marks, key=lambda m: m[1])  # by offset: per partition, the k-th mark closes round k
    seen: dict[int, int] = {}
    ranks = []
    for (_, partition), _, _ in ordered:
        ranks.append(seen.get(partition, 0))
        seen[partition] = ranks[-1] + 1
    rounds = max(seen.values())
    mark_round: dict[int, list[tuple[tuple[str, int], int, bytes]]] = {}
    for entry, k in zip(ordered, ranks, strict=True):
        mark_round.setdefault(k, []).append(entry)
    where = pl.DataFrame(
        {PARTITION: [m[0][1] for m in ordered], OFFSET: [m[1] for m in ordered], "__lg_round": ranks},
        schema={PARTITION: frame.schema.get(PARTITION, pl.Int32), OFFSET: pl.Int64, "__lg_round": pl.Int64},
    )
    # a row's round: that of the first mark at or after it in its partition (the last round when none is)
    of_row = (
        frame.with_row_index("__lg_row").sort(OFFSET)
        .join_asof(where, on=OFFSET, by=PARTITION, strategy="forward", check_sortedness=False)  # both sorted by offset
        .sort("__lg_row")["__lg_round"].fill_null(rounds)
    )
    by_round = {k[0]: part for k, part in frame.with_columns(of_row.alias("__lg_round")).partition_by("__lg_round", as_dict=True).items()}
    out = []
    for k in range(rounds + 1):
        rows = by_round.get(k)
        if k == rounds and rows is None:
            break
        out.append((frame.clear() if rows is None else rows.drop("__lg_round"), mark_round.get(k, [])))
    return out


def _text(*parts: str | pl.Expr) -> pl.Expr:
    """A message per row from text and columns (``concat_str``: Polars 2.1's ``pl.format`` panicked once on a join's late rows)."""
    return pl.concat_str([pl.lit(p) if isinstance(p, str) else p.cast(pl.String) for p in parts])


def _dead(rows: pl.DataFrame, operator: str, reason: str, message: str | pl.Series) -> pl.DataFrame:
    """Rows that a window could not take, as dead letters (the value is the row as JSON; one message, or one per row)."""
    meta = {c: rows[c] for c in _META if c in rows.columns}
    payload_cols = [c for c in rows.columns if c not in _META and not c.startswith("__") and "Binary" not in str(rows.schema[c])]
    value = (
        rows.select(pl.struct(payload_cols).struct.json_encode().cast(pl.Binary).alias("value"))["value"]
        if payload_cols
        else pl.Series("value", [None] * rows.height, dtype=pl.Binary)
    )
    out = pl.DataFrame({
        **{c: meta.get(c, pl.Series(c, [None] * rows.height, dtype=DEAD_LETTER_SCHEMA[c])) for c in _META},
        "value": value,
    })
    return out.with_columns(
        pl.lit(reason).alias("reason"), pl.lit(message).alias("error"), pl.lit(operator).alias("operator")  # a str or a Series
    ).select(list(DEAD_LETTER_SCHEMA)).cast(DEAD_LETTER_SCHEMA)  # type: ignore[arg-type]
