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
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from lockgate.operators.durations import parse_duration
from lockgate.errors import PipelineDefinitionError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

__all__ = ["BatchPolicy", "PipelineConfig", "Settings", "is_secret", "overrides", "plain_storage_options", "resolve_instance"]

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def explain_validation(owner: str, exc: ValidationError) -> PipelineDefinitionError:
    """A pydantic error as one line per wrong option, naming the option."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "options"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return PipelineDefinitionError(f"{owner}: " + "; ".join(parts))


def _duration(what: str) -> Any:
    """A ``timedelta`` field that also takes ``"250ms"``, ``"5s"``, ``"1m"`` ... (``what`` names it in errors)."""
    return Annotated[timedelta, BeforeValidator(lambda value: parse_duration(value, what=what))]


#: a count of at least 1
_Count = Annotated[int, Field(ge=1)]
_MaxWait = _duration("BatchPolicy(max_wait=...)")
_MinInterval = _duration("BatchPolicy(min_interval=...)")
_CommitTimeout = _duration("Pipeline(commit_timeout=...)")
_KeepHistory = _duration("Pipeline(keep_history=...)")


class _Options(BaseModel):
    """Options that raise PipelineDefinitionError (a ValueError) naming the option."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise explain_validation(f"lg.{type(self).__name__}", exc) from None


class _Batch(BaseModel):
    """The fields of a ``BatchPolicy``, validated the pydantic way (``Settings.batch``: a nested model raises ValidationError)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_records: _Count = 50_000
    max_bytes: _Count = 64 * 1024 * 1024
    max_wait: _MaxWait = timedelta(milliseconds=100)
    min_interval: _MinInterval = timedelta(milliseconds=50)

    @model_validator(mode="after")
    def _interval_within_wait(self) -> _Batch:
        if "min_interval" in self.model_fields_set and self.min_interval > self.max_wait:
            raise ValueError(
                f"min_interval ({self.min_interval.total_seconds() * 1000:g} ms) is longer than max_wait "
                f"({self.max_wait.total_seconds() * 1000:g} ms), which closes every batch first: lower min_interval or raise max_wait"
            )
        return self


class BatchPolicy(_Options, _Batch):
    """How big a micro-batch may grow, and how often one may close.

    A batch closes as soon as the commit before it is (nearly) done and it has
    records, so records wait for that commit and not for a timer; while commits
    lag it grows, until one of these limits is reached first.  At low rates a
    commit is done quickly, and ``min_interval`` keeps epochs from coming faster
    than it: each epoch costs a few ms of CPU and two LanceDB appends whatever its
    size (at 10k records/s the engine uses a third less CPU with it).

    Parameters
    ----------
    max_records
        Records per micro-batch, at most.
    max_bytes
        Bytes of record values per micro-batch, at most (checked between polls).
    max_wait
        How long a batch may wait, from its first record, for the commit before it.
    min_interval
        The least time between the starts of two epochs' commits (Flink's
        ``min-pause`` between checkpoints, start to start): a batch with records
        closes no earlier than that after the last commit started, less the time
        it is expected to need before its own commit can start (its decode and
        operators), unless it is full or ``max_wait`` (the smaller one wins)
        passed.  ``"0ms"``: a batch closes as soon as the commit before it allows.

    >>> BatchPolicy().min_interval_s, BatchPolicy(max_wait="20ms").max_wait_s
    (0.05, 0.02)
    """

    @property
    def max_wait_s(self) -> float:
        """``max_wait`` in seconds."""
        return self.max_wait.total_seconds()

    @property
    def min_interval_s(self) -> float:
        """``min_interval`` in seconds."""
        return self.min_interval.total_seconds()


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
def is_secret(option: str) -> bool:
    """True for Kafka options whose value must not be shown (``sasl.password``, ``ssl.key.password``, ...).

    >>> is_secret("sasl.password"), is_secret("security.protocol")
    (True, False)
    """
    return any(word in option.lower() for word in _SECRET_WORDS)


def _masking(words: tuple[str, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A validator that turns the value of every option whose name holds one of ``words`` into a ``SecretStr``."""

    def mask(options: dict[str, Any]) -> dict[str, Any]:
        return {
            k: (SecretStr(str(v)) if any(w in k.lower() for w in words) and not isinstance(v, SecretStr) else v)
            for k, v in options.items()
        }

    return mask


