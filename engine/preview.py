"""``pipe.preview(n)``: the plan over the next ``n`` records, committing nothing.

A throwaway consumer (its own group id; it commits no offset) reads from where the
pipeline's consumer group stands, the records go through the same decode and
operators as a micro-batch, window operators start from the committed state
(read, never written), and the sinks' frames come back as dataframes: nothing is
produced to Kafka, nothing is written to LanceDB.
"""

from __future__ import annotations

import time
import uuid

import confluent_kafka as ck
import polars as pl
from confluent_kafka import ConsumerGroupTopicPartitions
from lockgate.engine import kafka_clients
from lockgate.engine.admin import missing_topic_message
from lockgate.engine.changelog import ChangelogTable
from lockgate.engine.config import PipelineConfig
from lockgate.engine.decode import BatchDecoder, DecodedBatch
from lockgate.engine.execution import hop, hop_counts, operate
from lockgate.engine.plan import Plan
from lockgate.engine.stateful import WindowRuntime
from lockgate.engine.source import RawBatch, records_only
from lockgate.errors import PipelineDefinitionError
from lockgate.storage.commit_log import CommitLog

__all__ = ["preview"]


def _start_offsets(config: PipelineConfig, topics: list[str]) -> list[ck.TopicPartition]:
    """Every partition of ``topics`` at the pipeline group's committed offset (the beginning if none)."""
    admin = kafka_clients.admin(config.admin_options())
    metadata = admin.list_topics(timeout=30)
    missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error is not None]
    if missing:
        existing = [t for t in metadata.topics if not t.startswith("__")]
        raise PipelineDefinitionError("preview: " + missing_topic_message(missing, config.brokers, existing))
    partitions = []
    for topic in topics:
        partitions += [ck.TopicPartition(topic, p) for p in sorted(metadata.topics[topic].partitions)]
    request = ConsumerGroupTopicPartitions(config.name, partitions)
    committed = admin.list_consumer_group_offsets([request])[config.name].result(30)
    offsets = {(tp.topic, tp.partition): tp.offset for tp in committed.topic_partitions if tp.offset >= 0}
    return [ck.TopicPartition(tp.topic, tp.partition, offsets.get((tp.topic, tp.partition), ck.OFFSET_BEGINNING)) for tp in partitions]


def _partition_counts(config: PipelineConfig, topics: list[str]) -> dict[str, int]:
    metadata = kafka_clients.admin(config.admin_options()).list_topics(timeout=30)
    return {t: len(metadata.topics[t].partitions) for t in topics}


def preview(config: PipelineConfig, plan: Plan, n: int, timeout: float = 10.0) -> dict[str, pl.DataFrame]:
    """The frame each sink would get from the next ``n`` records (fewer if ``timeout`` passes first)."""
    decoder = BatchDecoder(plan)
    windows = WindowRuntime(config.name, config.state, plan, CommitLog(config.state), config.snapshot_rows)
    internal = {n.target for n in plan.repartitions}
    topics = [t for t in decoder.topics if t not in internal]  # the hops run in memory (execution.hop)
    options = {**config.consumer_options(), "group.id": f"{config.name}-preview-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
    options.pop("group.instance.id", None)  # not a member of any group: it only reads
    consumer = kafka_clients.consumer(options)
    changelogs = {t.name: ChangelogTable(t, config.admin_options()) for t in plan.tables}
    try:
        consumer.assign(_start_offsets(config, topics))
        messages: list[ck.Message] = []
        deadline = time.monotonic() + timeout
        while len(messages) < n and time.monotonic() < deadline:
            got = consumer.consume(min(n - len(messages), 10_000), max(0.0, min(0.5, deadline - time.monotonic())))
            messages += records_only(got)
        raw = RawBatch.from_messages(messages[:n], topics)
        for table in changelogs.values():
            table.bootstrap()
        batch = decoder.decode(raw)
        now = time.monotonic()
        tables = {name: table.frame() for name, table in changelogs.items()}
        owned = set(zip(map(ck.Message.topic, messages), map(ck.Message.partition, messages), strict=True))
        counts = hop_counts(plan, _partition_counts(config, topics)) if internal else {}
        if windows.active:
            windows.set_counts(counts)
            windows.assign(owned | {(t, p) for t in internal for p in range(counts[t])}, now)
            windows.load(now)  # the committed state: folded into, never written back
        sinks = [s for s in plan.sinks if s.target not in internal]
        frames: dict[str, list[pl.DataFrame]] = {s.name: [] for s in sinks}
        step: DecodedBatch | None = batch
        while step is not None:  # the batch, then what its repartition topics would carry to the next stage
            outputs = operate(plan, step, tables, windows, now)
            for s in sinks:
                frames[s.name].append(outputs[s.name])
            step = hop(plan, outputs, windows, step.records_in, counts, {}, now) if internal else None
        return {s.target: pl.concat(frames[s.name], how="vertical_relaxed") for s in sinks}
    finally:
        consumer.close()
        for table in changelogs.values():
            table.close()
