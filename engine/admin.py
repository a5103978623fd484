"""Topic checks and creation before a pipeline reads anything.

Examples
--------
>>> from lockgate.engine.admin import missing_topic_message
>>> print(missing_topic_message(["clicks"], "localhost:9092", ["orders"]))
source topic 'clicks' does not exist on localhost:9092 (its topics: ['orders']). Create it and produce records to it; for sample clicks (the README's example reads them) run `lockgate sample clicks --brokers localhost:9092`
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from lockgate.engine import kafka_clients
from lockgate.errors import BrokerError, PipelineDefinitionError

__all__ = ["create_topic", "ensure_topics", "missing_topic_message", "partition_count"]

log = logging.getLogger("lockgate.admin")


def _metadata(admin: AdminClient, brokers: str, timeout: float = 30.0) -> Any:
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach Kafka at {brokers} ({exc.args[0].str() if exc.args else exc}); "
            "start a local broker with `lockgate broker start` or pass brokers=..."
        ) from exc


def _create(admin: AdminClient, partitions: dict[str, int], what: str, config: dict[str, str] | None = None) -> list[str]:
    """Create each topic with its number of partitions (and topic ``config``); the ones this call created (one made meanwhile is no error)."""
    if not partitions:
        return []
    created = []
    new = [NewTopic(topic, num_partitions=n, replication_factor=-1, config=config or {}) for topic, n in partitions.items()]
    for topic, future in admin.create_topics(new, operation_timeout=30).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:  # created meanwhile
                continue
            raise BrokerError(f"cannot create the {what} {topic!r}: {exc}") from exc
        log.info("created topic %s with %d partitions", topic, partitions[topic])
        created.append(topic)
    return created


def partition_count(options: dict[str, Any], topic: str) -> int | None:
    """Partitions of ``topic``, or None when it does not exist."""
    md = _metadata(kafka_clients.admin(options), options["bootstrap.servers"])
    t = md.topics.get(topic)
    return None if t is None or t.error is not None else len(t.partitions)


def create_topic(options: dict[str, Any], topic: str, partitions: int, config: dict[str, str] | None = None) -> bool:
    """Create ``topic`` with ``partitions`` partitions (and topic ``config``, e.g. ``{"cleanup.policy": "compact"}``) unless it exists; True if this call created it."""
    admin = kafka_clients.admin(options)
    if topic in _metadata(admin, options["bootstrap.servers"]).topics:
        return False
    return bool(_create(admin, {topic: partitions}, "topic", config))


def missing_topic_message(missing: list[str], brokers: str, topics: list[str]) -> str:
    """What a pipeline says when its source topics do not exist: which, where, and how to fill one."""
    names = f"topic {missing[0]!r} does" if len(missing) == 1 else f"topics {missing} do"
    topic = "" if missing[0] == "clicks" else f" --topic {missing[0]}"
    there = f"its topics: {sorted(topics)[:20]}" if topics else "it has no topics yet"
    return (
        f"source {names} not exist on {brokers} ({there}). Create {'it' if len(missing) == 1 else 'them'} "
        f"and produce records to {'it' if len(missing) == 1 else 'them'}; for sample clicks (the README's example reads them) "
        f"run `lockgate sample clicks{topic} --brokers {brokers}`"
    )


def ensure_topics(options: dict[str, Any], sources: list[str], sinks: list[str]) -> None:
    """Check the source topics exist; create missing sink topics with as many partitions as the widest source."""
    admin = kafka_clients.admin(options)
    md = _metadata(admin, options["bootstrap.servers"])
    missing = [t for t in sources if t not in md.topics or md.topics[t].error is not None]
    if missing:
        existing = [t for t in md.topics if not t.startswith("__")]
        raise PipelineDefinitionError(missing_topic_message(missing, options["bootstrap.servers"], existing))
    width = max(len(md.topics[t].partitions) for t in sources)
    _create(admin, {t: width for t in dict.fromkeys(sinks) if t not in md.topics}, "sink topic")