#: librdkafka options for every client; the values of secret ones become SecretStr
_KafkaOptions = Annotated[dict[str, str | int | float | bool | SecretStr], AfterValidator(_masking(_SECRET_WORDS))]

#: words that make a storage option a secret (``access_key_id``, ``secret_access_key``, ``session_token``, ``account_key`` ...)
_STORAGE_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "sas")


#: Lance object-store options of the state (``endpoint``, ``region``, keys ...); the keys' values become SecretStr
_StorageOptions = Annotated[dict[str, str | int | bool | SecretStr], AfterValidator(_masking(_STORAGE_SECRET_WORDS))]

#: the nested option groups: TOML tables of their own (``[kafka]``) and ``LOCKGATE_KAFKA__...`` variables
_TABLES = ("batch", "kafka", "storage_options")

#: the environment a Settings() reads (overrides(environ) sets it; os.environ otherwise)
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("lockgate_environ", default=None)


class _Environment(EnvSettingsSource):
    """``LOCKGATE_*`` variables; in ``LOCKGATE_KAFKA__SASL_PASSWORD`` each ``_`` of the option is a ``.``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        # pydantic-settings reads os.environ; overrides(environ) gives another mapping (case-insensitive names too)
        self.env_vars = {name.lower(): value for name, value in environ.items()}

    def __call__(self) -> dict[str, Any]:
        found = super().__call__()
        if isinstance(found.get("kafka"), dict):
            found["kafka"] = {option.replace("_", "."): value for option, value in found["kafka"].items()}
        return found


class _TomlFile(TomlConfigSettingsSource):
    """The TOML file ``$LOCKGATE_CONFIG``: its ``[pipeline]`` options are top-level settings, ``[batch]`` and ``[kafka]`` nested ones."""

    def __init__(self, settings_cls: type[BaseSettings], path: str | None) -> None:
        if path and not Path(path).is_file():
            raise PipelineDefinitionError(f"LOCKGATE_CONFIG={path!r}: cannot read it as TOML: no such file")
        super().__init__(settings_cls, toml_file=path or None)

    def _read_file(self, path: Path) -> dict[str, Any]:
        try:
            data = super()._read_file(path)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PipelineDefinitionError(f"LOCKGATE_CONFIG={str(path)!r}: cannot read it as TOML: {exc}") from None
        unknown = set(data) - {"pipeline", *_TABLES}
        bad = set(data.get("pipeline", {})) - set(_TOP_LEVEL)
        if unknown or bad:
            raise PipelineDefinitionError(
                f"{path}: unknown {'tables ' + str(sorted(unknown)) if unknown else 'options ' + str(sorted(bad))}; "
                f"use [pipeline] ({', '.join(_TOP_LEVEL)}), [batch] and [kafka]"
            )
        return {**data.get("pipeline", {}), **{table: data[table] for table in _TABLES if data.get(table)}}


class Settings(BaseSettings):
    """What a service sets around the very code a notebook runs: ``LOCKGATE_*`` variables, then the TOML file ``$LOCKGATE_CONFIG``.

    ``LOCKGATE_BROKERS``, ``LOCKGATE_STATE``, ``LOCKGATE_INSTANCE``,
    ``LOCKGATE_COMPACT_EVERY``, ``LOCKGATE_COMMIT_TIMEOUT``, ``LOCKGATE_SNAPSHOT_ROWS``,
    ``LOCKGATE_KEEP_HISTORY``, ``LOCKGATE_BATCH__MAX_RECORDS`` (any ``BatchPolicy``
    field) and ``LOCKGATE_KAFKA__SASL_PASSWORD`` (any librdkafka option: ``_`` becomes
    ``.``).  The TOML file (``lockgate run --config FILE``) has the tables
    ``[pipeline]``, ``[batch]`` and ``[kafka]``; a variable wins over the file.  An
    option neither sets is ``None`` (unset): the code's value stays.  Secret Kafka
    options are ``SecretStr``.

    >>> import os
    >>> os.environ["LOCKGATE_BATCH__MAX_RECORDS"] = "500"
    >>> Settings().batch.max_records
    500
    >>> del os.environ["LOCKGATE_BATCH__MAX_RECORDS"]
    """

    model_config = SettingsConfigDict(
        env_prefix="LOCKGATE_", env_nested_delimiter="__", case_sensitive=False, extra="forbid", frozen=True,
        hide_input_in_errors=True,  # an error never quotes a value: it may be a secret
    )

    brokers: str | None = None
    state: str | None = None
    instance: str | None = None
    compact_every: _Count | None = None
    commit_timeout: _CommitTimeout | None = None
    snapshot_rows: _Count | None = None
    keep_history: _KeepHistory | None = None
    batch: _Batch | None = None
    kafka: _KafkaOptions = Field(default_factory=dict)
    storage_options: _StorageOptions = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource, file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then ``LOCKGATE_*`` variables, then the TOML file ``$LOCKGATE_CONFIG`` (no .env, no secrets dir)."""
        environ = _ENVIRON.get()
        environ = os.environ if environ is None else environ
        return init_settings, _Environment(settings_cls, environ), _TomlFile(settings_cls, environ.get("LOCKGATE_CONFIG"))


