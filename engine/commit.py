"""The commit protocol: how an epoch's outputs, input offsets and state commit together, exactly once.

Every micro-batch is an epoch.  Its Kafka transaction carries its LanceDB rows, so
the commit never waits for LanceDB (as Kafka Streams keeps RocksDB off its commit
path: its changelog topics are in the transaction).  In this order:

1. **Build** (the runner's thread, as it starts the epoch): every LanceDB row of
   the epoch, tagged with its fresh batch id (table-sink rows, window-state
   deltas, the commit log's prepare rows: per input partition the first and next
   offset, the tables, the maximum event time, the batch it follows), and the
   *prepare record*: those rows as one Kafka value, Arrow IPC per table
   (:mod:`lockgate.storage.prepare_record`, ``EpochTransaction.build_rows``).
2. **Kafka side**, on the epoch's commit thread: begin the transaction, produce the
   outputs and dead letters, the prepare record (in chunks of at most 512 KB) to
   ``<pipeline>-lockgate-prepares``, and add the next offset of every input
   partition to it (``send_offsets_to_transaction``; the offset metadata names the
   batch id).  Nothing of it is visible yet.
3. **Commit the Kafka transaction**: the decision point of the epoch.  The outputs,
   the offsets and the prepare record (the state) commit together.  If librdkafka
   says a step needs an abort, the epoch is *aborted*: the runner rewinds to the
   batch's first offsets and reloads the state of the last committed epoch, and the
   batch is redone; nothing of it ever reaches LanceDB.
4. **Materialize** after the commit, on one materializer thread, in epoch order
   (:meth:`Committer.settle` queues it, at most ``_MATERIALIZE_QUEUE`` epochs
   behind): every table's rows side by side, then the commit log's prepare rows and
   the epoch's commit mark in one append; at most every ``_MATERIALIZE_EVERY_S``,
   the epochs committed meanwhile (or queued when it fell behind) in one go, one
   append per table (``transaction.materialize_together``).
   Readers see only marked batches, so all of an epoch or none of it.  Before state
   is loaded again (a reload after an abort, partitions assigned or revoked, the
   end of a run) the queue is drained (:meth:`Committer.drain`).

Recovery: a crash between steps 3 and 4 leaves committed records LanceDB lacks.
When partitions are assigned, before their state loads, the instance reads the
prepares topic (``read_committed``) and writes each unmarked record of those
partitions (``engine.prepares.recover_prepares``); every ``compact_every`` epochs
the records of marked batches are deleted from it (``trim_prepares``).

Between epochs: one epoch is in flight at a time.  While it commits, the runner
polls, decodes and folds the next batch; the next epoch starts only after this
one settled (:meth:`Committer.settle`).  A commit call that hangs past its own
timeout (librdkafka#5456, #5511: ``send_offsets_to_transaction`` after a broker
restart) is cut loose: a new producer with the same ``transactional.id`` fences
the hung one, and the group's committed offsets say whether the epoch committed.

>>> from lockgate.engine.commit import Committer
>>> Committer.wait_ready.__doc__.splitlines()[0]
'Wait up to ``timeout`` s until the next batch should close; whether it should.'
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

import confluent_kafka as ck
import numpy as np
from lockgate.engine import faults, kafka_clients
from lockgate.engine.metrics import Metrics
from lockgate.engine.transaction import (
    Epoch, EpochTransaction, TransactionAborted, TransactionalProducer, is_fatal, materialize_together, parse_offset_metadata,
)
from lockgate.storage.commit_log import CommitLog

__all__ = ["HANG_GRACE_S", "Committer", "Settled", "run_epoch"]

log = logging.getLogger("lockgate.commit")

#: how long past its own timeout a Kafka commit call may run before it counts as hung
HANG_GRACE_S = 15.0
#: weight of the newest epoch in the running estimates of Committer.wait_ready
_NEWEST = 0.2
#: committed epochs whose LanceDB writes may wait in the materializer's queue before a settle waits for the oldest
_MATERIALIZE_QUEUE = 8
#: the most queued epochs the materializer writes in one go (one append per table, one log append)
_MATERIALIZE_GROUP = 8
#: the least time between two starts of the materializer's writes: the epochs committed meanwhile go in one
#: append per table.  A Lance append costs about the same for one epoch's rows as for several, and at 50k
#: records/s the LanceDB threads took 40 % of the engine's CPU with an append per epoch (15 a second).
#: A drain (a reload, partitions moving, the end of a run) or a full queue writes at once.
_MATERIALIZE_EVERY_S = 0.25


def _ewma(estimate: float | None, value: float) -> float:
    """An exponentially weighted running mean; the first value as it is.

    >>> _ewma(None, 0.05), round(_ewma(0.05, 0.10), 3)
    (0.05, 0.06)
    """
    return value if estimate is None else estimate + _NEWEST * (value - estimate)


def in_thread(fn: Callable[[], None], name: str) -> Future[None]:
    """Run ``fn`` on a daemon thread; its outcome in a future.

    Not a pool: a thread stuck in a hung librdkafka call must not keep the process
    from exiting or the next commit from starting.

    >>> in_thread(lambda: None, "example").result(timeout=5) is None
    True
    """
    future: Future[None] = Future()

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(exc)
        else:
            future.set_result(None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def run_epoch(txn: EpochTransaction) -> None:
    """Steps 2 and 3 of the protocol for one epoch (see the module docstring), on the epoch's commit thread."""
    try:
        txn.produce()
        txn.closable.set()  # only the Kafka commit is left: the next batch may close
        txn.commit_kafka()
    finally:
        txn.finished_at = time.monotonic()
        txn.closable.set()


