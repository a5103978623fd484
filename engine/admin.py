"""Topic checks and creation before a pipeline reads anything."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from lockgate.operators.errors import BrokerError, PipelineDefinitionError

__all__ = ["ensure_topics", "partition_count"]

log = logging.getLogger("lockgate.admin")


def _metadata(admin: AdminClient, brokers: str, timeout: float = 30.0) -> Any:
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach Kafka at {brokers} ({exc.args[0].str() if exc.args else exc}); "
            "start a local broker with `lockgate broker start` or pass brokers=..."
        ) from exc


def partition_count(options: dict[str, Any], topic: str) -> int | None:
    """Partitions of ``topic``, or None when it does not exist."""
    md = _metadata(AdminClient({**options, "log_level": 4}), options["bootstrap.servers"])
    t = md.topics.get(topic)
    return None if t is None or t.error is not None else len(t.partitions)


def ensure_topics(options: dict[str, Any], sources: list[str], sinks: list[str]) -> None:
    """Check the source topics exist; create missing sink topics with as many partitions as the widest source."""
    admin = AdminClient({**options, "log_level": 4})
    md = _metadata(admin, options["bootstrap.servers"])
    missing = [t for t in sources if t not in md.topics or md.topics[t].error is not None]
    if missing:
        raise PipelineDefinitionError(
            f"source topic(s) {missing} do not exist on {options['bootstrap.servers']}; create them first "
            f"(the topics there are {sorted(t for t in md.topics if not t.startswith('__'))[:20]})"
        )
    width = max(len(md.topics[t].partitions) for t in sources)
    new = [NewTopic(t, num_partitions=width, replication_factor=-1) for t in dict.fromkeys(sinks) if t not in md.topics]
    if not new:
        return
    for topic, future in admin.create_topics(new, operation_timeout=30).items():
        try:
            future.result()
            log.info("created topic %s with %d partitions", topic, width)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: created meanwhile
                continue
            raise BrokerError(f"cannot create the sink topic {topic!r}: {exc}") from exc
