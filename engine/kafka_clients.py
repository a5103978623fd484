"""Every librdkafka client of lockgate is built here: consumers, producers, admin clients.

Each client gets the options lockgate always sets on top of the ones it is given:

- ``logger``: ``lockgate.kafka.<role>`` (:func:`lockgate.engine.kafka_log.kafka_logger`),
  so librdkafka's lines go through Python logging instead of stderr;
- ``log_level``: 6, librdkafka's own default, unless the options set one: Python
  logging decides what is shown (``debug=...`` contexts raise it to 7 by themselves);
- for a consumer, ``enable.partition.eof`` as asked (``partition_eof=``): the
  changelog tables read to each partition's end; the source consumer does not
  want the events (they halved its ``consume`` rate).

A client's log lines reach its logger only while the client is served: a
consumer's ``consume``/``poll``, a producer's ``poll``/``flush``, an admin
client's ``poll``.  Nobody polls an admin client, so :func:`admin` returns one
that serves its log lines itself, after each call and when it is dropped: the
lines of a request it sent (``create_topics`` ...) come out at its next call or
when it goes.  Not from the request's done callback: that runs on librdkafka's
background thread, where ``poll`` aborted the process.

Options librdkafka refuses raise :class:`~lockgate.errors.KafkaOptionsError`
naming the client, the option and the fix; a secret option's value never appears
in it.

Examples
--------
>>> from lockgate.engine import kafka_clients
>>> options = kafka_clients.client_options("consumer", {"bootstrap.servers": "k1:9092", "group.id": "g"}, partition_eof=True)
>>> sorted(options)
['bootstrap.servers', 'enable.partition.eof', 'group.id', 'log_level', 'logger']
>>> options["logger"].name, options["log_level"], options["enable.partition.eof"]
('lockgate.kafka.consumer', 6, True)
>>> kafka_clients.producer({"bootstrap.servers": "127.0.0.1:9", "linger.msec": 5})
Traceback (most recent call last):
...
lockgate.errors.KafkaOptionsError: the Kafka producer refused an option: No such configuration property: "linger.msec"; correct or remove it ...
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import confluent_kafka as ck
from confluent_kafka.admin import AdminClient
from lockgate.engine.config import is_secret
from lockgate.engine.kafka_log import kafka_logger
from lockgate.errors import KafkaOptionsError

__all__ = ["admin", "client_options", "consumer", "kafka_error", "producer"]

Role = Literal["consumer", "producer", "admin"]
C = TypeVar("C")

#: librdkafka's default (INFO): every line it logs reaches Python logging, which filters
_LOG_LEVEL = 6
#: how an error names a client of each role
_NAMES = {"consumer": "consumer", "producer": "producer", "admin": "admin client"}
#: where a refused option's fix is looked up
_OPTIONS_DOC = "https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md"


def client_options(role: Role, options: Mapping[str, Any], *, partition_eof: bool = False) -> dict[str, Any]:
    """The options a client of ``role`` is built with: ``options`` plus the ones lockgate always sets.

    ``log_level`` is a default (``options`` may set another); ``logger`` and, for a
    consumer, ``enable.partition.eof`` are lockgate's, whatever ``options`` say.

    >>> client_options("admin", {"bootstrap.servers": "k1:9092", "log_level": 7})["log_level"]
    7
    >>> "enable.partition.eof" in client_options("producer", {"bootstrap.servers": "k1:9092"})
    False
    """
    built = {"log_level": _LOG_LEVEL, **options, "logger": kafka_logger(role)}
    if role == "consumer":
        built["enable.partition.eof"] = partition_eof
    return built


def consumer(options: Mapping[str, Any], *, partition_eof: bool = False) -> ck.Consumer:
    """A consumer with ``options`` (``group.id`` among them); ``partition_eof``: deliver end-of-partition events."""
    return _build(ck.Consumer, "consumer", client_options("consumer", options, partition_eof=partition_eof))


def producer(options: Mapping[str, Any]) -> ck.Producer:
    """A producer with ``options`` (a transactional one if they have ``transactional.id``)."""
    return _build(ck.Producer, "producer", client_options("producer", options))


def admin(options: Mapping[str, Any]) -> AdminClient:
    """An admin client with ``options`` that serves its own log lines (see the module docstring)."""
    return _build(_ServedAdmin, "admin", client_options("admin", options))


def kafka_error(exc: BaseException) -> ck.KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries (None for any other exception, or one without it)."""
    if isinstance(exc, ck.KafkaException) and exc.args and isinstance(exc.args[0], ck.KafkaError):
        return exc.args[0]
    return None


def _build(make: Callable[[dict[str, Any]], C], role: Role, options: dict[str, Any]) -> C:
    try:
        return make(options)
    except ck.KafkaException as exc:
        err = kafka_error(exc)
        if err is None or err.code() != ck.KafkaError._INVALID_ARG:
            raise
        raise KafkaOptionsError(
            f"the Kafka {_NAMES[role]} refused an option: {_scrub(err.str(), options)}; correct or remove it "
            f"(lg.Pipeline(kafka={{...}}) or its LOCKGATE_KAFKA__ variable; librdkafka's options: {_OPTIONS_DOC})"
        ) from None  # the librdkafka error may quote a secret value: not chained


def _scrub(text: str, options: Mapping[str, Any]) -> str:
    """``text`` with the value of every secret option (``sasl.password``, ...) replaced by ``***``."""
    for key, value in options.items():
        if is_secret(key) and isinstance(value, str | bytes) and value:
            text = text.replace(value if isinstance(value, str) else value.decode(errors="replace"), "***")
    return text


class _ServedAdmin(AdminClient):
    """An ``AdminClient`` that calls ``poll(0)`` after each of its calls and when it is dropped."""

    def __del__(self) -> None:
        # Not on a thread Python did not start (librdkafka's, where a cyclic gc may run this): poll aborts there.
        if isinstance(threading.current_thread(), threading._DummyThread):
            return
        with contextlib.suppress(Exception):  # half built (refused options) or at interpreter exit: nothing to serve
            self.poll(0)


def _serving(name: str) -> Callable[..., Any]:
    method = getattr(AdminClient, name)

    @functools.wraps(method)
    def call(self: _ServedAdmin, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self.poll(0)

    return call


for _name in dir(AdminClient):
    if not _name.startswith("_") and _name != "poll" and callable(getattr(AdminClient, _name)):
        setattr(_ServedAdmin, _name, _serving(_name))
del _name