@dataclass(frozen=True)
class Settled:
    """How an epoch's commit ended: committed, or ``aborted`` (to be redone after a rewind)."""

    txn: EpochTransaction
    aborted: TransactionAborted | None = None


class Committer:
    """The commit protocol of one pipeline instance: its transactional producer, the epoch in flight, the materializer.

    ``committed(partitions)`` returns the group's committed offsets and their
    metadata, ``{(topic, partition): (offset, metadata)}``: how the outcome of a
    hung commit is decided.
    """

    def __init__(
        self, pipeline: str, log_: CommitLog, producer_options: dict[str, Any], *, commit_timeout_s: float, metrics: Metrics,
        committed: Callable[[set[tuple[str, int]]], dict[tuple[str, int], tuple[int, str | None]]],
        prepares_topic: str, hang_grace_s: float | None = None, min_interval_s: float = 0.0,
    ) -> None:
        self.pipeline = pipeline
        #: the topic each epoch's prepare record goes to (``engine.prepares.prepares_topic``)
        self.prepares_topic = prepares_topic
        #: committed epochs' LanceDB writes (step 4), in epoch order, on one thread
        self.materializer = futures.ThreadPoolExecutor(1, thread_name_prefix=f"lockgate-materialize-{pipeline}")
        self.materializing: list[Future[None]] = []
        #: committed epochs waiting for the materializer (each with the future that says it was written), and its lock
        self.queued: list[tuple[EpochTransaction, Future[None]]] = []
        self.queue_lock = threading.Lock()
        #: the materializer's first failure: nothing is written after it
        self.failed: BaseException | None = None
        #: when the materializer's last write started (monotonic); set while the runner waits for writes: no interval then
        self.last_write = 0.0
        self.hurry = threading.Event()
        self.log = log_
        self.producer_options = producer_options
        self.commit_timeout_s = commit_timeout_s
        self.hang_grace_s = HANG_GRACE_S if hang_grace_s is None else hang_grace_s
        self.metrics = metrics
        self.committed = committed
        self.producer = self._new_producer()
        self.inflight: tuple[EpochTransaction, Future[None]] | None = None
        self.started_at: float | None = None  # monotonic time the epoch in flight (or the last one) started its commit
        #: the least time between two epochs' starts (``BatchPolicy.min_interval``)
        self.min_interval_s = min_interval_s
        #: running estimates (s): an epoch's commit, start to finish; a batch's lead, closed to its commit's start
        self.commit_estimate: float | None = None
        self.lead_estimate: float | None = None

    def _new_producer(self) -> TransactionalProducer:
        return TransactionalProducer(self.producer_options, call_timeout=self.commit_timeout_s)

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until the next batch should close; whether it should.

        A closed batch needs some time before its commit can start (the rest of its
        decode, its operators: its *lead*), and its commit can start only once the
        epoch in flight has finished.  So the batch closes when the epoch in flight
        is expected to finish within the batch's lead (running estimates of both), or
        once only its ``commit_transaction`` is left (steps 1 and 2 done), or when none
        is in flight.  The batch's processing then overlaps the end of the commit before
        it instead of following it.  But never before ``min_interval_s`` after the last
        epoch started, less the batch's lead: so the commits start about ``min_interval_s``
        apart, not ``min_interval_s`` plus a lead.  The wait holds no GIL.
        """
        if self.started_at is not None and self.min_interval_s > 0:
            early = self.started_at + self.min_interval_s - (self.lead_estimate or 0.0) - time.monotonic()
            if early > 0:
                time.sleep(min(early, timeout))
                if early >= timeout:
                    return False
                timeout -= early
        if self.inflight is None:
            return True
        txn, future = self.inflight
        if future.done() or txn.closable.is_set():
            return True
        if self.commit_estimate is None or self.lead_estimate is None or self.started_at is None:
            return txn.closable.wait(timeout)
        left = self.started_at + self.commit_estimate - self.lead_estimate - time.monotonic()
        if left <= 0:
            return True
        return txn.closable.wait(min(timeout, left)) or left <= timeout

    def start(self, epoch: Epoch, group: object, seconds: dict[str, float]) -> None:
        """Build ``epoch``'s rows here (step 1), then start steps 2-3 on its commit thread; ``seconds``: the runner's stages of it.

        Only after the previous epoch settled.
        """
        if self.inflight is not None:
            raise AssertionError(f"epoch {epoch.number}: started while epoch {self.inflight[0].epoch.number} is in flight")
        txn = EpochTransaction(self.pipeline, epoch, self.log, self.producer, group, self.prepares_topic)
        building = time.monotonic()
        txn.build_rows()  # on this (the runner's) thread: the commit thread produces them, the materializer only writes
        faults.crash_point("after_prepare")  # the prepare record built; nothing of the epoch in Kafka yet
        seconds = {**seconds, "operators": seconds.get("operators", 0.0) + time.monotonic() - building}
        txn.seconds.update(seconds)
        self.lead_estimate = _ewma(self.lead_estimate, seconds.get("decode", 0.0) + seconds.get("operators", 0.0))
        self.started_at = time.monotonic()
        self.inflight = (txn, in_thread(lambda: run_epoch(txn), f"lockgate-commit-{self.pipeline}-{epoch.number}"))

    def wait(self) -> None:
        """Block until the epoch in flight has finished (its outcome is taken by :meth:`settle`).

        A commit call that hangs past its timeout is cut loose: see :meth:`_replace_hung_producer`.
        """
        if self.inflight is None:
            return
        txn, future = self.inflight
        call = self._wait_or_hung(future, txn.producer)
        if call is not None:
            self.inflight = (txn, self._replace_hung_producer(txn, call))

    def _wait_or_hung(self, future: Future[None], producer: TransactionalProducer) -> str | None:
        """Wait for ``future``; the call of ``producer`` that hung past its timeout first (None once it is done)."""
        while not wait([future], timeout=min(1.0, self.hang_grace_s)).done:
            call = producer.hung(grace=self.hang_grace_s)
            if call is not None:
                return call
        return None

    def _replace_hung_producer(self, txn: EpochTransaction, call: str) -> Future[None]:
        """Replace a producer whose ``call`` hangs; return the epoch's outcome as a finished future.

        The new producer has the same ``transactional.id``: its ``init_transactions``
        fences the hung one and settles the open transaction at the coordinator
        (aborted, or finished if the commit had already been decided).  Which one it
        was, the group's committed offsets say: their metadata names the batch that
        committed last.
        """
        number = txn.epoch.number
        log.warning(
            "waiting for Kafka: the commit of epoch %d hung in %s, %.0fs past its %.0fs timeout; replacing the "
            "transactional producer (its init_transactions fences the hung one and settles the open transaction)",
            number, call, self.hang_grace_s, self.commit_timeout_s,
        )
        self.metrics.add("producer_replacements")
        self.producer = self._new_producer()
        partitions = {(r.topic, r.partition) for r in txn.epoch.ranges}
        committed = self.committed(partitions)
        outcome: Future[None] = Future()
        if all(parse_offset_metadata(committed.get(tp, (0, None))[1]) == txn.epoch.batch_id for tp in partitions):
            log.info("epoch %d had committed before its producer was replaced", number)
            outcome.set_result(None)
        else:
            outcome.set_exception(TransactionAborted(f"epoch {number}: its Kafka commit hung in {call}; the new producer aborted it"))
        return outcome

    def settle(self) -> Settled | None:
        """Wait for the epoch in flight and take its outcome; None when there is none.

        Committed: its LanceDB writes are queued (step 4) and its stages observed.
        Aborted: a :class:`Settled` with ``aborted`` set (the runner rewinds and
        reloads).  A failure (``CommitError``) is raised: the pipeline stops and
        nothing of the batch is committed.  An earlier epoch's failed LanceDB write
        (a ``StorageError`` naming the table) is raised here too: the pipeline stops,
        and the epoch's rows are written from its prepare record at the next start.
        """
        if self.inflight is None:
            return None
        waiting = time.monotonic()
        self.wait()
        txn, future = self.inflight
        self.inflight = None
        txn.seconds["settle_wait"] = time.monotonic() - waiting
        try:
            future.result()
        except TransactionAborted as exc:
            if exc.fenced:
                log.warning(
                    "fenced: the consumer group gave this instance's partitions to another instance while it was away "
                    "(paused or cut off); %s. Nothing of the batch is committed; its prepared LanceDB rows are never read. "
                    "Rejoining the group.", exc,
                )
                self.metrics.add("fenced")
            else:
                log.warning("%s; rewinding to the batch's first offsets to redo it", exc)
            self.metrics.add("aborts")
            if exc.needs_new_producer and txn.producer is self.producer:
                log.warning("epoch %d: replacing the fenced transactional producer", txn.epoch.number)
                self.metrics.add("producer_replacements")
                self.producer = self._new_producer()
            return Settled(txn, exc)
        if not txn.materializing:  # finish_inflight may have queued it already
            self._materialize(txn)
        if txn.finished_at is not None and self.started_at is not None:
            self.commit_estimate = _ewma(self.commit_estimate, txn.finished_at - self.started_at)
        self._observe(txn)
        return Settled(txn)

    def commit_offsets(self, offsets: list[ck.TopicPartition], group: object) -> bool:
        """Commit ``offsets`` alone in a transaction of their own; False when it did not commit (ask again later).

        For the offsets a consumer passes without reading a record: the commit
        markers that end a transactional topic's partitions (read_committed skips
        them; the last epoch committed the offset before them).  Committed, the
        group's lag is 0 and the other instances can tell that this one has read
        its partitions out (see ``Runner._group_read``); each offset keeps the
        metadata of the batch the partition committed last, so recovery finds the
        same batch.  Only between epochs: a hung call replaces the producer, as
        :meth:`wait` does.
        """
        if self.inflight is not None:
            raise AssertionError("commit_offsets while an epoch is in flight")
        p = self.producer

        def run() -> None:
            p._retry("begin_transaction", p.producer.begin_transaction)
            try:
                p._retry("send_offsets_to_transaction", lambda: p.producer.send_offsets_to_transaction(offsets, group, p.call_timeout))
                p._retry("commit_transaction", lambda: p.producer.commit_transaction(p.call_timeout))
            except ck.KafkaException:
                p.abort()
                raise

        future = in_thread(run, f"lockgate-offsets-{self.pipeline}")
        call = self._wait_or_hung(future, p)
        if call is not None:
            log.warning("waiting for Kafka: an offsets-only commit hung in %s; replacing the transactional producer", call)
            self.metrics.add("producer_replacements")
            self.producer = self._new_producer()
            return False
        try:
            future.result()
        except ck.KafkaException as exc:
            log.info("the offsets-only commit did not go through (%s); asking again later", exc)
            if is_fatal(kafka_clients.kafka_error(exc)):
                self.metrics.add("producer_replacements")
                self.producer = self._new_producer()
            return False
        return True

    def _materialize(self, txn: EpochTransaction) -> None:
        """Queue a committed epoch's LanceDB writes (step 4); wait for the oldest while more than a few are queued."""
        self.materializing = [f for f in self.materializing if not f.done() or f.exception() is not None]
        for future in self.materializing:
            if future.done():
                future.result()  # a failed write stops the pipeline at the next settle, not only once the queue is full
        while len(self.materializing) >= _MATERIALIZE_QUEUE:
            self.hurry.set()  # the runner waits: no interval
            try:
                self.materializing[0].result()  # a failure (a StorageError naming the table) stops the pipeline
            finally:
                self.hurry.clear()
            self.materializing.pop(0)
        self._submit(txn)

    def _submit(self, txn: EpochTransaction) -> None:
        """Queue ``txn``'s LanceDB writes; the materializer writes what is queued, several epochs in one go when it fell behind."""
        done: Future[None] = Future()
        txn.materializing = True
        with self.queue_lock:
            self.queued.append((txn, done))
        self.materializing.append(done)
        self.materializer.submit(self._write_queued)

    def _write_queued(self) -> None:
        """On the materializer's thread: write the queued epochs (at most ``_MATERIALIZE_GROUP``) together, in epoch order.

        After a failed write nothing more is written (a later epoch's mark must not
        come before an earlier epoch's rows): each later epoch's future fails too,
        and the next start writes them all from their prepare records.  A write starts
        ``_MATERIALIZE_EVERY_S`` after the last one at the soonest, unless the runner
        waits for it (``hurry``): the epochs committed meanwhile are written together.
        """
        wait = self.last_write + _MATERIALIZE_EVERY_S - time.monotonic()
        if wait > 0:
            self.hurry.wait(wait)
        with self.queue_lock:
            group, self.queued = self.queued[:_MATERIALIZE_GROUP], self.queued[_MATERIALIZE_GROUP:]
        if not group:
            return  # an earlier call wrote this call's epoch with its own
        self.last_write = time.monotonic()
        txns = [txn for txn, _ in group]
        try:
            if self.failed is not None:
                raise self.failed
            materialize_together(txns)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the futures
            self.failed = exc
            for _, done in group:
                done.set_exception(exc)
            return
        for txn, done in group:
            self._observe_materialized(txn, len(group))
            done.set_result(None)

    def _observe_materialized(self, txn: EpochTransaction, together: int) -> None:
        self.metrics.observe("stage_prepare_seconds", txn.seconds["prepare"])
        if txn.log_append_seconds is not None:  # its own mark, in the append after its rows
            self.metrics.observe("stage_mark_seconds", txn.log_append_seconds)
        lag = max(time.time() - (txn.committed_at or time.time()), 1e-6)
        if txn.committed_at is not None:
            self.metrics.observe("stage_materialized_seconds", lag)
        if log.isEnabledFor(logging.DEBUG):  # the LanceDB side of the epoch's line in _observe
            log.debug("epoch %d written to LanceDB %.1f ms after its commit, with %d epochs in all; ms: prepare %.1f mark %.1f",
                      txn.epoch.number, lag * 1000, together, txn.seconds["prepare"] * 1000, (txn.log_append_seconds or 0.0) * 1000)

    def finish_inflight(self) -> None:
        """Wait for the epoch in flight and for every committed epoch's LanceDB writes (before partitions move, or the end).

        An epoch in flight that committed has its writes queued here (its settle
        will not queue them again): the next owner of its partitions loads their
        state from LanceDB.
        """
        self.wait()
        if self.inflight is not None:
            txn, future = self.inflight
            if future.done() and future.exception() is None and not txn.materializing:
                self._submit(txn)
        self.drain()

    def drain(self) -> None:
        """Wait until every committed epoch is written to LanceDB (before a reload, a revoke, the end of a run); raise the first failure."""
        pending, self.materializing = self.materializing, []
        self.hurry.set()  # write what is queued now, not after the interval
        try:
            for future in pending:
                future.result()
        finally:
            self.hurry.clear()

    def _observe(self, txn: EpochTransaction) -> None:
        # to when the Kafka commit returned, not to when the runner got round to settling the epoch
        now_ms = (txn.committed_at or time.time()) * 1000
        stages = dict(txn.seconds)  # a copy: a replaced hung producer's thread may still write
        stages.pop("prepare", None)  # observed when the rows are written, after the commit (Committer._submit)
        if txn.commit_seconds is not None:
            self.metrics.observe("commit_seconds", txn.commit_seconds)
        for stage, seconds in stages.items():  # one clock difference per stage and epoch (metrics.STAGES)
            self.metrics.observe(f"stage_{stage}_seconds", seconds)
        for name, times in (("latency_seconds", txn.epoch.timestamps_ms), ("event_latency_seconds", txn.epoch.event_times_ms)):
            if times is not None and len(times):
                self.metrics.observe(name, np.maximum(now_ms - times, 0) / 1000)
        if log.isEnabledFor(logging.DEBUG):  # one line per epoch: where a slow one spent its time
            times = txn.epoch.timestamps_ms
            log.debug(
                "epoch %d committed at %.3f: %d offsets read, the oldest record %.0f ms old; ms: %s", txn.epoch.number, now_ms / 1000,
                sum(r.next_offset - r.first_offset for r in txn.epoch.ranges),
                now_ms - times.min() if times is not None and len(times) else 0.0,
                " ".join(f"{stage} {seconds * 1000:.1f}" for stage, seconds in stages.items()),
            )
