"""The deferred prepare's topic: recovery writes the committed records LanceDB lacks; a trim deletes the ones it has.

Each epoch's transaction carries its LanceDB rows as one record to the pipeline's
prepares topic (:mod:`lockgate.storage.prepare_record`); the rows are written after
the commit (``Committer.drain``).  A crash in between leaves committed records that
LanceDB lacks.  Before an instance loads state (at start, and when partitions are
assigned), :func:`recover_prepares` reads the topic (``read_committed``: records of
aborted transactions never appear) and materializes each record whose batch is not
marked, replacing whatever of it a crash left half-written.  Every ``compact_every``
epochs :func:`trim_prepares` deletes the records below the first unmarked one, so
the topic holds about the epochs in flight, and recovery reads little.  The topic
is made with ``retention.ms=-1``: no record is deleted by age before it is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import confluent_kafka as ck
import pyarrow as pa
from lockgate.engine import kafka_clients
from lockgate.errors import BrokerError
from lockgate.storage.commit_log import CommitLog
from lockgate.storage.materialize import materialize
from lockgate.storage.prepare_record import Reassembler, chunk_batch, decode

__all__ = ["prepares_topic", "recover_prepares", "trim_prepares"]

log = logging.getLogger("lockgate.commit")


def prepares_topic(pipeline: str) -> str:
    """The topic a pipeline's epochs put their prepare records in.

    >>> prepares_topic("clicks")
    'clicks-lockgate-prepares'
    """
    return f"{pipeline}-lockgate-prepares"


def recover_prepares(
    options: Mapping[str, Any], pipeline: str, commit_log: CommitLog, partitions: Collection[tuple[str, int]], timeout: float = 120.0,
) -> list[int]:
    """Materialize the committed prepare records of ``pipeline`` that read any of ``partitions`` and whose batch is not marked.

    Returns their batch ids, oldest first.  Only records of ``partitions`` (those
    just assigned to this instance): the others belong to instances that own their
    partitions and write them themselves, and an instance that gives partitions up
    writes its committed epochs first (``Committer.finish_inflight``).  A record that
    names no partition (no epoch commits one today: a tick names the owned ones) is
    written by whichever recovery finds it.  ``options``: the client options
    (brokers, security); the consumer joins no group and commits nothing.
    """
    wanted = set(partitions)
    marked = set(commit_log.committed_batches().to_list())
    chunks = Reassembler()
    done: list[int] = []
    for message in _committed_records(options, pipeline, timeout, "recover its prepares"):
        value = chunks.add(message.value())
        if value is None:
            continue
        record = decode(value)
        if record.pipeline == pipeline and record.batch_id not in marked and _reads(record.log_rows, wanted):
            materialize(record, commit_log, replace=True)
            marked.add(record.batch_id)
            done.append(record.batch_id)
    if done:
        log.info("recovery: wrote the LanceDB rows of committed batches %s from %s", done, prepares_topic(pipeline))
    return done


def trim_prepares(options: Mapping[str, Any], pipeline: str, commit_log: CommitLog, timeout: float = 60.0) -> int | None:
    """Delete the prepares topic's records below the first one whose batch is not marked; return that offset (None: none to delete).

    A marked batch's rows are in LanceDB: its record is never read again.  The first
    unmarked record (an epoch in flight, or one whose instance stopped before it
    wrote it) and every record after it stay, so recovery still finds them.  The
    marks are read before the topic: a batch marked while the topic is read counts
    as unmarked, which only keeps more.  Called every ``compact_every`` epochs off
    the commit path (``Runner._trim_prepares``), as Kafka Streams purges its
    repartition topics.
    """
    marked = set(commit_log.committed_batches().to_list())
    keep_from: int | None = None
    last: int | None = None
    for message in _committed_records(options, pipeline, timeout, "trim it"):
        if chunk_batch(message.value()) not in marked:
            keep_from = message.offset()
            break
        last = message.offset()
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


def _reads(log_rows: pa.Table | None, partitions: set[tuple[str, int]]) -> bool:
    """Whether a record's prepare rows name one of ``partitions``, or none at all (then any recovery writes it)."""
    if log_rows is None:
        return True
    return any(tp in partitions for tp in zip(log_rows.column("topic").to_pylist(), log_rows.column("partition").to_pylist(), strict=True))
