"""The local Apache Kafka broker that lockgate's tests and examples run against.

One combined broker+controller node in KRaft mode, Apache Kafka
:data:`KAFKA_VERSION`, run on the machine's OpenJDK 17 with its jars taken from
Maven Central by ``mvn`` (cached in ``~/.m2``).  The broker is launched detached,
so it outlives the process that started it; everything it owns lives in one data
directory (``~/.lockgate/broker`` unless ``LOCKGATE_BROKER_DIR`` says otherwise)::

    broker.json          pid, ports and version of the broker (state file)
    server.properties    the broker's configuration, rewritten on every start
    log4j2.properties    logging configuration
    kraft-logs/          the KRaft metadata log and the topic partitions
    logs/server.log      the broker's log (``BrokerInfo.log_file``)
    logs/broker.out      the JVM's own stdout and stderr

The classpath resolved by ``mvn`` is cached in
``~/.lockgate/classpath-<version>.txt``; a later start reuses it without calling
``mvn`` while every jar on it exists.  A JDK class-data-sharing archive of the
broker's classes is written next to it when a broker started without one stops
cleanly, and later starts map it, which cuts the JVM's start-up time.

Examples
--------
Starting a broker takes a couple of seconds, so this example only shows the
helpers that do not start one::

    start(port=free_port())   # -> BrokerInfo(bootstrap='127.0.0.1:…', …)
    status()                  # -> the same BrokerInfo, or None
    stop()                    # -> True if a broker was running

>>> from lockgate.engine.broker import KAFKA_VERSION, free_port
>>> KAFKA_VERSION
'4.1.1'
>>> port = free_port()
>>> isinstance(port, int) and 1024 <= port <= 65535
True
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import importlib.resources
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from lockgate.engine import local_processes

from lockgate.errors import BrokerError

__all__ = [
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "BrokerInfo",
    "classpath",
    "default_data_dir",
    "free_port",
    "start",
    "status",
    "stop",
]

KAFKA_VERSION = "4.1.1"
"""The Apache Kafka version the launcher runs (pinned in ``broker_pom.xml``)."""

DEFAULT_PORT = 9092
"""The broker's client port when none is given and none was used before."""