#: top-level options a LOCKGATE_<NAME> variable or the [pipeline] table of a TOML file may set
_TOP_LEVEL = tuple(name for name in Settings.model_fields if name not in _TABLES)


def _explain_settings(exc: ValidationError, environ: Mapping[str, str]) -> PipelineDefinitionError:
    """A settings error as one line per wrong option, naming the variable or the TOML table that set it."""
    variables = {name.upper() for name in environ}
    parts = []
    for err in exc.errors(include_input=False):
        loc = [str(p) for p in err["loc"]]
        variable = "LOCKGATE_" + "__".join(p.replace(".", "_") for p in loc).upper()
        table, key = (loc[0], ".".join(loc[1:])) if len(loc) > 1 else ("pipeline", loc[0])
        if variable in variables:
            where = f"{variable} ({'.'.join(loc)})"
        else:
            where = f"[{table}] {key} of {environ.get('LOCKGATE_CONFIG')}" if environ.get("LOCKGATE_CONFIG") else ".".join(loc)
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return PipelineDefinitionError("lockgate settings: " + "; ".join(parts))


def overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The options ``Settings`` reads from ``environ`` (default ``os.environ``): only those set, validated.

    ``lg.Pipeline`` lays them over the options its code gives.

    >>> overrides({"LOCKGATE_BROKERS": "k1:9092", "LOCKGATE_KAFKA__SECURITY_PROTOCOL": "SSL", "LOCKGATE_BATCH__MAX_RECORDS": "500"})
    {'brokers': 'k1:9092', 'batch': {'max_records': 500}, 'kafka': {'security.protocol': 'SSL'}}
    >>> overrides({"LOCKGATE_BATCH__MAX_RECORDS": "lots"})
    Traceback (most recent call last):
    ...
    lockgate.errors.PipelineDefinitionError: lockgate settings: LOCKGATE_BATCH__MAX_RECORDS (batch.max_records): Input should be a valid integer, unable to parse string as an integer

    Raises
    ------
    PipelineDefinitionError
        Naming each variable or TOML option of the wrong type, and the unknown ones of the TOML file.
    """
    environ = os.environ if environ is None else environ
    token = _ENVIRON.set(environ)
    try:
        settings = Settings()
    except ValidationError as exc:
        raise _explain_settings(exc, environ) from None
    except SettingsError as exc:  # a LOCKGATE_BATCH or LOCKGATE_KAFKA that is not JSON
        raise PipelineDefinitionError(f"lockgate settings: {exc}; set one option per variable, e.g. LOCKGATE_BATCH__MAX_RECORDS") from None
    finally:
        _ENVIRON.reset(token)
    return settings.model_dump(exclude_unset=True)


#: a host name's trailing ordinal: a Kubernetes StatefulSet names its pods ``<set>-0``, ``<set>-1`` ...
_ORDINAL = re.compile(r"-(\d+)$")
#: ``LOCKGATE_INSTANCE=hostname`` (or ``instance="hostname"``): the id is the host name's trailing ordinal
FROM_HOSTNAME = "hostname"


def resolve_instance(given: str | None, environ: Mapping[str, str], hostname: str) -> str:
    """This instance's id: as given, or the host name's trailing ordinal, or ``"0"``.

    Each instance of a pipeline needs its own id (it names the transactional id and
    the static group membership: two instances with one id fence each other).  Given
    ``"hostname"``, the id is the host name's trailing ordinal (``orders-3`` is
    instance ``3``).  Not given at all, inside Kubernetes (``KUBERNETES_SERVICE_HOST``
    is set) a host name with a trailing ordinal gives it too, so the pods of a
    StatefulSet need no per-pod setting; anywhere else the id is ``"0"``.

    >>> resolve_instance(None, {}, "laptop-2"), resolve_instance("7", {}, "orders-3")
    ('0', '7')
    >>> resolve_instance("hostname", {}, "orders-3"), resolve_instance(None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "orders-3")
    ('3', '3')
    >>> resolve_instance("hostname", {}, "laptop")
    Traceback (most recent call last):
    ...
    lockgate.errors.PipelineDefinitionError: instance='hostname': the host name 'laptop' has no trailing ordinal (as a StatefulSet pod 'orders-3' has); set LOCKGATE_INSTANCE to this instance's id instead
    """
    if given is not None and given != FROM_HOSTNAME:
        if not _NAME.match(given):
            raise PipelineDefinitionError(
                f"instance {given!r} must be 1-200 characters of letters, digits, '.', '_' or '-' "
                "(it names the transactional id and the group membership)"
            )
        return given
    found = _ORDINAL.search(hostname)
    ordinal = None if found is None else str(int(found.group(1)))
    if given == FROM_HOSTNAME and ordinal is None:
        raise PipelineDefinitionError(
            f"instance='hostname': the host name {hostname!r} has no trailing ordinal (as a StatefulSet pod "
            "'orders-3' has); set LOCKGATE_INSTANCE to this instance's id instead"
        )
    if ordinal is not None and (given == FROM_HOSTNAME or environ.get("KUBERNETES_SERVICE_HOST")):
        return ordinal
    return "0"


def plain_storage_options(options: Mapping[str, Any]) -> dict[str, str]:
    """Storage options as Lance takes them: plain strings, secrets revealed (only for the client).

    >>> plain_storage_options({"allow_http": True, "secret_access_key": SecretStr("s3cr3t")})
    {'allow_http': 'true', 'secret_access_key': 's3cr3t'}
    """
    return {
        k: (v.get_secret_value() if isinstance(v, SecretStr) else str(v).lower() if isinstance(v, bool) else str(v))
        for k, v in options.items()
    }


class PipelineConfig(_Options):
    """Validated options of an ``lg.Pipeline``."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    brokers: str = "localhost:9092"
    state: str = "./lockgate-state"
    batch: BatchPolicy = BatchPolicy()
    instance: str = "0"  # lg.Pipeline resolves it (resolve_instance): $LOCKGATE_INSTANCE, the host name's ordinal, or "0"
    kafka: _KafkaOptions = Field(default_factory=dict)
    storage_options: _StorageOptions = Field(
        default_factory=dict,
        description="Lance object-store options of a state on S3 (endpoint, region, access_key_id, secret_access_key, allow_http ...)",
    )
    compact_every: _Count = Field(50, description="compact the LanceDB tables every this many committed batches")
    commit_timeout: _CommitTimeout = Field(timedelta(seconds=60), description="timeout of each Kafka transaction call")
    snapshot_rows: _Count = Field(
        1_000_000,
        description="the floor of the retention rule (lockgate.storage.retention.history_due): once a window's state "
        "or an update-mode table is due, a window writes a full snapshot and its history before it is deleted, a table "
        "loses the rows later updates superseded",
    )
    keep_history: _KeepHistory = Field(
        timedelta(minutes=10), description="how long the state history before a snapshot, or superseded table rows, stay (as_of reads)"
    )

    def scrub(self, text: str) -> str:
        """``text`` with every secret option's value replaced by ``***`` (for errors from the clients)."""
        for value in [*self.kafka.values(), *self.storage_options.values()]:
            if isinstance(value, SecretStr) and value.get_secret_value():
                text = text.replace(value.get_secret_value(), "***")
        return text

    def lance_storage_options(self) -> dict[str, str]:
        """The storage options as Lance takes them (:func:`plain_storage_options`)."""
        return plain_storage_options(self.storage_options)

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
            # Back-to-back transactions: the coordinator answers CONCURRENT_TRANSACTIONS while it
            # still writes the last one's markers, and librdkafka retries AddOffsetsToTxn after
            # retry.backoff.ms (default 100 ms; AddPartitionsToTxn uses 20 ms).  At 50k ev/s that was
            # the produce stage's p99 (122 ms): 6 % of transactions waited out the 100 ms.
            "retry.backoff.ms": 10,
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
