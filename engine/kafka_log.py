"""librdkafka's log lines go through Python logging, under ``lockgate.kafka``.

Every Kafka client lockgate makes is given ``"logger": kafka_logger(role)`` by
:mod:`lockgate.engine.kafka_clients`, which builds them all.
confluent-kafka then hands each librdkafka log line to that logger, with its
syslog level (0-7) mapped to CRITICAL, ERROR, WARNING, INFO or DEBUG, as
``"%s [%s] %s" % (facility, client name, text)``; librdkafka no longer prints raw
lines such as ``%4|1796178328.475|GETPID|rdkafka#producer-5| ...`` on stderr.  The
lines arrive while the client is served: a consumer's ``consume``/``poll``, a
producer's ``poll``/``flush``/``commit_transaction``, an admin client's ``poll``
(``kafka_clients.admin`` returns one that polls itself after each call).

Lines about what librdkafka retries by itself are lowered to INFO
(``kafka_level``): a group or transaction coordinator that is loading or moving
(``Coordinator load in progress``, ``Not coordinator``), a transactional producer
asking again for its id (``GETPID ...: retrying``, as on a fresh broker), and a
broker connection that failed or closed while the broker restarts (``Connect to
... failed: Connection refused``, ``Disconnected: connection closed by peer``,
``Timed out 3 in-flight ... requests``).  lockgate says so itself when a wait
lasts (``waiting for Kafka: ...`` warnings, or a ``BrokerError``).  Failed
authentication, TLS, name resolution, configuration warnings and fatal errors
keep their level.

Examples
--------
>>> import logging
>>> from lockgate.engine.kafka_log import kafka_level
>>> retry = "[thrd:main]: Failed to acquire transactional PID from broker TxnCoordinator/1: Broker: Coordinator load in progress: retrying"
>>> logging.getLevelName(kafka_level(logging.WARNING, "GETPID", retry))
'INFO'
>>> tls = "[thrd:ssl://k1:9093/bootstrap]: ssl://k1:9093/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer"
>>> logging.getLevelName(kafka_level(logging.ERROR, "FAIL", tls))
'ERROR'
"""

from __future__ import annotations

import logging
import re
from typing import Literal

__all__ = ["kafka_level", "kafka_logger"]

Role = Literal["consumer", "producer", "admin"]

#: how confluent-kafka formats a librdkafka line: facility, client name, text
_FORMAT = "%s [%s] %s"
#: a coordinator loading (a fresh broker, a restart) or moving: librdkafka looks it up again
_COORDINATOR = re.compile(r"coordinator load in progress|not coordinator|coordinator not available|coordinator is loading", re.I)
#: a broker connection refused, reset or closed, or requests timed out on it: librdkafka reconnects and resends
_TRANSPORT = re.compile(
    r"Connect to \S+ failed: (?:Connection refused|Connection reset|Connection timed out)"
    r"|Disconnected(?: \(after|: connection (?:closed|reset) by peer)"
    r"|(?:Receive|Send) failed: (?:Connection reset|Broken pipe|Disconnected)"
    r"|Timed out \d+ in-flight|\d+/\d+ brokers are down",
    re.I,
)
#: the connection state a broker failure names: only a failure in these is a restart (others: TLS, SASL, protocol)
_STATE = re.compile(r"in state (\w+)")
_RESTART_STATES = {"CONNECT", "UP"}
#: never lowered, whatever else the line says (a broker's name, ``sasl_ssl://k1:9093/1``, is no reason)
_KEEP = re.compile(r"fatal|SSL (?:handshake|transport|error)|SASL \w|authenticat|authoriz|Failed to resolve", re.I)


def kafka_level(level: int, facility: str, text: str) -> int:
    """The Python level lockgate gives a librdkafka line that confluent-kafka logs at ``level``.

    INFO for a transient retry (see the module docstring), ``level`` otherwise: a
    line is only ever lowered.
    """
    if level <= logging.INFO or _KEEP.search(text):
        return level
    state = _STATE.search(text)
    transient = (
        _COORDINATOR.search(text) is not None
        or (facility == "GETPID" and text.rstrip().endswith("retrying"))
        or (_TRANSPORT.search(text) is not None and (state is None or state.group(1) in _RESTART_STATES))
    )
    return logging.INFO if transient else level


class _Transient(logging.Filter):
    """Gives each librdkafka record its ``kafka_level``; drops one its logger does not log at that level.

    A Filter on the logger itself, so that a lowered record is handled exactly as one
    logged at the lower level: the parents' handlers do not look at logger levels.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg != _FORMAT or not isinstance(args, tuple) or len(args) != 3:
            return True
        level = kafka_level(record.levelno, str(args[0]), str(args[2]))
        if level < record.levelno:
            if not logging.getLogger(record.name).isEnabledFor(level):
                return False
            record.levelno, record.levelname = level, logging.getLevelName(level)
        return True


def _install(logger: logging.Logger) -> logging.Logger:
    logger.addFilter(_Transient())
    return logger


_LOGGERS = {role: _install(logging.getLogger(f"lockgate.kafka.{role}")) for role in ("consumer", "producer", "admin")}


def kafka_logger(role: Role) -> logging.Logger:
    """The logger ``lockgate.kafka.<role>`` for a client's ``logger`` option; it lowers transient retries.

    >>> kafka_logger("consumer").name
    'lockgate.kafka.consumer'
    """
    return _LOGGERS[role]
