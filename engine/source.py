"""The Kafka side of a source: one consumer in the pipeline's group, polled in micro-batches.

A poll returns the records as columns (Python lists built by C-level ``map`` over the
messages, the one unavoidable step per record with confluent-kafka), ready to
become one Arrow/Polars batch.  A batch is read in chunks of one ``consume`` call
each; the runner may start work on a chunk (decoding it on another thread) while
the next one is read.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any

import confluent_kafka as ck
import polars as pl
from lockgate.engine import kafka_clients
from lockgate.engine.columns import KAFKA_COLUMNS, KEY, OFFSET, PARTITION, TIMESTAMP, TOPIC
from lockgate.engine.config import BatchPolicy
from lockgate.engine.transaction import is_fatal

__all__ = ["KafkaSource", "RawBatch"]

log = logging.getLogger("lockgate.source")
_M = ck.Message
_second = itemgetter(1)
_UNREACHABLE = frozenset({ck.KafkaError._ALL_BROKERS_DOWN, ck.KafkaError._TRANSPORT, ck.KafkaError._RESOLVE})
#: records per consume() call: 10k ran at 1.1M records/s here, 50k at 0.9M
_CONSUME_CHUNK = 10_000
#: longest consume() call of a poll that has no ``ready``: how late a batch may notice the input is read out
_SLICE_S = 0.005
#: how long a caught-up check waits for the admin client's offsets (a broker that is away: not caught up yet)
_ADMIN_ASK_SECONDS = 5.0
#: longest wait of a poll in one call: how late it notices a stop request
_WAIT_S = 0.1


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
    #: what ``poll(on_chunk=...)`` returned for each chunk, with the chunk's first index;
    #: None when the batch is not the plain sequence of those chunks (records were dropped)
    prepared: list[tuple[int, Any]] | None = None

    def __len__(self) -> int:
        return len(self.values)

    @staticmethod
    def concat(parts: list[RawBatch], topics: list[str]) -> RawBatch:
        """The chunks of one poll as one batch (C-level list concatenation)."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return RawBatch.from_messages([], topics)

        def cat(column: str) -> list:
            return list(chain.from_iterable(getattr(p, column) for p in parts))

        single = len(topics) == 1
        return RawBatch(
            topic=topics[0] if single else None, topics=None if single else cat("topics"),
            partitions=cat("partitions"), offsets=cat("offsets"), timestamps=cat("timestamps"),
            keys=cat("keys"), values=cat("values"), nbytes=sum(p.nbytes for p in parts),
        )

    def without(self, dropped: set[tuple[str, int]]) -> RawBatch:
        """The records not of the ``dropped`` partitions (after a revocation: the rare path)."""
        topics = self.topics if self.topics is not None else [self.topic] * len(self.values)
        keep = [i for i, tp in enumerate(zip(topics, self.partitions, strict=True)) if tp not in dropped]

        def pick(column: list) -> list:
            return [column[i] for i in keep]

        values = pick(self.values)
        return RawBatch(
            topic=self.topic, topics=None if self.topics is None else pick(self.topics),
            partitions=pick(self.partitions), offsets=pick(self.offsets), timestamps=pick(self.timestamps),
            keys=pick(self.keys), values=values, nbytes=sum(len(v or b"") for v in values),
        )

    @staticmethod
    def from_messages(msgs: list[ck.Message], topics: list[str], nbytes: int = 0) -> RawBatch:
        """The records of ``msgs`` (no error events) as columns: one C-level ``map`` per column."""
        single = len(topics) == 1
        return RawBatch(
            topic=topics[0] if single else None,
            topics=None if single else list(map(_M.topic, msgs)),
            partitions=list(map(_M.partition, msgs)),
            offsets=list(map(_M.offset, msgs)),
            timestamps=list(map(_second, map(_M.timestamp, msgs))),
            keys=list(map(_M.key, msgs)),
            values=list(map(_M.value, msgs)),
            nbytes=nbytes or sum(map(len, msgs)),
        )

    def metadata(self) -> pl.DataFrame:
        """The Kafka metadata columns of every record."""
        return pl.DataFrame(
            {
                TOPIC: (
                    pl.Series(self.topics, dtype=pl.String)
                    if self.topics is not None
                    # one value repeated: 14 us for 1,000 rows, where pl.repeat (a query) took 0.2 ms alone and 4 ms under load
                    else pl.Series([self.topic], dtype=pl.String).new_from_index(0, len(self.values))
                ),
                PARTITION: pl.Series(self.partitions, dtype=KAFKA_COLUMNS[PARTITION]),
                OFFSET: pl.Series(self.offsets, dtype=KAFKA_COLUMNS[OFFSET]),
                TIMESTAMP: pl.Series(self.timestamps, dtype=pl.Int64).cast(KAFKA_COLUMNS[TIMESTAMP]),
                KEY: pl.Series(self.keys, dtype=KAFKA_COLUMNS[KEY]),
            }
        )


