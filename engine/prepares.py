"""The deferred prepare's topic: recovery writes the committed records LanceDB lacks; a trim deletes the ones it has.

Each epoch's transaction carries its LanceDB rows as one record to the pipeline's
prepares topic (:mod:`lockgate.storage.prepare_record`); the rows are written after
the commit (``Committer.drain``).  A crash in between leaves committed records that
LanceDB lacks.  Before an instance loads state (at start, and when partitions are
assigned), :func:`recover_prepares` reads the topic (``read_committed``: records of
aborted transactions never appear) and materializes each unmarked record on the
chain that the group's committed offsets lead to, replacing whatever of it a crash
left half-written.  Every ``compact_every`` epochs :func:`trim_prepares` deletes the
records below the first one recovery may still need (not marked, and not behind the
marked batches of its partitions), so the topic holds about the epochs in flight,
and recovery reads little.  The topic
is made with ``retention.ms=-1``: no record is deleted by age before it is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import confluent_kafka as ck
import polars as pl
from lockgate.engine import kafka_clients
from lockgate.errors import BrokerError
from lockgate.storage.commit_log import CommitLog
from lockgate.storage.materialize import materialize
from lockgate.storage.prepare_record import PrepareRecord, Reassembler, chunk_batch, decode

__all__ = ["prepares_topic", "recover_prepares", "trim_prepares"]

log = logging.getLogger("lockgate.commit")


def prepares_topic(pipeline: str) -> str:
    """The topic a pipeline's epochs put their prepare records in.

    >>> prepares_topic("clicks")
    'clicks-lockgate-prepares'
    """
    return f"{pipeline}-lockgate-prepares"


def recover_prepares(
    options: Mapping[str, Any], pipeline: str, commit_log: CommitLog, heads: Mapping[tuple[str, int], int | None], timeout: float = 120.0,
) -> list[int]:
    """Materialize the committed, unmarked epochs of the partitions in ``heads``, from their prepare records; their batch ids.

    ``heads`` maps each partition just assigned to this instance to the batch its
    committed offset's metadata names: the last epoch that committed on it (None:
    nothing committed yet).  From that batch the partition's chain is walked back
    through each record's ``prev_batch_id`` until a marked batch (or one the topic
    no longer has), as ``CommitLog.recover`` walks the commit log: every batch on
    the way committed in Kafka, so it is written now, oldest first.  Each partition's
    chain is walked to its end, even through a batch another partition's walk took:
    a batch that read several partitions is on each of their chains, and what came
    before it differs per partition.  Records on no
    chain of these partitions are left alone: another instance's (it writes its
    own, and one giving partitions up writes its committed epochs first,
    ``Committer.finish_inflight``), or an earlier run's whose state directory or
    group was made anew, which must never come back.  ``options``: the client
    options (brokers, security); the consumer joins no group and commits nothing.
    """
    frame = commit_log.frame()
    marked = set(commit_log.committed_batches(log=frame).to_list())
    chunks = Reassembler()
    records: dict[int, PrepareRecord] = {}  # the unmarked records of this pipeline, in topic (commit) order
    if any(head is not None and head not in marked for head in heads.values()):
        for message in _committed_records(options, pipeline, timeout, "recover its prepares"):
            if chunk_batch(message.value()) in marked:
                continue
            value = chunks.add(message.value())
            if value is not None:
                record = decode(value)
                if record.pipeline == pipeline:
                    records[record.batch_id] = record
    wanted: set[int] = set()
    for tp, batch_id in heads.items():
        walked: set[int] = set()  # this partition's chain only: a batch that read several partitions is on each of their chains
        while batch_id is not None and batch_id in records and batch_id not in marked and batch_id not in walked:
            walked.add(batch_id)
            batch_id = _prev(records[batch_id], tp)
        wanted |= walked
        if batch_id is not None and batch_id not in marked and batch_id not in records and not _prepared(frame, batch_id):
            log.error(
                "recovery: partition %s of pipeline %r committed batch %d in Kafka, but it is neither marked in LanceDB nor in %s: "
                "its rows are lost (was the prepares topic deleted or its records removed by hand?)", tp, pipeline, batch_id,
                prepares_topic(pipeline),
            )
    done = [batch_id for batch_id in records if batch_id in wanted]
    for batch_id in done:
        materialize(records[batch_id], commit_log, replace=True)
    if done:
        log.info("recovery: wrote the LanceDB rows of committed batches %s from %s", done, prepares_topic(pipeline))
    return done


def trim_prepares(options: Mapping[str, Any], pipeline: str, commit_log: CommitLog, timeout: float = 60.0) -> int | None:
    """Delete the prepares topic's records below the first one recovery may still need; return that offset (None: none to delete).

    A marked batch's rows are in LanceDB: its record is never read again.  Nor is
    the record of a batch that is not marked but ended, on some partition, before
    what the marked batches of that partition have read to
    (:meth:`CommitLog.read_to`): the batches of a partition are marked in the order
    they committed, so it is on no chain the group's committed offsets lead to.  Such
    a record is an earlier run's, whose state directory was made anew (or one that a
    broken recovery passed over): it used to keep every record after it for good.
    The first other record (an epoch in flight, or one whose instance stopped before
    it wrote it) and every record after it stay, so recovery still finds them.  The
    log is read before the topic: a batch marked while the topic is read counts as
    unmarked, which only keeps more.  Called every ``compact_every`` epochs off the
    commit path (``Runner._trim_prepares``), as Kafka Streams purges its repartition
    topics.
    """
    frame = commit_log.frame()
    marked = set(commit_log.committed_batches(log=frame).to_list())
    read_to = commit_log.read_to(pipeline, log=frame)
    chunks = Reassembler()
    starts: dict[int, int] = {}  # an unmarked record's first chunk, until its last one came
    keep_from: int | None = None
    last: int | None = None
    for message in _committed_records(options, pipeline, timeout, "trim it"):
        batch_id = chunk_batch(message.value())
        if batch_id in marked:
            last = message.offset()
            continue
        starts.setdefault(batch_id, message.offset())
        value = chunks.add(message.value())
        if value is None:
            continue
        record = decode(value)
        if record.pipeline == pipeline and _passed(record, read_to):
            log.info("trim: batch %d's record (epoch %d) is behind the marked batches of its partitions: an earlier run's; deleted",
                     record.batch_id, record.epoch)
            del starts[batch_id]
            last = message.offset()
            continue
        keep_from = starts[batch_id]
        break
    if keep_from is None and starts:
        keep_from = min(starts.values())  # a record whose last chunk is not there: keep it
    if keep_from is None:
        keep_from = None if last is None else last + 1
    if keep_from is None:
        return None
    admin = kafka_clients.admin(options)
    topic = prepares_topic(pipeline)
    for future in admin.delete_records([ck.TopicPartition(topic, 0, keep_from)], request_timeout=30).values():
        future.result()
    return keep_from


def _committed_records(options: Mapping[str, Any], pipeline: str, timeout: float, purpose: str) -> Iterator[ck.Message]:
    """The committed records of ``pipeline``'s prepares topic, from its first to its end (``read_committed``)."""
    topic = prepares_topic(pipeline)
    consumer = kafka_clients.consumer(
        {**options, "group.id": f"lockgate-recovery-{topic}", "enable.auto.commit": False, "isolation.level": "read_committed",
         "auto.offset.reset": "earliest"},  # a trim may delete records before the first one this reads: start after them
        partition_eof=True,
    )
    try:
        consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise BrokerError(f"pipeline {pipeline!r}: could not read {topic!r} to its end in {timeout:.0f}s to {purpose}")
            at_end = False
            for message in consumer.consume(500, 0.5):
                if message.error() is not None:
                    at_end |= message.error().code() == ck.KafkaError._PARTITION_EOF
                    continue
                yield message
            if at_end:
                return
    finally:
        consumer.close()


