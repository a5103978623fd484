"""The Kafka side of a source: one consumer in the pipeline's group, polled in micro-batches.

A poll returns the records as columns (Python lists built by C-level ``map`` over the
messages, the one unavoidable step per record with confluent-kafka), ready to
become one Arrow/Polars batch.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate
from dataclasses import dataclass, field
from operator import itemgetter

import confluent_kafka as ck
import polars as pl

from lockgate.engine.config import BatchPolicy

__all__ = ["RawBatch", "KafkaSource"]

log = logging.getLogger("lockgate.source")
_M = ck.Message
_second = itemgetter(1)


@dataclass
class RawBatch:
    """The records of one poll, column by column (``topics`` is None when all come from ``topic``)."""

    topic: str | None
    topics: list[str] | None
    partitions: list[int]
    offsets: list[int]
    timestamps: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.values)

    def metadata(self) -> pl.DataFrame:
        """The Kafka metadata columns of every record."""
        return pl.DataFrame(
            {
                "_topic": (
                    pl.Series(self.topics, dtype=pl.String)
                    if self.topics is not None
                    else pl.repeat(self.topic, len(self.values), dtype=pl.String, eager=True)
                ),
                "_partition": pl.Series(self.partitions, dtype=pl.Int32),
                "_offset": pl.Series(self.offsets, dtype=pl.Int64),
                "_timestamp": pl.Series(self.timestamps, dtype=pl.Int64).cast(pl.Datetime("ms")),
                "_key": pl.Series(self.keys, dtype=pl.Binary),
            }
        )


@dataclass
class _Assignment:
    owned: set[tuple[str, int]] = field(default_factory=set)
    new: set[tuple[str, int]] = field(default_factory=set)
    revoked: set[tuple[str, int]] = field(default_factory=set)
    at_end: set[tuple[str, int]] = field(default_factory=set)


class KafkaSource:
    """The consumer of a pipeline: subscribes, tracks assignment and end-of-partition."""

    def __init__(self, options: dict, topics: list[str], before_revoke: Callable[[], None] = lambda: None) -> None:
        self.consumer = ck.Consumer({**options, "enable.partition.eof": True})
        self.topics = topics
        self.before_revoke = before_revoke
        self.first_record_at: float | None = None  # monotonic time a consume first returned records
        self.assignment = _Assignment()
        self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _on_assign(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        got = {(tp.topic, tp.partition) for tp in partitions}
        log.info("assigned %s", sorted(got))
        self.assignment.owned |= got
        self.assignment.new |= got
        self.assignment.at_end -= got

    def _on_revoke(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        log.info("revoked %s", sorted(lost))
        self.before_revoke()  # a commit in flight finishes before its partitions move
        self.assignment.owned -= lost
        self.assignment.new -= lost
        self.assignment.at_end -= lost
        self.assignment.revoked |= lost

    def poll(self, policy: BatchPolicy, should_stop: Callable[[], bool] = lambda: False) -> RawBatch:
        """Records until ``max_records``, ``max_bytes`` or ``max_wait`` (counted from the first record)."""
        msgs: list[ck.Message] = []
        nbytes = 0
        deadline: float | None = None
        self.assignment.revoked.clear()
        while len(msgs) < policy.max_records and nbytes < policy.max_bytes:
            now = time.monotonic()
            if deadline is None:
                timeout = policy.max_wait_s
            else:
                timeout = deadline - now
                if timeout <= 0:
                    break
            got = self.consumer.consume(min(policy.max_records - len(msgs), 100_000), timeout)
            if got and any(map(_M.error, got)):
                got = self._events(got)
            elif got and self.assignment.at_end:  # records for a partition that was at its end
                self.assignment.at_end -= set(zip(map(_M.topic, got), map(_M.partition, got)))
            if got:
                if self.first_record_at is None:
                    self.first_record_at = time.monotonic()
                msgs.extend(got)
                nbytes += sum(map(len, got))
                if deadline is None:
                    deadline = now + policy.max_wait_s
                if nbytes > policy.max_bytes and len(msgs) > 1:
                    msgs, nbytes = self._trim(msgs, policy.max_bytes)
                    break
            elif deadline is None:
                break  # nothing arrived within max_wait: an empty batch
            if should_stop() or self.caught_up():
                break
        if self.assignment.revoked and msgs:
            msgs = [m for m in msgs if (m.topic(), m.partition()) not in self.assignment.revoked]
        single = len(self.topics) == 1
        return RawBatch(
            topic=self.topics[0] if single else None,
            topics=None if single else list(map(_M.topic, msgs)),
            partitions=list(map(_M.partition, msgs)),
            offsets=list(map(_M.offset, msgs)),
            timestamps=list(map(_second, map(_M.timestamp, msgs))),
            keys=list(map(_M.key, msgs)),
            values=list(map(_M.value, msgs)),
            nbytes=nbytes,
        )

    def _trim(self, msgs: list[ck.Message], max_bytes: int) -> tuple[list[ck.Message], int]:
        """Keep the longest prefix within ``max_bytes`` (at least one record); seek back for the rest."""
        sizes = list(accumulate(map(len, msgs)))
        keep = max(1, bisect_right(sizes, max_bytes))
        rewind: dict[tuple[str, int], int] = {}
        for m in msgs[keep:]:  # the overshoot of one consume call, not the batch
            rewind.setdefault((m.topic(), m.partition()), m.offset())
        for (topic, partition), offset in rewind.items():
            self.consumer.seek(ck.TopicPartition(topic, partition, offset))
            self.assignment.at_end.discard((topic, partition))
        return msgs[:keep], sizes[keep - 1]

    def _events(self, got: list[ck.Message]) -> list[ck.Message]:
        """Take end-of-partition events and errors out of a poll's messages."""
        records = []
        for m in got:  # only when a poll holds an event: rare
            err = m.error()
            if err is None:
                self.assignment.at_end.discard((m.topic(), m.partition()))
                records.append(m)
            elif err.code() == ck.KafkaError._PARTITION_EOF:
                self.assignment.at_end.add((m.topic(), m.partition()))
            elif err.fatal():
                raise ck.KafkaException(err)
            else:
                log.warning("consumer: %s", err)
        return records

    def caught_up(self) -> bool:
        """True when every assigned partition has been read to its end (lag 0)."""
        owned = self.assignment.owned
        return bool(owned) and owned <= self.assignment.at_end

    def take_new_partitions(self) -> set[tuple[str, int]]:
        """Partitions assigned since the last call (to recover their state)."""
        new, self.assignment.new = self.assignment.new, set()
        return new

    def committed(self, partitions: set[tuple[str, int]], timeout: float = 30.0) -> dict[tuple[str, int], tuple[int, str | None]]:
        """The group's committed offsets of ``partitions`` (those with one), with their metadata."""
        if not partitions:
            return {}
        tps = self.consumer.committed([ck.TopicPartition(t, p) for t, p in sorted(partitions)], timeout=timeout)
        return {(tp.topic, tp.partition): (tp.offset, tp.metadata) for tp in tps if tp.offset >= 0}

    def rewind(self, positions: dict[tuple[str, int], int]) -> None:
        """Seek partitions back to ``positions`` (after an aborted transaction)."""
        for (topic, partition), offset in positions.items():
            if (topic, partition) in self.assignment.owned:
                self.consumer.seek(ck.TopicPartition(topic, partition, offset))
                self.assignment.at_end.discard((topic, partition))

    def group_metadata(self) -> object:
        """The consumer group metadata for ``send_offsets_to_transaction`` (KIP-447 fencing)."""
        return self.consumer.consumer_group_metadata()

    def close(self) -> None:
        """Leave the group."""
        self.consumer.close()
