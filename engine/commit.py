"""The commit protocol: how an epoch's outputs, input offsets and state commit together, exactly once.

Every micro-batch is an epoch.  Its commit runs on a thread of its own, in this order:

1. **Prepare** (LanceDB, append only): the table-sink rows and the window-state
   deltas, tagged with the epoch's fresh batch id, and one prepare record per
   input partition (epoch, batch id, first and next offset, the tables it writes,
   maximum event time, the batch it follows): each an append to its own table,
   side by side.  The commit marks of earlier epochs travel in the same
   commit-log append (step 4).
2. **Kafka side**, at the same time as step 1, on a second thread: begin the
   transaction, produce the outputs and dead letters, and add the next offset of
   every input partition to it (``send_offsets_to_transaction``; the offset
   metadata names the batch id).  Nothing of it is visible yet.
3. **Commit the Kafka transaction** once both are done: the decision point of the
   epoch.  It never runs before the prepare is durable.  If step 1 failed, the
   transaction is aborted instead; if librdkafka says a step needs an abort, the
   epoch is *aborted*: the runner rewinds to the batch's first offsets and reloads
   the state of the last committed epoch, and the batch is redone.
4. **Mark** the epoch committed in LanceDB: queued when the epoch settles, it
   travels in the next epoch's step-1 append, or is written alone
   (:meth:`Committer.flush_marks`) when no batch follows.  Readers see only marked
   batches; recovery redoes a lost mark from the group's committed offsets and
   their metadata (``CommitLog.recover``).

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
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

import confluent_kafka as ck
import numpy as np
from lockgate.engine import faults, kafka_clients
from lockgate.engine.metrics import Metrics
from lockgate.engine.transaction import Epoch, EpochTransaction, TransactionAborted, TransactionalProducer, is_fatal, parse_offset_metadata
from lockgate.storage.commit_log import CommitLog

__all__ = ["HANG_GRACE_S", "Committer", "Settled", "run_epoch"]

log = logging.getLogger("lockgate.commit")

#: how long past its own timeout a Kafka commit call may run before it counts as hung
HANG_GRACE_S = 15.0
#: weight of the newest epoch in the running estimates of Committer.wait_ready
_NEWEST = 0.2


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
    """Steps 1-3 of the protocol for one epoch (see the module docstring), on the epoch's commit thread.

    The prepare (step 1) runs here, the Kafka side (step 2) on a thread of its own:
    LanceDB appends wait on Lance without the GIL, the produce loop holds it.  The
    Kafka commit (step 3) waits for both.
    """
    try:
        kafka = in_thread(txn.produce, f"{threading.current_thread().name}-kafka")
        try:
            txn.prepare()  # append-only and tagged with a fresh batch id: harmless if the batch is dropped
        except BaseException:
            wait([kafka])
            txn.abort()  # the Kafka side may have opened the transaction
            raise
        faults.crash_point("after_prepare")
        kafka.result()  # TransactionAborted or CommitError from step 2
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
    """The commit protocol of one pipeline instance: its transactional producer, the epoch in flight, the pending marks.

    ``committed(partitions)`` returns the group's committed offsets and their
    metadata, ``{(topic, partition): (offset, metadata)}``: how the outcome of a
    hung commit is decided.
    """

    def __init__(
        self, pipeline: str, log_: CommitLog, producer_options: dict[str, Any], *, commit_timeout_s: float, metrics: Metrics,
        committed: Callable[[set[tuple[str, int]]], dict[tuple[str, int], tuple[int, str | None]]],
        hang_grace_s: float | None = None, min_interval_s: float = 0.0,
    ) -> None:
        self.pipeline = pipeline
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
        #: committed epochs whose marks are not written yet: they travel with the next prepare (step 4)
        self.pending_marks: list[Epoch] = []

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
        """Start steps 1-3 of ``epoch`` on its commit thread; ``seconds`` are the runner's stages of it (wait, decode, ...).

        The pending marks go with it.  Only after the previous epoch settled.
        """
        if self.inflight is not None:
            raise AssertionError(f"epoch {epoch.number}: started while epoch {self.inflight[0].epoch.number} is in flight")
        txn = EpochTransaction(self.pipeline, epoch, self.log, self.producer, group, self.pending_marks)
        building = time.monotonic()
        txn.build_rows()  # on this (the runner's) thread: the commit thread's appenders only write
        seconds = {**seconds, "operators": seconds.get("operators", 0.0) + time.monotonic() - building}
        txn.seconds.update(seconds)
        self.pending_marks = []
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

        Committed: its mark is queued (step 4) and its stages observed.  Aborted: a
        :class:`Settled` with ``aborted`` set (the runner rewinds and reloads).  A
        failure (``CommitError``, a LanceDB error) is raised: the pipeline stops and
        nothing of the batch is committed.
        """
        if self.inflight is None:
            return None
        waiting = time.monotonic()
        self.wait()
        txn, future = self.inflight
        self.inflight = None
        txn.seconds["settle_wait"] = time.monotonic() - waiting
        if txn.marks and txn.log_append_seconds is not None:  # the marks it carried are written, whatever its outcome
            for _ in txn.marks:  # usually one: scalar observations are the cheap ones
                self.metrics.observe("stage_mark_seconds", txn.log_append_seconds)
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
        self.pending_marks.append(txn.epoch)
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

    def flush_marks(self) -> None:
        """Write the pending commit marks alone (no batch follows to carry them)."""
        for epoch in self.pending_marks:
            started = time.monotonic()
            self.log.mark(self.pipeline, epoch=epoch.number, batch_id=epoch.batch_id)
            self.metrics.observe("stage_mark_seconds", time.monotonic() - started)
        self.pending_marks = []

    def _observe(self, txn: EpochTransaction) -> None:
        # to when the Kafka commit returned, not to when the runner got round to settling the epoch
        now_ms = (txn.committed_at or time.time()) * 1000
        stages = dict(txn.seconds)  # a copy: a replaced hung producer's thread may still write
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