_HOST = local_processes.HOST
_NODE_ID = 1
_JVM_OPTIONS = (
    "-Xmx512m",
    "-Xms256m",
    # Kafka's own start script (kafka-run-class.sh) uses these.
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
_WARMUP_GROUP = "lockgate-broker-warmup"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 20.0
_LOG_TAIL_LINES = 20
_JAVA_HINT = (
    "lockgate broker needs `java` (OpenJDK 17+) on PATH: "
    "install it with `apt-get install openjdk-17-jre-headless`"
)
_MVN_HINT = (
    "lockgate broker needs `mvn` (Apache Maven) on PATH to fetch the Kafka jars: "
    "install it with `apt-get install maven`"
)


@dataclasses.dataclass(frozen=True)
class BrokerInfo:
    """A running local broker.

    Attributes
    ----------
    bootstrap : str
        The ``bootstrap.servers`` value for clients, ``"127.0.0.1:<port>"``.
    port : int
        The client (PLAINTEXT) port.
    pid : int
        The process id of the broker's JVM.
    data_dir : Path
        The directory holding the broker's state, data and logs.
    log_file : Path
        The broker's log file.
    controller_port : int
        The KRaft controller port (clients never need it).

    Examples
    --------
    >>> from pathlib import Path
    >>> info = BrokerInfo("127.0.0.1:9092", 9092, 4242, Path("/tmp/b"), Path("/tmp/b/logs/server.log"), 9093)
    >>> info.bootstrap
    '127.0.0.1:9092'
    """

    bootstrap: str
    port: int
    pid: int
    data_dir: Path
    log_file: Path
    controller_port: int


def default_data_dir() -> Path:
    """Return the broker's data directory when none is given.

    Returns
    -------
    Path
        ``$LOCKGATE_BROKER_DIR`` if set, else ``~/.lockgate/broker``.

    Examples
    --------
    >>> default_data_dir().is_absolute()
    True
    """
    env = os.environ.get("LOCKGATE_BROKER_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return _home() / "broker"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Another process may take it before it is used; good enough for tests.

    Returns
    -------
    int
        A port number chosen by the operating system.

    Examples
    --------
    >>> isinstance(free_port(), int)
    True
    """
    return local_processes.free_port()


def classpath() -> str:
    """Return the broker's Java classpath, resolving it with ``mvn`` if needed.

    The classpath is cached in ``~/.lockgate/classpath-<version>.txt`` and reused
    without calling ``mvn`` while every jar on it exists.

    Returns
    -------
    str
        The jars, separated by ``os.pathsep``.

    Raises
    ------
    BrokerError
        If ``mvn`` is missing or fails (with the tail of its output).
    """
    cache = _home() / f"classpath-{KAFKA_VERSION}.txt"
    cached = _read_classpath(cache)
    if cached is not None:
        return cached
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(_MVN_HINT)
    cache.parent.mkdir(parents=True, exist_ok=True)
    pom = importlib.resources.files("lockgate.engine").joinpath("broker_pom.xml")
    # mvn runs in a scratch directory: the installed package may be read-only.
    with tempfile.TemporaryDirectory(prefix="lockgate-mvn-") as scratch:
        pom_path = Path(scratch) / "pom.xml"
        pom_path.write_bytes(pom.read_bytes())
        out = Path(scratch) / "classpath.txt"
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom_path),
            "dependency:build-classpath", f"-Dmdep.outputFile={out}",
        ]  # fmt: skip
        done = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.exists():
            tail = _tail_text(done.stdout + done.stderr, _LOG_TAIL_LINES)
            raise BrokerError(
                f"`mvn dependency:build-classpath` failed (exit {done.returncode}) resolving "
                f"Apache Kafka {KAFKA_VERSION}; its output ends with:\n{tail}"
            )
        jars = out.read_text().strip()
    _write_atomic(cache, jars + "\n")
    return jars


def status(data_dir: Path | None = None) -> BrokerInfo | None:
    """Return the broker running from ``data_dir``, or None.

    Only checks that the recorded process is alive; it may still be starting.

    Parameters
    ----------
    data_dir : Path, optional
        The broker's data directory; :func:`default_data_dir` if omitted.

    Returns
    -------
    BrokerInfo or None
        The running broker, or None if none runs from ``data_dir``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     status(Path(d)) is None
    True
    """
    data_dir = _resolve_dir(data_dir)
    state = _read_state(data_dir)
    if state is None or not _is_broker(state.get("pid"), data_dir):
        return None
    return _info(data_dir, state)


def start(
    data_dir: Path | None = None,
    port: int | None = None,
    *,
    timeout: float = _START_TIMEOUT_S,
) -> BrokerInfo:
    """Start the local broker, or return the one already running from ``data_dir``.

    Idempotent: if the broker recorded in ``data_dir`` is alive and answers, it is
    returned as is.  Otherwise the KRaft storage is formatted (first time only),
    the broker is launched detached from the calling process, and this waits until
    it answers a metadata request.

    Parameters
    ----------
    data_dir : Path, optional
        The broker's data directory; :func:`default_data_dir` if omitted.
    port : int, optional
        The client port.  If omitted: the port this data directory used last
        time, else :data:`DEFAULT_PORT`.
    timeout : float
        Seconds to wait for the broker to answer.

    Returns
    -------
    BrokerInfo
        The running broker.

    Raises
    ------
    BrokerError
        If ``java`` or ``mvn`` is missing, the port is taken, a broker already
        runs from ``data_dir`` on another port, or the broker exits or does not
        answer in time (with the tail of its log).
    """
    data_dir = _resolve_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        state = _read_state(data_dir) or {}
        if _is_broker(state.get("pid"), data_dir):
            info = _info(data_dir, state)
            if port is not None and port != info.port:
                raise BrokerError(
                    f"a lockgate broker already runs from {data_dir} on port {info.port} "
                    f"(pid {info.pid}), not on the requested port {port}: use "
                    f"bootstrap {info.bootstrap!r}, or stop it first (`lockgate broker stop`)"
                )
            _wait_ready(info, timeout)
            return info
        return _launch(data_dir, state, port, timeout)


def stop(data_dir: Path | None = None) -> bool:
    """Stop the broker running from ``data_dir``.

    Sends SIGTERM (a clean shutdown), waits up to 20 s, then SIGKILL.

    Parameters
    ----------
    data_dir : Path, optional
        The broker's data directory; :func:`default_data_dir` if omitted.

    Returns
    -------
    bool
        True if a broker was running and is now stopped, False if none ran.

    Raises
    ------
    BrokerError
        If the process survives SIGKILL.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     stop(Path(d))
    False
    """
    data_dir = _resolve_dir(data_dir)
    if not data_dir.is_dir():
        return False
    with _locked(data_dir):
        state = _read_state(data_dir)
        if state is None:
            return False
        pid = state.get("pid")
        running = _is_broker(pid, data_dir)
        clean = False
        if running:
            assert isinstance(pid, int)
            clean = _terminate(pid)
        pending = state.pop("archive_pending", None)
        if pending and clean:
            _adopt_archive(Path(pending))
        elif pending:
            Path(pending).unlink(missing_ok=True)
        state.pop("pid", None)
        _write_state(data_dir, state)
        return running


# --- launching -----------------------------------------------------------------


def _launch(data_dir: Path, state: dict[str, object], port: int | None, timeout: float) -> BrokerInfo:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(_JAVA_HINT)
    cp = classpath()
    stale = state.get("archive_pending")  # from a broker that died on its own
    if isinstance(stale, str):
        Path(stale).unlink(missing_ok=True)

    recorded = state.get("port")
    if port is None:
        port = recorded if isinstance(recorded, int) else DEFAULT_PORT
    if not _bindable(port):
        raise BrokerError(
            f"port {port} on {_HOST} is already in use by another process: start the "
            f"lockgate broker on another port (port=..., `lockgate broker start --port N`)"
        )
    controller_port = state.get("controller_port")
    if not isinstance(controller_port, int) or controller_port == port or not _bindable(controller_port):
        controller_port = _free_port_except(port)

    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    log_file = logs / "server.log"
    properties = data_dir / "server.properties"
    _write_atomic(properties, _server_properties(data_dir, port, controller_port))
    log4j = data_dir / "log4j2.properties"
    _write_atomic(log4j, _log4j_properties(log_file))

    archive = _archive_path(java, cp)
    base = [java, *_JVM_OPTIONS, f"-Dlog4j2.configurationFile={log4j}", "-cp", cp]
    if not (data_dir / "kraft-logs" / "meta.properties").exists():
        # A short-lived tool: the C1 compiler alone starts it faster.
        _format([*base, *_use_archive(archive), "-XX:TieredStopAtLevel=1"], properties, data_dir)

    cds, pending = _use_archive(archive), None
    if not cds:
        pending = archive.with_name(f"{archive.name}.{uuid.uuid4().hex[:8]}.tmp")
        # Dumping warns about every class it skips; keep broker.out readable.
        cds = [f"-XX:ArchiveClassesAtExit={pending}", "-Xlog:cds=error,cds+dynamic=error"]

    out = logs / "broker.out"
    pid = _spawn_detached([*base, *cds, "kafka.Kafka", str(properties)], out)
    new_state: dict[str, object] = {
        "pid": pid,
        "port": port,
        "controller_port": controller_port,
        "version": KAFKA_VERSION,
    }
    if pending is not None:
        new_state["archive_pending"] = str(pending)
    _write_state(data_dir, new_state)
    info = _info(data_dir, new_state)
    try:
        _wait_ready(info, timeout)
    except BrokerError:
        # Leave no half-started broker behind (its log is in the error).
        if _alive(pid):
            _terminate(pid)
        del new_state["pid"]
        new_state.pop("archive_pending", None)
        if pending is not None:
            pending.unlink(missing_ok=True)
        _write_state(data_dir, new_state)
        raise
    return info


def _format(java: list[str], properties: Path, data_dir: Path) -> None:
    """Format the KRaft storage of a new data directory (a single-voter quorum)."""
    cmd = [
        *java, "kafka.tools.StorageTool", "format", "--standalone",
        # One token: a base64url id starts with "-" once in 64 and would read as an option.
        f"--cluster-id={_cluster_id()}", "-c", str(properties),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=data_dir, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = _tail_text(done.stdout + done.stderr, _LOG_TAIL_LINES)
        raise BrokerError(
            f"formatting the KRaft storage in {data_dir / 'kraft-logs'} failed "
            f"(exit {done.returncode}); delete that directory to start afresh. Output:\n{tail}"
        )


def _spawn_detached(cmd: list[str], out: Path) -> int:
    """Launch the broker detached (:func:`local_processes.spawn_detached`); its pid."""
    pid = local_processes.spawn_detached(cmd, out, "lockgate-broker")
    if pid is None:
        raise BrokerError(f"could not launch the Kafka broker: see {out}")
    return pid


def _wait_ready(info: BrokerInfo, timeout: float) -> None:
    """Wait until the broker and its group coordinator answer, or raise BrokerError.

    Asking for a consumer group's coordinator makes a new broker create and load
    ``__consumer_offsets`` now, in about 0.2 s.  Left to the first consumer, the
    same takes some 3 s of librdkafka's retry back-off.
    """
    from confluent_kafka import KafkaException
    from lockgate.engine import kafka_clients

    deadline = time.monotonic() + timeout
    admin = None
    while True:
        if not _alive(info.pid):
            raise BrokerError(
                f"the Kafka broker (pid {info.pid}) exited while starting; "
                f"see {info.log_file}. Its log ends with:\n{_log_tail(info)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"the Kafka broker (pid {info.pid}) did not answer on {info.bootstrap} within "
                f"{timeout:.0f} s; see {info.log_file}. Its log ends with:\n{_log_tail(info)}"
            )
        if _accepts(info.port):
            if admin is None:
                admin = kafka_clients.admin({"bootstrap.servers": info.bootstrap})
            wait = min(2.0, max(remaining, 0.1))
            try:
                admin.list_topics(timeout=wait)
                admin.describe_consumer_groups([_WARMUP_GROUP], request_timeout=wait)[_WARMUP_GROUP].result()
                return
            except KafkaException:
                pass
        time.sleep(0.05)


# --- stopping ------------------------------------------------------------------


def _terminate(pid: int) -> bool:
    """Stop ``pid``; return True if it exited cleanly on SIGTERM."""
    clean = local_processes.terminate(pid, _STOP_TIMEOUT_S)
    if clean is None:
        raise BrokerError(f"the Kafka broker (pid {pid}) survived SIGKILL")
    return clean


# --- processes -----------------------------------------------------------------


_alive = local_processes.alive


def _is_broker(pid: object, data_dir: Path) -> bool:
    """Whether ``pid`` is alive and is the broker of ``data_dir`` (not a reused pid)."""
    if not isinstance(pid, int) or not _alive(pid):
        return False
    args = local_processes.cmdline(pid)
    return b"kafka.Kafka" in args and os.fsencode(data_dir / "server.properties") in args


_accepts, _bindable = local_processes.accepts, local_processes.bindable


def _free_port_except(port: int) -> int:
    while (candidate := free_port()) == port:
        pass
    return candidate


# --- class-data sharing ---------------------------------------------------------


def _archive_path(java: str, cp: str) -> Path:
    """The CDS archive for this JDK build and classpath (a JVM rejects any other)."""
    real = Path(java).resolve()
    key = f"{real}:{real.stat().st_mtime_ns}:{cp}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return _home() / f"kafka-{KAFKA_VERSION}-{digest}.jsa"


def _use_archive(archive: Path) -> list[str]:
    """JVM options that map the CDS archive, if there is one."""
    return [f"-XX:SharedArchiveFile={archive}"] if archive.exists() else []


def _adopt_archive(pending: Path) -> None:
    """Keep the archive a cleanly stopped JVM dumped at exit, if it did."""
    if pending.exists() and pending.stat().st_size > 0:
        os.replace(pending, pending.with_name(pending.name.rsplit(".", 2)[0]))
    else:
        pending.unlink(missing_ok=True)


# --- files ---------------------------------------------------------------------


def _home() -> Path:
    return Path.home() / ".lockgate"


def _resolve_dir(data_dir: Path | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser().resolve()


def _locked(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Serialise start and stop on one data directory across processes."""
    return local_processes.locked(data_dir / "broker.lock")


def _read_state(data_dir: Path) -> dict[str, object] | None:
    return local_processes.read_state(data_dir / "broker.json")


def _write_state(data_dir: Path, state: dict[str, object]) -> None:
    local_processes.write_state(data_dir / "broker.json", state)


_write_atomic = local_processes.write_atomic


def _read_classpath(cache: Path) -> str | None:
    try:
        jars = cache.read_text().strip()
    except FileNotFoundError:
        return None
    if jars and all(Path(jar).is_file() for jar in jars.split(os.pathsep)):
        return jars
    return None


def _info(data_dir: Path, state: dict[str, object]) -> BrokerInfo:
    port, pid, controller_port = state["port"], state["pid"], state["controller_port"]
    assert isinstance(port, int) and isinstance(pid, int) and isinstance(controller_port, int)
    return BrokerInfo(
        bootstrap=f"{_HOST}:{port}",
        port=port,
        pid=pid,
        data_dir=data_dir,
        log_file=data_dir / "logs" / "server.log",
        controller_port=controller_port,
    )


def _log_tail(info: BrokerInfo) -> str:
    parts = []
    for path in (info.log_file, info.data_dir / "logs" / "broker.out"):
        with contextlib.suppress(FileNotFoundError):
            text = _tail_text(path.read_text(errors="replace"), _LOG_TAIL_LINES)
            if text:
                parts.append(f"--- {path} ---\n{text}")
    return "\n".join(parts) or "(no log output)"


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _cluster_id() -> str:
    """A Kafka ``Uuid``: 16 random bytes, base64url without padding (22 chars)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": _NODE_ID,
        "listeners": f"PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.quorum.bootstrap.servers": f"{_HOST}:{controller_port}",
        "log.dirs": data_dir / "kraft-logs",
        "num.partitions": 1,
        # One node: internal topics with one replica, few partitions (a faster
        # first coordinator load), and no wait for more group members.
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 4,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
    }
    lines = [f"# Written by lockgate.engine.broker (Apache Kafka {KAFKA_VERSION}); rewritten on every start."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _log4j_properties(log_file: Path) -> str:
    return f"""\
# Written by lockgate.engine.broker; rewritten on every start.
status = warn
# The JVM stops the broker on SIGTERM; log4j's own hook would only race it.
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""