def _passed(record: PrepareRecord, read_to: Mapping[tuple[str, int], int]) -> bool:
    """Whether the unmarked ``record`` ended, on some partition it read, before the marked batches there read to.

    Strictly before: an epoch without input (a tick) reads nothing at the committed
    offset, which is where the marked batches end.
    """
    for topic, partition, next_offset in _partition_rows(record, "next_offset"):
        end = read_to.get((topic, partition))
        if end is not None and next_offset is not None and next_offset < end:
            return True
    return False


def _prepared(frame: pl.DataFrame, batch_id: int) -> bool:
    """Whether the commit log has prepare rows of ``batch_id`` (a batch of the path before the deferred prepare: ``CommitLog.recover`` marks it)."""
    return bool(frame.filter((pl.col("kind") == "prepare") & (pl.col("batch_id") == batch_id)).height)


def _prev(record: PrepareRecord, tp: tuple[str, int]) -> int | None:
    """The batch ``record``'s epoch follows on partition ``tp`` (its prepare row's ``prev_batch_id``); None when it names none."""
    for topic, partition, prev in _partition_rows(record, "prev_batch_id"):
        if (topic, partition) == tp:
            return prev
    return None


def _partition_rows(record: PrepareRecord, column: str) -> Iterator[tuple[str, int, Any]]:
    """Each input partition of ``record`` (its commit-log prepare rows: one per partition) with that row's ``column``."""
    rows = record.log_rows
    if rows is not None:
        yield from zip(*(rows.column(c).to_pylist() for c in ("topic", "partition", column)), strict=True)
