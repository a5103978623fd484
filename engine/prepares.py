"""The deferred prepare's recovery: committed prepare records that never reached LanceDB are written now.

Each epoch's transaction carries its LanceDB rows as one record to the pipeline's
prepares topic (:mod:`lockgate.storage.prepare_record`); the rows are written after
the commit (``Committer.drain``).  A crash in between leaves committed records that
LanceDB lacks.  Before an instance loads state (at start, and when partitions are
assigned), :func:`recover_prepares` reads the topic (``read_committed``: records of
aborted transactions never appear) and materializes each record whose batch is not
marked, replacing whatever of it a crash left half-written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

import confluent_kafka as ck
import pyarrow as pa
from lockgate.engine import kafka_clients
from lockgate.errors import BrokerError
from lockgate.storage.commit_log import CommitLog
from lockgate.storage.materialize import materialize
from lockgate.storage.prepare_record import Reassembler, decode

__all__ = ["prepares_topic", "recover_prepares"]

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
    writes its committed epochs first (``Committer.finish_inflight``).  ``options``:
    the client options (brokers, security); the consumer joins no group and commits
    nothing.
    """
    wanted = set(partitions)
    topic = prepares_topic(pipeline)
    consumer = kafka_clients.consumer(
        {**options, "group.id": f"lockgate-recovery-{topic}", "enable.auto.commit": False, "isolation.level": "read_committed"},
        partition_eof=True,
    )
    try:
        consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])
        marked = set(commit_log.committed_batches().to_list())
        chunks = Reassembler()
        done: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise BrokerError(f"pipeline {pipeline!r}: could not read {topic!r} to its end in {timeout:.0f}s to recover its prepares")
            msgs = consumer.consume(500, 0.5)
            at_end = False
            for m in msgs:
                if m.error() is not None:
                    at_end |= m.error().code() == ck.KafkaError._PARTITION_EOF
                    continue
                value = chunks.add(m.value())
                if value is None:
                    continue
                record = decode(value)
                if record.pipeline == pipeline and record.batch_id not in marked and _reads(record.log_rows, wanted):
                    materialize(record, commit_log, replace=True)
                    marked.add(record.batch_id)
                    done.append(record.batch_id)
            if at_end:
                break
    finally:
        consumer.close()
    if done:
        log.info("recovery: wrote the LanceDB rows of committed batches %s from %s", done, topic)
    return done


def _reads(log_rows: pa.Table | None, partitions: set[tuple[str, int]]) -> bool:
    """Whether a record's prepare rows name one of ``partitions`` (an epoch that read none has no rows: not ours to write)."""
    if log_rows is None:
        return False
    return any(tp in partitions for tp in zip(log_rows.column("topic").to_pylist(), log_rows.column("partition").to_pylist(), strict=True))
