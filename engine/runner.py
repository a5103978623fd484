"""The micro-batch loop: poll, decode, run the operators, commit, repeat.

One instance of a pipeline owns one consumer (in the pipeline's group) and one
:class:`~lockgate.engine.commit.Committer` (its transactional producer).  Each
micro-batch is one epoch; the runner keeps the loop, the rebalances and the
whole-topic guard, and each step of an epoch has its own module:

1. poll: :mod:`lockgate.engine.source` (``KafkaSource.poll`` -> ``RawBatch``);
2. decode: :mod:`lockgate.engine.decode` (``BatchDecoder`` -> ``DecodedBatch``);
3. operators: :mod:`lockgate.engine.execution` (``operate``; windows through
   :mod:`lockgate.engine.stateful`, the folds in :mod:`lockgate.operators`);
4. encode: :mod:`lockgate.engine.encode` (sinks and dead letters -> Kafka records);
5. commit: :mod:`lockgate.engine.commit` (the protocol; LanceDB through
   :mod:`lockgate.storage`), while the runner polls, decodes and folds the next batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Literal

import confluent_kafka as ck
import numpy as np
import polars as pl
from lockgate.engine import faults, kafka_clients
from lockgate.engine.admin import create_topic, ensure_topics, partition_count
from lockgate.engine.prepares import prepares_topic, recover_prepares, trim_prepares
from lockgate.engine.changelog import ChangelogTable
from lockgate.engine.collector import BatchCollector
from lockgate.engine.switching import ThreadSwitching
from lockgate.engine.columns import TIMESTAMP
from lockgate.engine.commit import Committer
from lockgate.engine.config import PipelineConfig
from lockgate.engine.decode import BatchDecoder, DecodedBatch
from lockgate.engine.encode import dead_letter_topic, encode_repartition, encode_sink
from lockgate.engine.execution import operate
from lockgate.engine.metrics import Metrics
from lockgate.engine.repartition import SOURCE_TIMESTAMP
from lockgate.engine.plan import OpNode, Plan, RepartitionNode, SinkNode, WindowNode
from lockgate.engine.source import KafkaSource, RawBatch
from lockgate.engine.stateful import WindowRuntime
from lockgate.engine.transaction import Epoch, OutgoingTopic, parse_offset_metadata, partition_ranges
from lockgate.storage.commit_log import CommitLog, PartitionRange
from lockgate.storage.compaction import Compactor
from lockgate.storage.sink_tables import SinkTable

from lockgate.errors import AssignmentError, KafkaOptionsError, PipelineDefinitionError

__all__ = ["RunSummary", "Runner", "Until"]

log = logging.getLogger("lockgate.runner")

Until = Literal["caught_up"] | None
#: records per owned repartition partition left unread beyond which the upstream topics pause (see ``Runner._pace_hops``)
HOP_BACKLOG_EPOCHS = 4

#: repartition topics keep what is not read yet: time-based retention would drop it (Kafka Streams purges what was committed)
REPARTITION_TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": "-1"}


@dataclass(frozen=True)
class RunSummary:
    """What one ``run`` did."""

    batches: int
    records: int
    seconds: float
    stopped_because: str
    seconds_from_first_record: float | None = None  # from the first consume that returned records: excludes the group join


@dataclass(frozen=True)
class _Polled:
    """When the poll that returned a batch was called, when its first records came, and when it closed (monotonic)."""

    asked: float
    first: float | None
    closed: float

    def stages(self) -> dict[str, float]:
        """The waiting stages of the batch (``stage_wait*_seconds``)."""
        out = {"wait": self.closed - self.asked}
        if self.first is not None:
            out.update(wait_first=self.first - self.asked, wait_fill=self.closed - self.first)
        return out


def _first_offsets(ranges: Iterable[PartitionRange]) -> dict[tuple[str, int], int]:
    """Where each partition of a batch starts: the positions to rewind to."""
    return {(r.topic, r.partition): r.first_offset for r in ranges}


def _polled_from(raw: RawBatch) -> dict[tuple[str, int], int]:
    """The first offset of each partition in a polled batch."""
    return _first_offsets(partition_ranges(raw.metadata())) if len(raw) else {}


def _upsert_keys(sink: SinkNode) -> list[str] | None:
    """(keys, window_start) when a table sink is fed by an update-mode window that still has them."""
    node = sink.parent
    while isinstance(node, OpNode):
        node = node.parent
    if isinstance(node, WindowNode) and node.spec is not None and node.spec.emit == "update":
        keys = [*node.spec.by, "window_start"]
        if all(k in sink.schema for k in keys):
            return keys
    return None


class Runner:
    """Runs a plan against Kafka until told to stop."""

    def __init__(self, config: PipelineConfig, plan: Plan, metrics: Metrics, stop_event: threading.Event) -> None:
        if not plan.sources:
            raise PipelineDefinitionError(f"pipeline {config.name!r}: it has no source; add one with pipe.source(topic, format=...)")
        if not plan.sinks:
            raise PipelineDefinitionError(
                f"pipeline {config.name!r}: it has no sink, so it would commit nothing; add stream.to_kafka(...) or stream.to_table(...)"
            )
        self.config = config
        self.plan = plan
        self.metrics = metrics
        self.stop_event = stop_event
        self.log = CommitLog(config.state)
        self.tables = {
            s.name: SinkTable(config.state, s.target, upsert_keys=_upsert_keys(s)) for s in plan.sinks if s.sink == "table"
        }
        self.windows = WindowRuntime(config.name, config.state, plan, self.log, config.snapshot_rows)
        self.compactor = Compactor(
            lambda: [self.log.uri, *(t.uri for t in self.tables.values()), *self.windows.state_uris()],
            every_batches=config.compact_every, hook=lambda: faults.crash_point("during_compaction"), commit_log=self.log,
            keep_history=config.keep_history,
        )
        self.topics = list(dict.fromkeys(node.topic for node in plan.sources))
        #: partition counts of the repartition topics (the keys: they are known before, the counts once created)
        self.counts_of_hops: dict[str, int] = {node.target: 0 for node in plan.repartitions}
        #: the epoch in flight wrote to a repartition topic: "caught up" must wait for it to commit and be read
        self.hopped = False
        #: the topics whose rows go through a repartition topic (paused while it is behind: :meth:`_pace_hops`)
        self.hop_sources = {node.name for node in plan.sources if node.repartitioned_by is not None}
        self.upstream_topics = {node.upstream.topic for node in plan.repartitions if node.upstream is not None}
        self.purge_to: dict[tuple[str, int], int] = {}  # repartition partitions: where the committed offsets stand
        self.purge_countdown = config.compact_every
        self.admin: Any = None
        #: the deferred prepare: epochs until the next trim of the prepares topic, and the trim running (one at a time)
        self.trim_countdown = config.compact_every
        self.trimmer: futures.ThreadPoolExecutor | None = None
        self.trimming: futures.Future[int | None] | None = None
        self.source: KafkaSource | None = None
        self.committer: Committer | None = None
        self.epoch = 0
        # the last batch on each input partition's chain: as committed in Kafka, and as prepared (one ahead)
        self.committed_chain: dict[tuple[str, int], int] = {}
        self.prepared_chain: dict[tuple[str, int], int] = {}
        #: per partition, the next offset the group has committed (from the epochs this instance committed, or recovery): a tick's range
        self.read_to: dict[tuple[str, int], int] = {}
        self.changelogs: dict[str, ChangelogTable] = {}
        self.whole_counts: dict[str, int] = {}  # partition counts of the topics an unsharded window needs whole
        self.short_since: float | None = None  # since when this instance lacks some of them
        self.short_log = 0.0
        # decodes each batch (one source topic: each consume call's records, on its thread, while the next are read)
        self.decoder: BatchDecoder | None = None

    def _open(self) -> None:
        try:
            self._open_clients()
        except PipelineDefinitionError:
            raise  # lockgate's own message (a missing source topic ...): not the clients refusing an option
        except KafkaOptionsError as exc:  # names the client, the option and the fix already
            raise KafkaOptionsError(f"pipeline {self.config.name!r}: {self.config.scrub(str(exc))}") from None
        except (ck.KafkaException, ValueError, TypeError) as exc:
            # librdkafka may quote a value it refuses: never let it be a secret
            raise PipelineDefinitionError(f"pipeline {self.config.name!r}: the Kafka clients refused their options: {self.config.scrub(str(exc))}") from None

    def _open_clients(self) -> None:
        internal = set(self.counts_of_hops)
        sink_topics = [s.target for s in self.plan.sinks if s.sink == "kafka" and s.target not in internal] + [self.config.dlq_topic]
        ensure_topics(self.config.admin_options(), [t for t in self.topics if t not in internal], sink_topics)
        self._ensure_repartition_topics()
        prepares = prepares_topic(self.config.name)
        create_topic(self.config.admin_options(), prepares, 1, {"retention.ms": "-1"})  # only a trim deletes (engine.prepares)
        self.committer = Committer(
            self.config.name, self.log, self.config.producer_options(), commit_timeout_s=self.config.commit_timeout_s,
            metrics=self.metrics, committed=self._committed, prepares_topic=prepares, min_interval_s=self.config.batch.min_interval_s,
        )
        self.changelogs = {t.name: ChangelogTable(t, self.config.admin_options()) for t in self.plan.tables}
        for table in self.changelogs.values():
            table.bootstrap()
        self.source = KafkaSource(
            self.config.consumer_options(), self.topics, before_revoke=self._wait_inflight,
            admin_options=self.config.admin_options(),
        )
        self.decoder = BatchDecoder(self.plan, threaded=True, name=self.config.name)
        self.epoch = self.log.last_epoch(self.config.name)

    def _ensure_repartition_topics(self) -> None:
        """Create the repartition topics (before subscribing to them) and learn every hop's partition counts."""
        options = self.config.admin_options()
        counts: dict[str, int] = {}
        for node in self.plan.repartitions:
            assert node.upstream is not None
            for topic, wanted in ((node.upstream.topic, None), (node.target, node.partitions)):
                if topic in counts:
                    continue
                if wanted is not None or topic == node.target:
                    # a stream join's topic has two upstream topics: as many partitions as the larger
                    uppers = [n.upstream.topic for n in self.plan.repartitions if n.target == node.target and n.upstream is not None]
                    for upper in uppers:
                        counts.setdefault(upper, partition_count(options, upper) or 1)
                    create_topic(options, topic, wanted or max(counts[u] for u in uppers), REPARTITION_TOPIC_CONFIG)
                for _ in range(50):  # a topic just created may take a moment to show in the metadata
                    count = partition_count(options, topic)
                    if count:
                        counts[topic] = count
                        break
                    time.sleep(0.1)
                else:
                    raise PipelineDefinitionError(f"pipeline {self.config.name!r}: the topic {topic!r} has no partitions in the metadata")
        self.counts_of_hops = {node.target: counts[node.target] for node in self.plan.repartitions}
        self.windows.set_counts(counts)

    def close(self) -> None:
        """Leave the group and drop the clients."""
        self._wait_inflight()
        if self.committer is not None:
            self.committer.materializer.shutdown(wait=True)
        if self.trimmer is not None:
            self.trimmer.shutdown(wait=True)
            self.trimmer = None
        if self.committer is not None and self.committer.inflight is None:  # every epoch settled: what is due goes now
            self.compactor.finish()
        else:
            self.compactor.wait()
        if self.source is not None:
            self.source.close()
            self.source = None
        for table in self.changelogs.values():
            table.close()
        self.changelogs = {}
        self.committer = None
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None

    def run(
        self, until: Until = None, max_batches: int | None = None, timeout: float | None = None,
        on_batch: Callable[[dict[str, Any]], None] | None = None,
    ) -> RunSummary:
        """Process micro-batches until ``until``, ``max_batches``, ``timeout`` or a stop request."""
        if until not in (None, "caught_up"):
            raise PipelineDefinitionError(f"run(until={until!r}): use until='caught_up' or leave it out to run until stopped")
        started = time.monotonic()
        first_record: float | None = None
        batches = records = 0
        reason = "stopped"
        self._open()
        assert self.source is not None
        try:
            with BatchCollector() as collector, ThreadSwitching():
                while True:
                    if self.stop_event.is_set():
                        reason = "stop requested"
                        break
                    if timeout is not None and time.monotonic() - started > timeout:
                        reason = "timeout"
                        break
                    asked = time.monotonic()
                    raw = self.source.poll(
                        self.config.batch, self.stop_event.is_set, self.decoder.start if self.decoder and self.decoder.threaded else None,
                        self._wait_ready,
                    )
                    polled = _Polled(asked, self.source.batch_first_at, time.monotonic())
                    n = len(raw)
                    if not (self._rebalance(raw) and self._owns_whole_topics(raw)):
                        continue  # the batch was rewound, to be read again
                    lag = self.source.lag()
                    self.metrics.gauges("lag", lag)
                    self._pace_hops(lag, polled_nothing=not n)
                    if n:
                        first_record = first_record or self.source.first_record_at
                        faults.crash_point("after_poll")
                        processed = self._process(raw, polled)
                        if processed is not None:
                            batches += 1
                            records += processed
                    else:
                        self.metrics.add("empty_polls")
                        self._settle()
                        self._tick()  # the materializer writes the committed epochs meanwhile: nothing to flush
                    if on_batch is not None:  # after empty polls too: a progress display's clock and rate move on
                        on_batch(self.metrics.snapshot())
                    del raw  # the collection below need not walk its columns
                    if max_batches is not None and batches >= max_batches:
                        reason = "max_batches"
                        break
                    if (until == "caught_up" and self.source.caught_up(ask_broker=not n) and self._settle() and self._hops_read()
                            and self._group_read()):
                        # read to the end, the epoch in flight committed (aborted: rewound, redo it), and so has every instance
                        reason = "caught_up"
                        break
                    collector.after_batch()
                self._settle()
                self._drain()
        finally:
            self.close()
        ended = time.monotonic()
        return RunSummary(batches, records, ended - started, reason, None if first_record is None else ended - first_record)

    def _pace_hops(self, lag: dict[tuple[str, int], int], polled_nothing: bool) -> None:
        """Pause the upstream topics while this instance's repartition partitions are behind; resume once they are read.

        One consumer reads both, and librdkafka serves one queue: behind an input
        backlog it had prefetched, the rows an epoch wrote to the repartition topic
        would wait until the input is nearly drained, and the windows behind the
        hop with them.  As Kafka Streams pauses a partition whose buffer is full
        (``buffered.records.per.partition``), the upstream partitions pause while the
        owned repartition partitions hold more than ``HOP_BACKLOG_EPOCHS`` records
        each (about that many epochs), and resume once those are read, or when a
        poll brings nothing (then there is nothing to let through).
        """
        assert self.source is not None
        hop = [behind for (topic, _), behind in lag.items() if topic in self.counts_of_hops]
        if self.source.paused:
            if not hop or sum(hop) == 0 or polled_nothing:
                self.source.resume()
        elif hop and sum(hop) > HOP_BACKLOG_EPOCHS * len(hop):
            self.source.pause(self.upstream_topics)

    def _hops_read(self) -> bool:
        """After the sources are read to their end: True unless what the last epochs wrote to a repartition topic is unread.

        The epoch that wrote it commits first (its records become readable then),
        and the broker's last stable offsets decide: the last fetch predates them.
        """
        assert self.source is not None
        if not self.hopped:
            return True
        self._settle()
        if self.source.caught_up(ask_broker=True, verify=set(self.counts_of_hops)):
            self.hopped = False
        return not self.hopped

    def _group_read(self) -> bool:
        """After this instance read its partitions out: True when the whole group has read every partition of its topics.

        ``run(until="caught_up")`` stops every instance of a pipeline then, not when
        its own partitions are read: a repartition topic's partitions take rows
        from every instance's upstream partitions, and an instance that stopped
        early would leave the rows written to its partitions after it stopped
        unread (and would leave the group mid-rebalance, which held up the other
        instance for a session time-out, 45 s).  The group's committed offsets say
        it, with one step first: where this instance passed the commit markers that
        end a transactional partition, reading no record, it commits those offsets
        (see :meth:`Committer.commit_offsets`), so that its committed offsets reach
        the last stable offsets (and the group's lag is 0, as monitoring shows it).
        """
        assert self.source is not None and self.committer is not None
        try:
            committed, ends = self.source.group_offsets(own=set(self.counts_of_hops))
            positions = self.source.positions()
        except (ck.KafkaException, TimeoutError) as exc:
            log.info("caught up? the group's offsets did not come (%s); reading on", exc)
            return False
        passed = []
        for tp, position in positions.items():
            offset, metadata = committed.get(tp, (-1, None))
            low, stable = ends.get(tp, (-1, -1))
            if max(offset, low) < position <= stable:
                passed.append(ck.TopicPartition(tp[0], tp[1], position, metadata=metadata or ""))
        if passed:
            if not self.committer.commit_offsets(passed, self.source.group_metadata()):
                return False
            committed.update({(tp.topic, tp.partition): (tp.offset, tp.metadata) for tp in passed})
        done = {tp: offset for tp, (offset, _) in committed.items()}
        behind = {tp: (done.get(tp, -1), stable) for tp, (low, stable) in ends.items() if max(done.get(tp, -1), low) < stable}
        if behind:
            log.debug("caught up here; the group is still behind on %s", behind)
        return not behind

    def _rebalance(self, raw: RawBatch) -> bool:
        """Take the partitions assigned and revoked since the last poll: write what LanceDB lacks of them, move window state.

        Returns False when ``raw`` must be read again: the in-flight epoch aborted,
        and the consumer was rewound to its first offsets and to ``raw``'s.
        """
        assert self.source is not None
        new, gone = self.source.take_new_partitions(), self.source.take_revoked_partitions()
        if not new and not gone:
            return True
        if new:
            self._recover_marks(new)
        if not self.windows.active:
            return True
        self.whole_counts = {}
        now = time.monotonic()
        self.windows.revoke(gone)
        self.windows.assign(new, now)
        if not self.windows.loaded:
            self.windows.load(now)
            return True
        # Partitions came (back) after the state was loaded, and another instance may have
        # advanced their windows meanwhile; or partitions left, and their windows must go.
        # Settle the in-flight epoch, write every committed epoch to LanceDB, and load the owned state again.
        settled = self._settle(also_rewind=_polled_from(raw))
        if settled:
            self._drain()
            self.windows.reload(time.monotonic())
        return settled

    def _owns_whole_topics(self, raw: RawBatch) -> bool:
        """False (and ``raw`` rewound) while a window that needs all of its topic's partitions lacks some.

        Such a window keeps one state for the whole topic: with two instances each
        folding their own partitions into it, a key in both would be counted twice
        or half.  A rebalance can leave an instance short for a moment, so it waits
        (reading nothing) for twice the session timeout before it gives up.
        """
        if not self.windows.whole_topics:
            return True
        assert self.source is not None
        if not self.whole_counts:
            self.whole_counts = self.source.partition_counts(sorted(self.windows.whole_topics))
        missing = self.windows.missing_partitions(self.whole_counts)
        if not missing:
            self.short_since = None
            return True
        now = time.monotonic()
        if self.short_since is None or now - self.short_log > 5:
            log.warning(
                "operators %s need every partition of %s in this instance; %s are with another instance: waiting",
                self.windows.unsharded, sorted(missing), missing,
            )
            self.short_log = now
        self.short_since = self.short_since or now
        if now - self.short_since > 2 * self.config.session_timeout_s:
            topic = min(missing)
            joins = [j.name for j in self.windows.joins if not j.sharded]
            if joins:
                raise AssignmentError(
                    f"pipeline {self.config.name!r}: stream joins {joins} keep one state for all partitions of both their "
                    f"topics, but another instance of the pipeline owns {missing[topic]} of the {self.whole_counts[topic]} "
                    f"partitions of {topic!r}: they were built with join(..., repartition=False). Run one instance, or leave "
                    "out repartition=False, so that both sides go through a repartition topic keyed by the join key and the "
                    "state is kept per partition of it."
                )
            raise AssignmentError(
                f"pipeline {self.config.name!r}: windows {self.windows.unsharded} keep one state for all partitions of "
                f"{topic!r}, but another instance of the pipeline owns {missing[topic]} of its {self.whole_counts[topic]} "
                "partitions: they were built with window(..., repartition=False). Run one instance; or leave out "
                "repartition=False, so that their rows go through a repartition topic keyed by `by` and the state is kept "
                "per partition of it; or key the topic by the window's "
                "`by` columns and say so with pipe.source(..., key=[...]) (keep `_partition` and the key columns unchanged "
                "up to the window, and no map_batches before it)."
            )
        if len(raw):
            self.source.rewind(_polled_from(raw))
            time.sleep(0.2)  # the records come back at once otherwise (an empty poll has waited already)
        return False

    def _recover_marks(self, partitions: set[tuple[str, int]]) -> None:
        """Before ``partitions``' state loads: write their committed epochs that LanceDB lacks, redo lost marks, set their chains.

        This instance's own committed epochs are written first (``finish_inflight``);
        then the prepares topic's unmarked records of ``partitions`` (another
        instance's, or a crashed run's: ``recover_prepares``), then the marks a state
        directory from before the deferred prepare may have lost (``CommitLog.recover``).
        """
        assert self.source is not None
        committed = {tp: (offset, parse_offset_metadata(meta)) for tp, (offset, meta) in self.source.committed(partitions).items()}
        self.read_to.update({tp: offset for tp, (offset, _) in committed.items()})
        if self.committer is not None:
            self.committer.finish_inflight()  # this instance's committed epochs are in LanceDB: recovery does only others'
        recover_prepares(self.config.admin_options(), self.config.name, self.log, {tp: committed.get(tp, (0, None))[1] for tp in partitions})
        redone = self.log.recover(self.config.name, committed)
        for tp in partitions:
            batch_id = committed.get(tp, (None, None))[1]
            for chain in (self.committed_chain, self.prepared_chain):
                chain.pop(tp, None)
                if batch_id is not None:
                    chain[tp] = batch_id
        if redone:
            log.info("recovery: redid the commit marks of batches %s", redone)
        self.epoch = max(self.epoch, self.log.last_epoch(self.config.name))

    def _wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until the poll may close a batch that has records: the commit before it is (nearly) done.

        Nearly: expected to be done by the time the batch is decoded and folded.

        See :meth:`Committer.wait_ready`: records wait for the commit before them, not for
        ``max_wait``; while a commit runs the batch grows (up to ``max_records``/``max_wait``).
        """
        return self.committer is None or self.committer.wait_ready(timeout)

    def _tick(self) -> bool:
        """After a poll that brought nothing: fold an empty batch when the windows are due (see ``WindowRuntime.due``).

        The windows a watermark passed without records close now, not at the next
        record.  The tick commits like any epoch, exactly once: its ranges are empty,
        one at the committed offset of each owned partition, so the offsets do not
        move and recovery finds it by the batch id they carry.  Returns True when a
        tick started.
        """
        assert self.source is not None
        if not self.windows.active or self.committer is None or self.committer.inflight is not None:
            return False
        self.windows.backlog(self.source.backlog())
        if not self.windows.due(time.monotonic()):
            return False
        owned = self.source.assignment.owned
        ranges = tuple(PartitionRange(t, p, offset, offset) for (t, p), offset in sorted(self.read_to.items()) if (t, p) in owned)
        if not ranges:
            return False  # nothing committed here yet: the first batch will close them
        return self._process(RawBatch.from_messages([], self.source.topics), ticks=ranges) is not None

    def _process(self, raw: RawBatch, polled: _Polled | None = None, ticks: tuple[PartitionRange, ...] = ()) -> int | None:
        """Decode, run and commit one batch: how many records of the sources it read (not of repartition topics); None when it was dropped to be redone."""
        assert self.source is not None and self.committer is not None
        t0 = time.monotonic()
        assert self.decoder is not None
        batch = self.decoder.decode(raw)
        for topic, count in batch.records_in.items():
            self.metrics.add("records_in", count, topic=topic)
        faults.crash_point("after_decode")
        now = decoded = time.monotonic()
        for table in self.changelogs.values():
            table.refresh()
        tables = {name: table.frame() for name, table in self.changelogs.items()}
        event_times: dict[tuple[str, int], int] = {}
        watermarks: dict[str, int | None] = {}
        deltas: tuple = ()
        dead = batch.dead
        if self.windows.active:
            self.windows.backlog(self.source.backlog())
        outputs = operate(self.plan, batch, tables, self.windows, now)
        if self.windows.active:
            deltas, late = self.windows.take()
            if late.height:
                dead = pl.concat([dead, late], how="vertical_relaxed") if dead.height else late
            event_times = self.windows.event_times()
            watermarks = self.windows.watermarks()
            if late.height:  # the rare case: no query per batch for it
                for (operator,), rows in late.filter(pl.col("reason") == "late").group_by("operator"):
                    self.metrics.add("late", rows.height, topic=str(operator))
        outgoing = [
            self._encode_hop(s, outputs[s.name], batch.records_in, now) if isinstance(s, RepartitionNode) else encode_sink(s, outputs[s.name])
            for s in self.plan.sinks if s.sink == "kafka"
        ]
        if dead.height:
            outgoing.append(dead_letter_topic(dead, self.config.dlq_topic))
        tables = tuple((self.tables[s.name], outputs[s.name].select(s.value_columns)) for s in self.plan.sinks if s.sink == "table")
        self.epoch += 1  # epoch numbers never repeat, even for a batch that is dropped and redone
        ranges = ticks or partition_ranges(batch.meta)
        prev = {(r.topic, r.partition): self.prepared_chain[(r.topic, r.partition)] for r in ranges if (r.topic, r.partition) in self.prepared_chain}
        epoch = Epoch(
            self.epoch, ranges, tuple(outgoing), tables, states=deltas, event_times=event_times, watermarks=watermarks, prev=prev,
            timestamps_ms=self._record_timestamps_ms(batch), event_times_ms=batch.event_times_ms(self.hop_sources or None),
        )
        built = time.monotonic()
        if not self._settle(also_rewind=_first_offsets(ranges)):
            return None  # the previous epoch aborted: this batch was read past it and is redone after the rewind
        stages = {"decode": decoded - t0, "operators": built - decoded, **(polled.stages() if polled is not None else {})}
        self.committer.start(epoch, self.source.group_metadata(), stages)
        self.prepared_chain.update({(r.topic, r.partition): epoch.batch_id for r in ranges})
        self.metrics.set("last_batch_seconds", time.monotonic() - t0)
        self.metrics.observe("batch_seconds", time.monotonic() - t0)
        if self.windows.active:
            self.metrics.gauges("state_rows", self.windows.open_windows())
            self.metrics.gauges("state_bytes", self.windows.state_bytes())
        return sum(count for topic, count in batch.records_in.items() if topic not in self.counts_of_hops)

    def _record_timestamps_ms(self, batch: DecodedBatch) -> np.ndarray:
        """The input records' timestamps, once per record, for the end-to-end latency (``latency_seconds``).

        Without a repartition topic, each record of the batch.  With one, a record's
        end is its window's stage: the rows read from the repartition topics, with the
        timestamp of the input record each came from (``SOURCE_TIMESTAMP``), so a
        record is not measured at each stage (a record dropped before the hop is not
        measured at all).
        """
        if not self.hop_sources:
            return batch.meta[TIMESTAMP].to_numpy().astype("datetime64[ms]").view(np.int64)  # epoch ms, no query
        columns = [
            frame.get_column(SOURCE_TIMESTAMP).drop_nulls().to_numpy()
            for name, frame in batch.inputs.items() if name in self.hop_sources and SOURCE_TIMESTAMP in frame.columns
        ]
        return np.concatenate(columns) if columns else np.empty(0, dtype=np.int64)

    def _encode_hop(self, node: RepartitionNode, frame: pl.DataFrame, records_in: dict[str, int], now: float) -> OutgoingTopic:
        """A repartition node's records: its rows by key, and the watermark mark of its upstream partitions when due."""
        assert node.upstream is not None
        mark = self.windows.mark(node, bool(records_in.get(node.upstream.topic)), now)
        out = encode_repartition(node, frame, self.counts_of_hops[node.target], mark)
        if mark is not None:
            self.windows.sent(node, mark)
        if out.values:
            self.hopped = True
        return out

    def _wait_inflight(self) -> None:
        """Block until the epoch in flight has finished (before its partitions move, or the runner closes)."""
        if self.committer is not None:
            self.committer.finish_inflight()

    def _committed(self, partitions: set[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, str | None]]:
        assert self.source is not None
        return self.source.committed(partitions)

    def _settle(self, also_rewind: dict[tuple[str, int], int] | None = None) -> bool:
        """Settle the epoch in flight (:meth:`Committer.settle`) and act on its outcome.

        Committed: its partitions' chains move on, its state history may be compacted,
        it is counted.  Aborted: returns False; the consumer is rewound to the batch's
        first offsets (and to ``also_rewind``'s, for partitions only the batch read
        after it touched) and the hot state reloaded from the last committed epoch.
        """
        if self.committer is None:
            return True
        settled = self.committer.settle()
        if settled is None:
            return True
        epoch = settled.txn.epoch
        if settled.aborted is not None:
            assert self.source is not None
            positions = _first_offsets(epoch.ranges)
            for tp, offset in (also_rewind or {}).items():
                positions.setdefault(tp, offset)
            self.source.rewind(positions)
            self.prepared_chain = dict(self.committed_chain)  # what was prepared past the abort is dropped
            if self.windows.active:
                self.committer.drain()  # every committed epoch in LanceDB first
                self.windows.reload(time.monotonic())  # hot state back to the last committed epoch
            return False
        for delta in epoch.states:
            if delta.snapshot:  # committed: the rows before it are history, deleted after keep_history
                self.compactor.forget(delta.store, self.config.name, epoch.number, delta.shards)
        for table in self.tables.values():  # an update-mode table due a prune (storage.retention.history_due)
            if table.prune_due(self.config.snapshot_rows):
                self.compactor.prune(table, self.config.name, epoch.number)
        self.committed_chain.update({(r.topic, r.partition): epoch.batch_id for r in epoch.ranges})
        self.read_to.update({(r.topic, r.partition): r.next_offset for r in epoch.ranges})
        if self.counts_of_hops:
            self._purge_hops(epoch)
        self._trim_prepares()
        if self.windows.active:
            self.windows.committed(epoch.watermarks)
        self._count(epoch)
        self.compactor.committed()
        return True

    def _purge_hops(self, epoch: Epoch) -> None:
        """Delete the repartition records this pipeline has committed past, every ``compact_every`` epochs (as Kafka Streams does).

        They are read once, by this group: what its committed offsets passed is never
        read again.  The call is asynchronous; a failure only leaves records longer.
        """
        self.purge_to.update({(r.topic, r.partition): r.next_offset for r in epoch.ranges if r.topic in self.counts_of_hops})
        self.purge_countdown -= 1
        if self.purge_countdown > 0 or not self.purge_to:
            return
        self.purge_countdown = self.config.compact_every
        if self.admin is None:
            self.admin = kafka_clients.admin(self.config.admin_options())
        partitions = [ck.TopicPartition(t, p, offset) for (t, p), offset in sorted(self.purge_to.items())]
        self.purge_to = {}
        for tp, future in self.admin.delete_records(partitions, request_timeout=30).items():
            future.add_done_callback(lambda f, tp=tp: f.exception() and log.info("purging %s: %s", tp, f.exception()))

    def _trim_prepares(self) -> None:
        """Every ``compact_every`` epochs, delete the prepare records of marked batches (``trim_prepares``), on a thread of its own.

        One trim at a time, off the commit path; a failure only leaves records longer.
        """
        self.trim_countdown -= 1
        if self.trim_countdown > 0 or (self.trimming is not None and not self.trimming.done()):
            return
        self.trim_countdown = self.config.compact_every
        if self.trimmer is None:
            self.trimmer = futures.ThreadPoolExecutor(1, thread_name_prefix=f"lockgate-trim-{self.config.name}")
        self.trimming = self.trimmer.submit(trim_prepares, self.config.admin_options(), self.config.name, self.log)
        self.trimming.add_done_callback(lambda f: f.exception() and log.info("trimming the prepares topic: %s", f.exception()))

    def _drain(self) -> None:
        """Wait until every committed epoch is in LanceDB (the materializer's queue is empty)."""
        if self.committer is not None:
            self.committer.drain()

    def _count(self, epoch: Epoch) -> None:
        self.metrics.add("batches")
        self.metrics.add("commits")
        for out in epoch.outgoing:
            self.metrics.add("records_out", len(out.values), topic=out.topic)
            if out.topic == self.config.dlq_topic:
                self.metrics.add("dlq", len(out.values), topic=out.topic)
        for table, frame in epoch.tables:
            self.metrics.add("table_rows", frame.height, topic=table.name)
        self.metrics.set("last_epoch", epoch.number)