def records_only(got: list[ck.Message]) -> list[ck.Message]:
    """The records of a consume; error events out: a fatal one raised, the others logged."""
    records = []
    for m in got:  # only when a poll holds an event: rare
        err = m.error()
        if err is None:
            records.append(m)
        elif is_fatal(err):
            raise ck.KafkaException(err)
        elif err.code() in _UNREACHABLE:
            log.warning("waiting for Kafka: %s (librdkafka reconnects with backoff)", err.str())
        else:
            log.warning("consumer: %s", err)
    return records


@dataclass
class _Assignment:
    owned: set[tuple[str, int]] = field(default_factory=set)
    new: set[tuple[str, int]] = field(default_factory=set)
    revoked: set[tuple[str, int]] = field(default_factory=set)


class KafkaSource:
    """The consumer of a pipeline: subscribes, tracks assignment and end-of-partition."""

    def __init__(
        self, options: dict, topics: list[str], before_revoke: Callable[[], None] = lambda: None,
        admin_options: dict | None = None,
    ) -> None:
        # No partition-EOF events: with them on, consume() ran at half speed here
        # (bench: 0.53M vs 1.1M records/s); caught_up() compares positions instead.
        self.consumer = kafka_clients.consumer(options, partition_eof=False)
        self.topics = topics
        self.before_revoke = before_revoke
        self.group = str(options.get("group.id", ""))
        #: admin client options: metadata questions (see _admin), and the committed offsets when the consumer keeps timing out
        self.admin_options = admin_options
        self.admin: Any = None
        self.first_record_at: float | None = None  # monotonic time a consume first returned records
        self.batch_first_at: float | None = None  # monotonic time the last poll's first records came (stage_wait_first_seconds)
        self.assignment = _Assignment()
        #: partitions the group assigned of topics the pipeline does not read (a static member's stale assignment)
        self.foreign: set[tuple[str, int]] = set()
        self.resubscribe = False
        #: where each partition starts (its committed offset; None: from its first offset), as last asked
        self.starts: dict[tuple[str, int], int | None] = {}
        #: owned partitions not fetched for now (see :meth:`pause`)
        self.paused: set[tuple[str, int]] = set()
        self._subscribe()

    def _subscribe(self) -> None:
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _on_assign(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        got = {(tp.topic, tp.partition) for tp in partitions}
        foreign = {tp for tp in got if tp[0] not in self.topics}
        if foreign:
            # A static member (group.instance.id) that rejoins while its last membership lasts
            # gets its last assignment back, even if this run reads other topics, and the
            # broker starts no rebalance: neither owned nor read, and the next poll rejoins.
            log.info(
                "ignoring %s: the group handed this member its previous run's partitions, of topics this pipeline "
                "does not read; rejoining the group so that it assigns this run's topics", sorted(foreign),
            )
            self.foreign |= foreign
            self.resubscribe = True
            got -= foreign
        log.info("assigned %s", sorted(got))
        self.assignment.owned |= got
        self.assignment.new |= got
        self.assignment.revoked -= got

    def _on_revoke(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        if self.foreign & lost:
            self.foreign -= lost
            lost = {tp for tp in lost if tp[0] in self.topics}
        log.info("revoked %s", sorted(lost))
        self.before_revoke()  # a commit in flight finishes before its partitions move
        self.assignment.owned -= lost
        self.assignment.new -= lost
        self.assignment.revoked |= lost
        self.paused -= lost

    def poll(
        self, policy: BatchPolicy, should_stop: Callable[[], bool] = lambda: False,
        on_chunk: Callable[[RawBatch], Any] | None = None, ready: Callable[[float], bool] | None = None,
    ) -> RawBatch:
        """Records until the batch is full, ``max_wait`` after its first record, or the runner is ``ready`` for it.

        The batch closes at the first of: ``max_records`` or ``max_bytes`` reached;
        ``max_wait`` passed since its first record came; the runner ready for it once
        it has records and has read all that arrived.  ``ready(timeout)`` waits up to
        ``timeout`` seconds for the runner (the commit before the batch is expected
        to be done by the time the batch is decoded and folded) and says whether it is ready.  So a batch
        closes as soon as the commit before it allows and records wait, and grows while
        commits lag.  While it waits, the poll holds no GIL and makes no calls: records
        gather in librdkafka's queue and are read at once when the wait ends.  Without
        ``ready`` the batch closes once the input is read to its end, read in slices of
        at most 5 ms (``consume(n, timeout)`` waits for n records or all of the timeout).
        No records within ``max_wait``: an empty batch.

        ``on_chunk`` is called with the records of each ``consume`` call as soon as they
        are read; what it returns travels with the batch in ``prepared``.
        """
        parts: list[RawBatch] = []
        prepared: list[tuple[int, Any]] = []
        count = nbytes = 0
        deadline = time.monotonic() + policy.max_wait_s  # until the first record: when the batch is empty
        closing = False  # the runner is ready: read what has arrived, then close
        self.batch_first_at = None
        self.assignment.revoked.clear()
        while count < policy.max_records and nbytes < policy.max_bytes:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            want = min(policy.max_records - count, _CONSUME_CHUNK)
            if ready is None:
                got = self.consumer.consume(want, min(timeout, _SLICE_S))
            elif count == 0:
                got = self.consumer.consume(1, min(timeout, _WAIT_S))  # returns with the first record to arrive
            else:
                got = self.consumer.consume(want, 0)  # what has arrived: no wait
            if got and any(map(_M.error, got)):
                got = records_only(got)
            if got and self.foreign:  # only while a stale assignment lasts
                got = [m for m in got if (m.topic(), m.partition()) not in self.foreign]
            if self.resubscribe:  # a stale assignment (see _on_assign): a new subscription makes the group rebalance
                self.resubscribe = False
                self.consumer.unsubscribe()
                self._subscribe()
            if got:
                if self.batch_first_at is None:
                    self.batch_first_at = time.monotonic()
                    self.first_record_at = self.first_record_at or self.batch_first_at
                    deadline = self.batch_first_at + policy.max_wait_s
                size = sum(map(len, got))
                full = nbytes + size > policy.max_bytes and count + len(got) > 1
                if full:
                    got, size = self._trim(got, policy.max_bytes - nbytes, keep_one=count == 0)
                if got:
                    part = RawBatch.from_messages(got, self.topics, size)
                    if on_chunk is not None:
                        prepared.append((count, on_chunk(part)))
                    parts.append(part)
                    count += len(got)
                    nbytes += size
                if full:
                    break
            if should_stop():
                break
            if not count:
                continue
            if ready is None:
                if self.caught_up():
                    break
            elif not got:  # read to what has arrived
                if closing:
                    break
                closing = ready(max(0.0, min(deadline - time.monotonic(), _WAIT_S)))
        raw = RawBatch.concat(parts, self.topics)
        if self.assignment.revoked and count:
            return raw.without(self.assignment.revoked)
        raw.prepared = prepared if on_chunk is not None else None
        return raw

    def _trim(self, msgs: list[ck.Message], budget: int, keep_one: bool) -> tuple[list[ck.Message], int]:
        """The longest prefix of ``msgs`` within ``budget`` bytes (one record at least if ``keep_one``); seek back for the rest."""
        sizes = list(accumulate(map(len, msgs)))
        keep = bisect_right(sizes, budget)
        if keep_one:
            keep = max(keep, 1)
        rewind: dict[tuple[str, int], int] = {}
        for m in msgs[keep:]:  # the overshoot of one consume call, not the batch
            rewind.setdefault((m.topic(), m.partition()), m.offset())
        for (topic, partition), offset in rewind.items():
            self.consumer.seek(ck.TopicPartition(topic, partition, offset))
        return msgs[:keep], sizes[keep - 1] if keep else 0

    def _positions(self) -> list[tuple[ck.TopicPartition, int, int]]:
        """Each owned partition's position, with the low and high watermarks of its last fetch (no network; -1001 if unknown)."""
        owned = sorted(self.assignment.owned)
        if not owned:
            return []
        positions = self.consumer.position([ck.TopicPartition(t, p) for t, p in owned])
        return [(tp, *self.consumer.get_watermark_offsets(tp, cached=True)) for tp in positions]  # per partition

    def _read_to(self) -> list[tuple[tuple[str, int], int, int]]:
        """Each owned partition with where it is read to and its high watermark (no network; -1001 if unknown).

        Before a partition returns its first record, ``position()`` is unknown: it is
        read to where it starts, the group's committed offset (see :meth:`committed`),
        else the partition's first offset.
        """
        out = []
        for tp, low, high in self._positions():
            key = (tp.topic, tp.partition)
            start = self.starts.get(key)
            out.append((key, tp.offset if tp.offset >= 0 else (start if start is not None else low), high))
        return out

    def lag(self) -> dict[tuple[str, int], int]:
        """Records not yet read per assigned partition, from the last fetch's high watermark (no network)."""
        return {key: max(0, high - position) for key, position, high in self._read_to() if high >= 0 and position >= 0}

    def backlog(self) -> set[tuple[str, int]]:
        """The owned partitions that hold records not read yet, or whose end is not known yet (no network).

        Such a partition is never idle for the watermarks, however long it waits for
        its turn in the consumer's fetch queue (see :meth:`_read_to` for a partition
        that has returned no record yet).  Under ``read_committed`` a partition whose
        last records are an open transaction stays in the backlog until that
        transaction ends.
        """
        return {key for key, position, high in self._read_to() if high < 0 or position < 0 or position < high}

    def caught_up(self, ask_broker: bool = False, verify: Collection[str] = ()) -> bool:
        """True when every assigned partition has been read to its end (lag 0).

        The fast check compares each position with the high watermark of the last
        fetch (no network).  A partition whose last records are an open
        transaction never reaches its high watermark under ``read_committed``: with
        ``ask_broker`` (after a poll that brought nothing), the broker's last stable
        offset decides for the partitions the fast check left behind.  The
        ``verify`` topics are the pipeline's own (repartition topics): this instance
        has just committed records to them, which neither the last fetch nor the
        last stable offset may include yet (see :meth:`_stable_ends`); every
        partition of them is asked for, and its end is its high watermark.
        """
        if not self.assignment.owned:
            return False
        behind = [
            tp for tp, _, high in self._positions() if tp.offset < 0 or high < 0 or tp.offset < high or tp.topic in verify
        ]
        if not behind:
            return True
        if not ask_broker:
            return False
        unread = [tp for tp in behind if tp.offset < 0]  # nothing consumed since the assignment
        try:
            starts = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.committed(unread, timeout=30)} if unread else {}
            ends = self._stable_ends(behind, own=verify)
            for tp in behind:
                low, stable = ends[(tp.topic, tp.partition)]
                position = tp.offset if tp.offset >= 0 else starts.get((tp.topic, tp.partition), -1)
                if max(position, low) < stable:
                    return False
        except (ck.KafkaException, TimeoutError) as exc:  # the broker is away (restarting): not known to be caught up; the next poll waits for it
            log.info("caught up? the broker did not answer (%s); reading on", exc)
            return False
        return True

    def _stable_ends(self, partitions: list[ck.TopicPartition], own: Collection[str] = ()) -> dict[tuple[str, int], tuple[int, int]]:
        """Each partition's first offset and end, asked of the broker: its last stable offset (``read_committed``).

        Of the ``own`` topics (written only by this pipeline's transactions, which
        all end), the end is the high watermark instead: a transaction's commit
        returns once its coordinator has decided, and the markers that make its
        records readable reach the partitions a moment later.  Until they do, the
        last stable offset still stands before the records just committed (right
        after a commit, 147 times in 200 here), and a reader that stopped there
        would leave them unread.  A read_committed consumer's position passes
        commit and abort markers, so it reaches the high watermark once every
        transaction on the partition has ended.

        Through the admin client, all partitions in one request: the consumer's own
        ``get_watermark_offsets`` waits behind its long-poll fetch on the same
        connection, one partition after the other (about 1.2 s per caught-up check
        of 8 partitions behind a repartition topic).  Without ``admin_options``, the
        consumer asks (its last stable offsets only).
        """
        admin = self._admin()
        if admin is self.consumer:
            return {(tp.topic, tp.partition): self.consumer.get_watermark_offsets(tp, timeout=30) for tp in partitions}
        from confluent_kafka.admin import OffsetSpec

        keys = [ck.TopicPartition(tp.topic, tp.partition) for tp in partitions]
        committed = ck.IsolationLevel.READ_COMMITTED
        asks = [("earliest", OffsetSpec.earliest, committed, keys), ("latest", OffsetSpec.latest, committed, keys)]
        mine = [k for k in keys if k.topic in own]
        if mine:
            asks.append(("high", OffsetSpec.latest, ck.IsolationLevel.READ_UNCOMMITTED, mine))
        try:
            asked = {
                name: admin.list_offsets({k: spec() for k in which}, isolation_level=isolation, request_timeout=_ADMIN_ASK_SECONDS)
                for name, spec, isolation, which in asks
            }
            got = {name: {(k.topic, k.partition): f.result(_ADMIN_ASK_SECONDS + 1).offset for k, f in futures.items()}
                   for name, futures in asked.items()}
        except Exception:
            # a client that did not answer is not asked again: after a broker restart a long-lived admin
            # client may never answer (seen with librdkafka 2.x); the next check makes a fresh one
            self.admin = None
            raise
        high = got.get("high", {})
        return {key: (got["earliest"][key], max(stable, high.get(key, stable))) for key, stable in got["latest"].items()}

    def group_offsets(
        self, own: Collection[str] = (),
    ) -> tuple[dict[tuple[str, int], tuple[int, str | None]], dict[tuple[str, int], tuple[int, int]]]:
        """Of every partition of the subscribed topics, the group's committed offset (with metadata) and its first offset and end.

        All instances' partitions, not only this one's: whether the group as a
        whole has read its topics out.  The end is the last stable offset, and the
        high watermark for the ``own`` topics (see :meth:`_stable_ends`).  Raises
        ``KafkaException``/``TimeoutError`` when the broker does not answer.
        """
        counts = self.partition_counts(self.topics)
        keys = [ck.TopicPartition(t, p) for t in self.topics for p in range(counts.get(t, 0))]
        if len(counts) < len(self.topics):
            raise TimeoutError(f"no metadata yet for {sorted(set(self.topics) - set(counts))}")
        ends = self._stable_ends(keys, own=own)
        admin = self._admin()
        if admin is self.consumer:
            got = self.consumer.committed(keys, timeout=_ADMIN_ASK_SECONDS)
        else:
            request = [ck.ConsumerGroupTopicPartitions(self.group, keys)]
            got = admin.list_consumer_group_offsets(request, require_stable=True, request_timeout=_ADMIN_ASK_SECONDS)[self.group]
            got = got.result(_ADMIN_ASK_SECONDS + 1).topic_partitions
        committed = {(tp.topic, tp.partition): (tp.offset, tp.metadata) for tp in got if tp.error is None and tp.offset >= 0}
        return committed, ends

    def positions(self) -> dict[tuple[str, int], int]:
        """Where each owned partition is read to (the next offset; only those that have one)."""
        return {(tp.topic, tp.partition): tp.offset for tp, _, _ in self._positions() if tp.offset >= 0}

    def take_new_partitions(self) -> set[tuple[str, int]]:
        """Partitions assigned since the last call (to recover their state)."""
        new, self.assignment.new = self.assignment.new, set()
        return new

    def take_revoked_partitions(self) -> set[tuple[str, int]]:
        """Partitions revoked (or lost) since the last call."""
        gone, self.assignment.revoked = self.assignment.revoked, set()
        return gone

    def _admin(self) -> Any:
        """An admin client for metadata questions (made once), or the consumer without ``admin_options``.

        The consumer's own metadata requests wait behind its long-poll fetch on the
        same connection: ``list_topics`` took 0.47-0.50 s there, 3 ms on an admin client.
        """
        if self.admin_options is None:
            return self.consumer
        if self.admin is None:
            self.admin = kafka_clients.admin(self.admin_options)
        return self.admin

    def partition_counts(self, topics: list[str], timeout: float = 10.0) -> dict[str, int]:
        """How many partitions each of ``topics`` has (from the cluster's metadata)."""
        counts = {}
        client = self._admin()
        for topic in topics:  # one topic's metadata each: the cluster may hold many topics
            meta = client.list_topics(topic, timeout=timeout).topics.get(topic)
            if meta is not None and meta.error is None:
                counts[topic] = len(meta.partitions)
        return counts

    def committed(
        self, partitions: set[tuple[str, int]], timeout: float = 30.0, attempts: int = 10,
    ) -> dict[tuple[str, int], tuple[int, str | None]]:
        """The group's committed offsets of ``partitions`` (those with one), with their metadata.

        Asks again while the answer times out or is retriable: right after a broker
        restart the group coordinator may take a while to answer.  From the second
        timeout on, a fresh admin client asks too (``admin_options``): after a
        broker restart the consumer's own requests were seen to time out for good
        (CI: ten times 30 s) while the broker answered new clients at once.
        """
        if not partitions:
            return {}
        wanted = [ck.TopicPartition(t, p) for t, p in sorted(partitions)]
        for attempt in range(attempts):
            try:
                tps = self.consumer.committed(wanted, timeout=timeout)
                break
            except ck.KafkaException as exc:
                err = kafka_clients.kafka_error(exc)
                waiting = err is not None and not is_fatal(err) and (err.retriable() or err.code() == ck.KafkaError._TIMED_OUT)
                if not waiting or attempt == attempts - 1:
                    raise
                log.warning("waiting for Kafka: the group's committed offsets: %s; asking again", err.str())
                if attempt >= 1 and self.admin_options is not None:
                    fresh = self._committed_by_admin(wanted, timeout)
                    if fresh is not None:
                        tps = fresh
                        break
        for tp in tps:
            self.starts[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
        return {(tp.topic, tp.partition): (tp.offset, tp.metadata) for tp in tps if tp.offset >= 0}

    def _committed_by_admin(self, wanted: list[ck.TopicPartition], timeout: float) -> list[ck.TopicPartition] | None:
        """The committed offsets through a new admin client (stable offsets only, as the consumer asks); None if it fails too."""
        admin = kafka_clients.admin(self.admin_options or {})  # a new one: a long-lived client may be stuck too
        try:
            request = [ck.ConsumerGroupTopicPartitions(self.group, wanted)]
            future = admin.list_consumer_group_offsets(request, require_stable=True, request_timeout=timeout)[self.group]
            got = future.result(timeout + 5)
        except (ck.KafkaException, TimeoutError) as exc:
            log.warning("waiting for Kafka: the group's committed offsets, asked by a new client: %s", exc)
            return None
        if any(tp.error is not None for tp in got.topic_partitions):
            log.warning("waiting for Kafka: the group's committed offsets, asked by a new client: %s", [tp.error for tp in got.topic_partitions])
            return None
        log.info("the group's committed offsets came through a new client")
        return list(got.topic_partitions)

    def pause(self, topics: Collection[str]) -> None:
        """Stop fetching the owned partitions of ``topics`` until :meth:`resume`.

        librdkafka drops what it prefetched of them, and the records of the other
        partitions come next (a repartition topic's, queued behind an input backlog);
        resumed, they are fetched again from the position the pipeline read them to.
        """
        partitions = {tp for tp in self.assignment.owned if tp[0] in topics} - self.paused
        if partitions:
            self.consumer.pause([ck.TopicPartition(t, p) for t, p in sorted(partitions)])
            self.paused |= partitions

    def resume(self) -> None:
        """Fetch the paused partitions again."""
        partitions = self.paused & self.assignment.owned
        if partitions:
            self.consumer.resume([ck.TopicPartition(t, p) for t, p in sorted(partitions)])
        self.paused = set()

    def rewind(self, positions: dict[tuple[str, int], int]) -> None:
        """Seek partitions back to ``positions`` (after an aborted transaction)."""
        if self.paused & set(positions):
            self.resume()  # a seek of a paused partition is not to wait for the next resume
        for (topic, partition), offset in positions.items():
            if (topic, partition) in self.assignment.owned:
                self.consumer.seek(ck.TopicPartition(topic, partition, offset))

    def group_metadata(self) -> object:
        """The consumer group metadata for ``send_offsets_to_transaction`` (KIP-447 fencing)."""
        return self.consumer.consumer_group_metadata()

    def close(self) -> None:
        """Leave the group."""
        self.consumer.close()
