"""The Kafka transaction of one micro-batch (epoch), and the transactional producer.

:class:`EpochTransaction` holds the steps of an epoch's commit and checks the
state each is called in; an error in the middle of a commit is never swallowed.
The order the steps run in, and what happens between epochs, is the commit
protocol in :mod:`lockgate.engine.commit`.

Errors are classified as librdkafka classifies them: ``retriable()`` -> retry the
same call, ``txn_requires_abort()`` -> abort and redo the batch, fatal (``is_fatal``) or
anything else -> fail: the pipeline stops and nothing of the batch is committed.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import confluent_kafka as ck
import numpy as np
import polars as pl
import pyarrow as pa
from lockgate.engine import faults
from lockgate.engine import kafka_clients
from lockgate.engine.columns import OFFSET, PARTITION, TOPIC, one_topic
from lockgate.errors import CommitError
from lockgate.storage.commit_log import CommitLog, PartitionRange
from lockgate.storage.prepare_record import PrepareRecord, chunks, encode
from lockgate.storage.sink_tables import SinkTable
from lockgate.storage.state import state_rows

if TYPE_CHECKING:
    from lockgate.engine.stateful import StateDelta

__all__ = ["Epoch", "EpochTransaction", "OutgoingTopic", "TransactionAborted", "TransactionalProducer", "materialize_together"]

log = logging.getLogger("lockgate.commit")
T = TypeVar("T")


class TransactionAborted(Exception):
    """The Kafka transaction was aborted; the batch must be rewound and redone."""

    def __init__(self, message: str, code: int | None = None, needs_new_producer: bool = False) -> None:
        super().__init__(message)
        self.code = code
        #: the transaction outlived transaction.timeout.ms (a stall) and the coordinator's time-out
        #: abort fenced the producer: it can begin no other transaction
        self.needs_new_producer = needs_new_producer

    @property
    def fenced(self) -> bool:
        """True when the group fenced this instance (KIP-447): its partitions moved while it was away."""
        return self.code in _FENCED_CODES


_FENCED_CODES = frozenset(
    {
        ck.KafkaError.UNKNOWN_MEMBER_ID,
        ck.KafkaError.ILLEGAL_GENERATION,
        ck.KafkaError.FENCED_INSTANCE_ID,
        ck.KafkaError.REBALANCE_IN_PROGRESS,
    }
)


#: what a producer gets once its transactional.id has a newer epoch (another producer, or a coordinator time-out)
_PRODUCER_FENCED_CODES = frozenset({ck.KafkaError._FENCED, ck.KafkaError.PRODUCER_FENCED, ck.KafkaError.INVALID_PRODUCER_EPOCH})


@dataclass(frozen=True)
class OutgoingTopic:
    """The encoded records a batch produces to one topic."""

    topic: str
    values: list[bytes | None]
    keys: list[Any] | None = None
    headers: list[list[tuple[str, bytes]]] | None = None
    #: the partition of each record (a repartition topic's); None: the producer's partitioner picks
    partitions: list[int] | None = None


@dataclass(frozen=True)
class Epoch:
    """What one micro-batch commits."""

    number: int
    ranges: tuple[PartitionRange, ...]
    outgoing: tuple[OutgoingTopic, ...] = ()
    tables: tuple[tuple[SinkTable, pl.DataFrame], ...] = ()
    states: tuple[StateDelta, ...] = ()
    event_times: Mapping[tuple[str, int], int] = field(default_factory=dict)
    #: each window source's watermark when the batch was folded: the floor after a reload once the epoch commits
    watermarks: Mapping[str, int | None] = field(default_factory=dict)
    #: per input partition, the batch this one follows on the partition's chain
    prev: Mapping[tuple[str, int], int] = field(default_factory=dict)
    #: Kafka timestamps and event times (epoch ms) of the batch's records, for the latency histograms
    timestamps_ms: np.ndarray | None = None
    event_times_ms: np.ndarray | None = None
    batch_id: int = field(default_factory=lambda: secrets.randbits(62))

    @property
    def offsets(self) -> list[ck.TopicPartition]:
        """The next offset of every input partition, committed with the transaction.

        Each carries the batch id as offset metadata, so recovery reads from Kafka
        itself which batch was the last committed one.
        """
        tag = offset_metadata(self.batch_id, self.number)
        return [ck.TopicPartition(r.topic, r.partition, r.next_offset, metadata=tag) for r in self.ranges]


def offset_metadata(batch_id: int, epoch: int) -> str:
    """The committed-offset metadata that names the batch (see ``parse_offset_metadata``)."""
    return f"lockgate:{batch_id}:{epoch}"


def parse_offset_metadata(text: str | None) -> int | None:
    """The batch id in committed-offset metadata written by lockgate, else None.

    >>> parse_offset_metadata(offset_metadata(42, 7))
    42
    >>> parse_offset_metadata("something else") is None
    True
    """
    parts = (text or "").split(":")
    if len(parts) == 3 and parts[0] == "lockgate" and parts[1].isdigit():
        return int(parts[1])
    return None


def is_fatal(err: ck.KafkaError | None) -> bool:
    """Whether librdkafka says the client is dead: ``fatal()``, or the code ``_FATAL``.

    Once a transactional producer is fenced, the commit call raises an error with
    ``fatal()`` set, but ``produce()`` raises ``_FATAL`` ("Local: Fatal error")
    with ``fatal()`` unset: both mean the same.

    >>> is_fatal(ck.KafkaError(ck.KafkaError._FATAL))
    True
    >>> is_fatal(ck.KafkaError(ck.KafkaError._TIMED_OUT)), is_fatal(None)
    (False, False)
    """
    return err is not None and (err.fatal() or err.code() == ck.KafkaError._FATAL)


class TransactionalProducer:
    """The one transactional producer of a pipeline instance (stable ``transactional.id``)."""

    def __init__(self, options: dict[str, Any], *, call_timeout: float = 60.0) -> None:
        self.producer = kafka_clients.producer(options)
        self.transactional_id = options["transactional.id"]
        #: transaction.timeout.ms: an open transaction older than this is aborted by the coordinator
        self.transaction_timeout_s = float(options.get("transaction.timeout.ms", 60_000)) / 1000
        self.call_timeout = call_timeout
        self.call: tuple[str, float] | None = None  # the blocking call running now, and since when
        self._retry("init_transactions", lambda: self.producer.init_transactions(call_timeout))

    def _retry(self, what: str, call: Callable[[], T], attempts: int = 40) -> T:
        """Run ``call``; retry with backoff while librdkafka says the error is retriable."""
        delay = 0.1
        for attempt in range(attempts):
            try:
                self.call = (what, time.monotonic())
                return call()
            except ck.KafkaException as exc:
                err = kafka_clients.kafka_error(exc)
                if err is not None and err.retriable() and not is_fatal(err) and attempt < attempts - 1:
                    log.warning("waiting for Kafka: %s: %s; retrying in %.1fs", what, err.str(), delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                raise
            finally:
                self.call = None
        raise AssertionError("unreachable")  # pragma: no cover

    def hung(self, grace: float) -> str | None:
        """The blocking call that has run ``grace`` seconds past its own timeout, if any.

        librdkafka does not always honour the timeout: ``send_offsets_to_transaction``
        can block for good while the group coordinator moves (librdkafka#5456, #5511).
        """
        call = self.call
        if call is not None and time.monotonic() - call[1] > self.call_timeout + grace:
            return call[0]
        return None

    def produce(self, out: OutgoingTopic) -> None:
        """Queue every record of ``out``; waits for room when the local queue is full."""
        produce, poll = self.producer.produce, self.producer.poll
        topic, values, keys, headers = out.topic, out.values, out.keys, out.headers
        n, i = len(values), 0
        while i < n:
            try:
                if out.partitions is not None:  # a few record batches per partition
                    for i in range(i, n):  # noqa: B020
                        produce(topic, values[i], partition=out.partitions[i])
                elif headers is not None:
                    for i in range(i, n):  # noqa: B020 - resumes at the record that met a full queue
                        produce(topic, values[i], None if keys is None else keys[i], headers=headers[i])
                elif keys is None:
                    for i in range(i, n):  # noqa: B020
                        produce(topic, values[i])
                else:
                    for i in range(i, n):  # noqa: B020
                        produce(topic, values[i], keys[i])
                i = n
            except BufferError:
                poll(0.05)

    def abort(self) -> None:
        """Abort the open transaction, if any."""
        try:
            self.producer.abort_transaction(self.call_timeout)
        except ck.KafkaException as exc:
            err = kafka_clients.kafka_error(exc)
            if err is not None and err.code() == ck.KafkaError._STATE:
                return  # no transaction open
            raise


class EpochTransaction:
    """The steps of one :class:`Epoch`'s commit; :mod:`lockgate.engine.commit` runs them in protocol order.

    :meth:`build_rows` (the runner's thread) builds every LanceDB row of the epoch and
    its prepare record; :meth:`produce` (begin, the outputs, the prepare record, the
    offsets) and :meth:`commit_kafka` make the Kafka transaction; :meth:`materialize`
    writes the rows to LanceDB after the commit.  Kafka states: ``new`` ->
    ``producing`` -> ``committed``, or ``aborted`` (rewind and redo the batch), or
    ``failed`` (stays failed and re-raises).
    """

    def __init__(
        self,
        pipeline: str,
        epoch: Epoch,
        log_: CommitLog,
        producer: TransactionalProducer,
        group: object,
        prepares_topic: str,
    ) -> None:
        self.pipeline = pipeline
        #: the topic the epoch's prepare record goes to, in its transaction (``engine.prepares``)
        self.prepares_topic = prepares_topic
        #: the prepare record's value: every LanceDB row of the epoch, built by :meth:`build_rows`
        self.record: bytes | None = None
        self.epoch = epoch
        self.log = log_
        self.producer = producer
        self.group = group
        self.state = "new"
        self.began_at: float | None = None  # monotonic time of begin_transaction
        #: set once only the Kafka commit is left (or the epoch ended): the next batch may close
        self.closable = threading.Event()
        self.finished_at: float | None = None  # monotonic time its commit thread ended
        #: the prepare record is in the transaction: the Kafka transaction may commit
        self.record_sent = False
        #: its LanceDB writes are queued (after its commit: ``Committer``'s materializer)
        self.materializing = False
        #: its rows and commit mark are in LanceDB
        self.materialized = False
        self.error: BaseException | None = None
        self.commit_seconds: float | None = None
        #: how long each stage of this epoch took, in seconds (``stage_<name>_seconds`` in the metrics):
        #: the runner puts in its own (wait, decode, operators); produce, commit and prepare (the LanceDB writes) are timed here
        self.seconds: dict[str, float] = {}
        #: the rows :meth:`materialize` writes, built by :meth:`build_rows` (None and empty until then): each state
        #: delta's, each table sink's with rows (the table and its rows), and the commit log's (prepare rows and mark)
        self.state_rows: list[pa.Table | None] | None = None
        self.table_rows: list[tuple[SinkTable, pa.Table]] = []
        self.log_rows: pa.Table | None = None
        #: how long the commit-log append of :meth:`materialize` took: it carries the epoch's mark
        self.log_append_seconds: float | None = None
        #: wall-clock time (``time.time()``) when the Kafka commit returned: the end of end-to-end latency
        self.committed_at: float | None = None

    def _expect(self, *states: str) -> None:
        if self.state == "failed":
            raise CommitError(f"epoch {self.epoch.number}: the transaction failed earlier") from self.error
        if self.state not in states:
            raise CommitError(f"epoch {self.epoch.number}: cannot go on from state {self.state!r} (expected {states})")

    def _fail(self, exc: BaseException) -> None:
        self.state = "failed"
        self.error = exc

    def build_rows(self) -> None:
        """Build every LanceDB row of the epoch (state deltas, table-sink rows, the commit log's) and its prepare record.

        :class:`~lockgate.engine.commit.Committer` calls it on the runner thread as it
        starts the epoch: that thread holds the GIL while it builds an epoch anyway,
        while on another thread each of the build's Polars and pyarrow calls waits for
        the GIL again beside the runner (``bench/state_appends.py``: 63 ms against
        14 ms for the write alone, beside a busy Python thread).  The rows go to the
        Kafka transaction as one prepare record (:mod:`lockgate.storage.prepare_record`),
        and the materializer only writes them.  The commit log's rows are the prepare
        rows (one per input partition) and, last, the epoch's own commit mark: they
        are written in one append after every table's rows.  Once per epoch.
        """
        if self.state_rows is not None:
            return
        number, batch_id = self.epoch.number, self.epoch.batch_id
        self.table_rows = [
            (table, table.rows_of(frame, batch_id=batch_id, epoch=number)) for table, frame in self.epoch.tables if frame.height
        ]
        self.state_rows = [
            state_rows(d.store.arrow_schema, d.changes.upserts, d.changes.deletes, batch_id, number) for d in self.epoch.states
        ]
        written = [table.name for table, _ in self.table_rows] + [f"state:{d.store.name}" for d in self.epoch.states]
        prepare = self.log.prepare_rows(
            self.pipeline, epoch=number, batch_id=batch_id, ranges=self.epoch.ranges, tables=dict.fromkeys(written),
            event_times=self.epoch.event_times, prev=self.epoch.prev,
        )
        tables = [(table.uri, rows) for table, rows in self.table_rows]
        tables += [(d.store.uri, rows) for d, rows in zip(self.epoch.states, self.state_rows, strict=True) if rows is not None]
        self.record = encode(PrepareRecord(self.pipeline, number, batch_id, tuple(tables), prepare))
        mark = self.log.mark_rows(self.pipeline, [(number, batch_id)])
        self.log_rows = mark if prepare is None else pa.concat_tables([prepare, mark])

    def materialize(self) -> None:
        """Write the epoch's rows to LanceDB after its Kafka commit: :func:`materialize_together` of this epoch alone."""
        materialize_together([self])

    def produce(self) -> None:
        """Begin the Kafka transaction, queue the outputs, and add the input offsets to it.

        Nothing of it is visible before :meth:`commit_kafka`; if the epoch never
        commits, the transaction is aborted (by this instance or by the next
        ``init_transactions`` of its ``transactional.id``).
        """
        self._expect("new")
        started = time.monotonic()
        p = self.producer
        offsets = self.epoch.offsets
        with self._kafka_step():
            p._retry("begin_transaction", p.producer.begin_transaction)
            self.began_at = time.monotonic()
            self.state = "producing"
            for out in self.epoch.outgoing:
                p.produce(out)
            self.build_rows()  # done already when the runner started the epoch (Committer.start)
            assert self.record is not None
            parts = chunks(self.record, self.epoch.batch_id)  # a snapshot's rows can pass the broker's 1 MB per message
            p.produce(OutgoingTopic(self.prepares_topic, parts, partitions=[0] * len(parts)))
            self.record_sent = True
            timeout = p.call_timeout
            p._retry("send_offsets_to_transaction", lambda: p.producer.send_offsets_to_transaction(offsets, self.group, timeout))
        self.seconds["produce"] = time.monotonic() - started

    def commit_kafka(self) -> None:
        """Commit the Kafka transaction: the decision point of the epoch.  Only with its prepare record in the transaction."""
        self._expect("producing")
        if not self.record_sent:
            raise CommitError(f"epoch {self.epoch.number}: its Kafka transaction may not commit without its prepare record (its LanceDB rows)")
        started = time.monotonic()
        p = self.producer
        faults.crash_point("after_produce")
        with self._kafka_step():
            p._retry("commit_transaction", lambda: p.producer.commit_transaction(p.call_timeout))
        self.state = "committed"
        self.committed_at = time.time()
        self.commit_seconds = self.seconds["commit"] = time.monotonic() - started
        faults.crash_point("after_commit")

    @contextmanager
    def _kafka_step(self) -> Iterator[None]:
        """Classify what a step inside the Kafka transaction raises: abort-and-redo, or fail (and re-raise)."""
        try:
            yield
        except ck.KafkaException as exc:
            self._on_kafka_error(exc)
        except BaseException as exc:
            self._abort_quietly()
            self._fail(exc)
            raise

    def _abort_quietly(self) -> None:
        try:
            self.producer.abort()
        except Exception as exc:  # noqa: BLE001 - the original error is what the caller sees
            log.error("abort after a failed produce also failed: %s", exc)

    def _outlived_its_timeout(self, err: ck.KafkaError | None) -> float | None:
        """How long the transaction had been open, when a fencing error came after transaction.timeout.ms; else None.

        Then the fence is the coordinator's: it aborted the transaction that stayed open
        too long (this instance was paused or cut off) and bumped the producer epoch.
        Another live producer with the same ``transactional.id`` fences at any moment,
        mostly well inside the time-out, and stays fatal.
        """
        if err is None or err.code() not in _PRODUCER_FENCED_CODES or self.began_at is None:
            return None
        age = time.monotonic() - self.began_at
        return age if age > self.producer.transaction_timeout_s else None

    def _on_kafka_error(self, exc: ck.KafkaException) -> None:
        err = kafka_clients.kafka_error(exc)
        if err is not None and err.txn_requires_abort() and not is_fatal(err):
            self._abort_quietly()
            self.state = "aborted"
            raise TransactionAborted(f"epoch {self.epoch.number}: {err.str()}", err.code()) from exc
        age = self._outlived_its_timeout(err)
        if age is not None and err is not None:
            self.state = "aborted"
            raise TransactionAborted(
                f"epoch {self.epoch.number}: its transaction was open {age:.0f}s, longer than transaction.timeout.ms "
                f"({self.producer.transaction_timeout_s:g}s): this instance stalled (paused or cut off) and the coordinator "
                f"aborted the transaction, which fenced the producer ({err.str()})", err.code(), needs_new_producer=True,
            ) from exc
        self._fail(exc)
        raise CommitError(
            f"epoch {self.epoch.number}: the Kafka transaction of {self.producer.transactional_id!r} failed"
            f" ({'fatal' if is_fatal(err) else 'not retriable'}): {exc}; nothing of this batch is committed"
        ) from exc


_APPENDER: futures.ThreadPoolExecutor | None = None
_APPENDER_LOCK = threading.Lock()


def materialize_together(txns: Sequence[EpochTransaction]) -> None:
    """Write committed epochs' rows to LanceDB, in one go: each table's rows of all of them in one append, then one log append.

    The appends of different tables run at the same time (on :func:`_appender`'s
    threads): they take as long as the slowest, not the sum.  Then one commit-log
    append: every epoch's prepare rows and commit mark.  A reader takes the rows of
    marked batches only, so it sees all of these epochs or none of them.  Several
    epochs at once when the materializer fell behind (``Committer``'s queue): a
    Lance append costs about the same for one epoch's rows as for several (25-29 ms
    of wall time on 2.4 ms of CPU, docs/architecture.md), so it catches up instead
    of holding the runner back.  A crash before the marks leaves rows no reader
    takes; recovery writes each epoch again from its prepare record
    (``engine.prepares.recover_prepares``).  Every row was built before
    (:meth:`EpochTransaction.build_rows`): here they are only written.  Only after
    the commit, in epoch order.
    """
    for txn in txns:
        if not txn.record_sent:  # the Committer calls it once the transaction committed (or a replaced producer's did)
            raise CommitError(f"epoch {txn.epoch.number}: its rows may reach LanceDB only after its Kafka transaction committed")
        if txn.materialized:
            raise CommitError(f"epoch {txn.epoch.number}: written to LanceDB twice")
        assert txn.state_rows is not None
    started = time.monotonic()
    tables: dict[str, tuple[Callable[[pa.Table], object], list[pa.Table]]] = {}  # per table URI: its writer, the epochs' rows
    for txn in txns:
        assert txn.state_rows is not None
        pairs = [(table.uri, table.append_rows, rows) for table, rows in txn.table_rows]
        pairs += [(d.store.uri, d.store.append_rows, rows) for d, rows in zip(txn.epoch.states, txn.state_rows, strict=True) if rows is not None]
        for uri, write, rows in pairs:
            tables.setdefault(uri, (write, []))[1].append(rows)
    pending = [_appender().submit(_append_all, write, rows) for write, rows in tables.values()]
    futures.wait(pending)
    for future in pending:
        future.result()  # the first failure (a StorageError naming the table) stops here: no mark
    faults.crash_point("before_mark")  # committed in Kafka, their rows in LanceDB, no marks yet
    appending = time.monotonic()
    log_rows = [txn.log_rows for txn in txns if txn.log_rows is not None]
    if log_rows:
        txns[0].log.write(log_rows[0] if len(log_rows) == 1 else pa.concat_tables(log_rows))
    ended = time.monotonic()
    for txn in txns:
        txn.log_append_seconds = ended - appending
        txn.materialized = True
        txn.seconds["prepare"] = ended - started


def _append_all(write: Callable[[pa.Table], object], rows: list[pa.Table]) -> None:
    """One append of several epochs' rows of a table; one append each when their schemas differ (a column's type moved)."""
    if len(rows) > 1:
        try:
            rows = [pa.concat_tables(rows)]
        except pa.ArrowInvalid:
            pass
    for part in rows:
        write(part)


def _appender() -> futures.ThreadPoolExecutor:
    """The threads that run a prepare's table and state appends (Lance releases the GIL while it writes)."""
    global _APPENDER
    with _APPENDER_LOCK:
        if _APPENDER is None:
            _APPENDER = futures.ThreadPoolExecutor(4, thread_name_prefix="lockgate-append")
        return _APPENDER


def partition_ranges(meta: pl.DataFrame) -> tuple[PartitionRange, ...]:
    """First and next offset of each input partition in a batch's metadata (NumPy for one topic, else one group_by)."""
    if meta.height == 0:
        return ()
    topic = one_topic(meta)
    if topic is not None:  # one topic (the usual batch): NumPy, no query
        parts = meta.get_column(PARTITION).to_numpy()
        offs = meta.get_column(OFFSET).to_numpy()
        out = []
        for p in np.unique(parts):  # a handful of partitions
            o = offs[parts == p]
            out.append(PartitionRange(topic, int(p), int(o.min()), int(o.max()) + 1))
        return tuple(out)
    agg = (
        meta.group_by(TOPIC, PARTITION)
        .agg(pl.col(OFFSET).min().alias("lo"), pl.col(OFFSET).max().alias("hi"))
        .sort(TOPIC, PARTITION)
    )
    return tuple(PartitionRange(t, p, lo, hi + 1) for t, p, lo, hi in agg.iter_rows())

