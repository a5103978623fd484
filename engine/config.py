"""User-facing configuration: pydantic models, validated where the user gives them.

librdkafka's dotted options are built here and nowhere else.

Examples
--------
>>> from lockgate.engine.config import BatchPolicy
>>> BatchPolicy(max_records=1000, max_wait="250ms").max_wait_s
0.25
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from lockgate.operators.durations import parse_duration
from lockgate.operators.errors import PipelineDefinitionError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

__all__ = ["BatchPolicy", "PipelineConfig", "is_secret", "overrides"]

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def explain_validation(owner: str, exc: ValidationError) -> PipelineDefinitionError:
    """A pydantic error as one line per wrong option, naming the option."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "options"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return PipelineDefinitionError(f"{owner}: " + "; ".join(parts))


class _Options(BaseModel):
    """Options that raise PipelineDefinitionError (a ValueError) naming the option."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise explain_validation(f"lg.{type(self).__name__}", exc) from None


class BatchPolicy(_Options):
    """When a micro-batch is closed: whichever limit is reached first.

    Parameters
    ----------
    max_records
        Records per micro-batch, at most.
    max_bytes
        Bytes of record values per micro-batch, at most (checked between polls).
    max_wait
        How long to wait for more records before closing a non-empty batch.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_records: int = Field(50_000, ge=1)
    max_bytes: int = Field(64 * 1024 * 1024, ge=1)
    max_wait: timedelta = timedelta(milliseconds=100)

    @field_validator("max_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value, what="BatchPolicy(max_wait=...)")

    @property
    def max_wait_s(self) -> float:
        """``max_wait`` in seconds."""
        return self.max_wait.total_seconds()


#: words that make a Kafka option a secret: its value is a SecretStr, never logged or shown
_SECRET_WORDS = ("password", "secret", "token", ".pem", "jaas", "credentials")
#: librdkafka options (or prefixes) that only a consumer / only a producer has
_CONSUMER_ONLY = (
    "group.", "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms", "auto.commit", "auto.offset.reset",
    "enable.auto.", "fetch.", "queued.", "max.partition.fetch.bytes", "isolation.level", "partition.assignment.strategy",
    "check.crcs", "enable.partition.eof", "coordinator.query.interval.ms", "consume.callback.max.messages",
    "allow.auto.create.topics",
)
_PRODUCER_ONLY = (
    "transactional.id", "transaction.timeout.ms", "enable.idempotence", "enable.gapless.guarantee", "queue.buffering.",
    "queuing.strategy", "message.send.max.retries", "retries", "retry.backoff", "compression.", "batch.", "linger.ms",
    "delivery.", "message.timeout.ms", "request.required.acks", "acks", "partitioner", "sticky.partitioning.linger.ms",
)
#: top-level options a LOCKGATE_<NAME> variable or the [pipeline] table of a TOML file may set
_TOP_LEVEL = ("brokers", "state", "instance", "compact_every", "commit_timeout", "snapshot_rows", "keep_history")


def is_secret(option: str) -> bool:
    """True for Kafka options whose value must not be shown (``sasl.password``, ``ssl.key.password``, ...).

    >>> is_secret("sasl.password"), is_secret("security.protocol")
    (True, False)
    """
    return any(word in option.lower() for word in _SECRET_WORDS)


def overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Pipeline options from the TOML file ``$LOCKGATE_CONFIG`` and ``LOCKGATE_*`` variables (these win).

    A service sets them around the very code a notebook runs: ``LOCKGATE_BROKERS``,
    ``LOCKGATE_STATE``, ``LOCKGATE_INSTANCE``, ``LOCKGATE_COMPACT_EVERY``,
    ``LOCKGATE_COMMIT_TIMEOUT``, ``LOCKGATE_BATCH__MAX_RECORDS`` (any ``BatchPolicy``
    field) and ``LOCKGATE_KAFKA__SASL_PASSWORD`` (any librdkafka option: ``_`` becomes
    ``.``).  The TOML file has the tables ``[pipeline]``, ``[batch]`` and ``[kafka]``.

    >>> overrides({"LOCKGATE_BROKERS": "k1:9092", "LOCKGATE_KAFKA__SECURITY_PROTOCOL": "SSL", "LOCKGATE_BATCH__MAX_RECORDS": "500"})
    {'batch': {'max_records': '500'}, 'brokers': 'k1:9092', 'kafka': {'security.protocol': 'SSL'}}
    """
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    path = environ.get("LOCKGATE_CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PipelineDefinitionError(f"LOCKGATE_CONFIG={path!r}: cannot read it as TOML: {exc}") from None
        unknown = set(data) - {"pipeline", "batch", "kafka"}
        bad = set(data.get("pipeline", {})) - set(_TOP_LEVEL)
        if unknown or bad:
            raise PipelineDefinitionError(
                f"{path}: unknown {'tables ' + str(sorted(unknown)) if unknown else 'options ' + str(sorted(bad))}; "
                f"use [pipeline] ({', '.join(_TOP_LEVEL)}), [batch] and [kafka]"
            )
        out.update(data.get("pipeline", {}))
        if data.get("batch"):
            out["batch"] = dict(data["batch"])
        if data.get("kafka"):
            out["kafka"] = dict(data["kafka"])
    for key, value in sorted(environ.items()):
        if not key.startswith("LOCKGATE_"):
            continue
        name = key.removeprefix("LOCKGATE_").lower()
        if name.startswith("kafka__"):
            out.setdefault("kafka", {})[name.removeprefix("kafka__").replace("_", ".")] = value
        elif name.startswith("batch__"):
            out.setdefault("batch", {})[name.removeprefix("batch__")] = value
        elif name in _TOP_LEVEL:
            out[name] = value
    return out


class PipelineConfig(_Options):
    """Validated options of an ``lg.Pipeline``."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    brokers: str = "localhost:9092"
    state: str = "./lockgate-state"
    batch: BatchPolicy = BatchPolicy()
    instance: str = "0"  # lg.Pipeline applies $LOCKGATE_INSTANCE through overrides()
    kafka: dict[str, str | int | float | bool | SecretStr] = Field(default_factory=dict)
    compact_every: int = Field(50, ge=1, description="compact the LanceDB tables every this many committed batches")
    commit_timeout: timedelta = Field(timedelta(seconds=60), description="timeout of each Kafka transaction call")
    snapshot_rows: int = Field(
        1_000_000, ge=1,
        description="a window writes a full snapshot of its state once the rows appended since the last one exceed "
        "max(this, 4 x its open windows); the history before a committed snapshot is then deleted. An update-mode "
        "table past max(this, 4 x its rows after the last prune) loses the rows later updates superseded",
    )
    keep_history: timedelta = Field(
        timedelta(minutes=10), description="how long the state history before a snapshot, or superseded table rows, stay (as_of reads)"
    )

    @field_validator("kafka", mode="after")
    @classmethod
    def _secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {k: (SecretStr(str(v)) if is_secret(k) and not isinstance(v, SecretStr) else v) for k, v in value.items()}

    def scrub(self, text: str) -> str:
        """``text`` with every secret option's value replaced by ``***`` (for errors from the clients)."""
        for value in self.kafka.values():
            if isinstance(value, SecretStr) and value.get_secret_value():
                text = text.replace(value.get_secret_value(), "***")
        return text

    @field_validator("commit_timeout", mode="before")
    @classmethod
    def _commit_timeout(cls, value: Any) -> timedelta:
        return parse_duration(value, what="Pipeline(commit_timeout=...)")

    @field_validator("keep_history", mode="before")
    @classmethod
    def _keep_history(cls, value: Any) -> timedelta:
        return parse_duration(value, what="Pipeline(keep_history=...)", allow_zero=True)

    @property
    def commit_timeout_s(self) -> float:
        """``commit_timeout`` in seconds."""
        return self.commit_timeout.total_seconds()

    @property
    def session_timeout_s(self) -> float:
        """The consumer group session timeout in seconds (``kafka={"session.timeout.ms": ...}``, librdkafka's 45 s by default)."""
        value = self.kafka.get("session.timeout.ms", 45_000)
        return int(value.get_secret_value() if isinstance(value, SecretStr) else value) / 1000

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"pipeline name {value!r} must be 1-200 characters of letters, digits, '.', '_' or '-' "
                "(it names the consumer group and the transactional id)"
            )
        return value

    @property
    def transactional_id(self) -> str:
        """Stable per instance, so a restart fences and aborts its predecessor at once."""
        return f"{self.name}-{self.instance}"

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic of this pipeline."""
        return f"{self.name}-dlq"

    def _common(self, role: str) -> dict[str, Any]:
        """``kafka=`` options for a client of ``role`` (consumer, producer, admin): each gets the ones it has.

        librdkafka warns (CONFWARN) about every consumer option a producer is given and
        the other way round; the user gives one dict for all clients.
        """
        extra = {
            k: (v.get_secret_value() if isinstance(v, SecretStr) else v)
            for k, v in self.kafka.items()
            if not (role != "consumer" and k.startswith(_CONSUMER_ONLY)) and not (role != "producer" and k.startswith(_PRODUCER_ONLY))
        }
        return {"bootstrap.servers": self.brokers, **extra}

    def consumer_options(self) -> dict[str, Any]:
        """librdkafka options of the source consumer."""
        return {
            "group.id": self.name,
            # Static membership (KIP-345): a restarted instance takes its partitions
            # back at once instead of waiting out the dead member's session.
            "group.instance.id": self.transactional_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "queued.min.messages": 200_000,
            # librdkafka stops fetching a partition whose local queue is full and looks
            # again after this (default 1000 ms): the runner drained the queue sooner and
            # then waited on empty polls, 0.4 s per 2M records in bench/stateless.py
            "fetch.queue.backoff.ms": 10,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
            **self._common("consumer"),
        }

    def producer_options(self) -> dict[str, Any]:
        """librdkafka options of the transactional producer."""
        return {
            "transactional.id": self.transactional_id,
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "transaction.timeout.ms": 60_000,
            "partitioner": "murmur2_random",
            **self._common("producer"),
        }

    def admin_options(self) -> dict[str, Any]:
        """librdkafka options of the admin client."""
        return self._common("admin")
