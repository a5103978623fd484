"""The local schema registry that lockgate's Avro and Protobuf tests and examples run against.

Apicurio Registry :data:`REGISTRY_VERSION` (Apache 2.0), which serves the Confluent
Schema Registry API under ``/apis/ccompat/v7``, so confluent-kafka's
``SchemaRegistryClient`` and every Confluent serializer talk to it unchanged.  Its
application archive comes from Maven Central through ``mvn`` (cached in ``~/.m2``,
unpacked once into ``~/.lockgate/apicurio-registry-<version>``) and runs on the
machine's OpenJDK 17 (Apicurio 3.1 and later need Java 21).  Like the broker it is
launched detached and owns one data directory (``~/.lockgate/registry`` unless
``LOCKGATE_REGISTRY_DIR`` says otherwise)::

    registry.json        pid and port (state file)
    db/                  the registry's H2 database: schemas survive a restart
    logs/registry.out    the JVM's output

Examples
--------
Starting the registry takes several seconds, so this example only shows what does
not start one::

    start(port=free_port())   # -> RegistryInfo(url='http://127.0.0.1:…', …)
    status()                  # -> the same RegistryInfo, or None
    stop()                    # -> True if a registry was running

>>> from lockgate.engine.registry import REGISTRY_VERSION, ccompat_url
>>> REGISTRY_VERSION
'3.0.9'
>>> ccompat_url("http://127.0.0.1:8081")
'http://127.0.0.1:8081/apis/ccompat/v7'
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from lockgate.engine import local_processes
from lockgate.engine.local_processes import free_port

from lockgate.errors import RegistryError

__all__ = ["DEFAULT_PORT", "REGISTRY_VERSION", "RegistryInfo", "ccompat_url", "default_data_dir", "free_port", "install", "start", "status", "stop"]

REGISTRY_VERSION = "3.0.9"
"""The Apicurio Registry version the launcher runs (the newest 3.0.x: 3.1 needs Java 21)."""

DEFAULT_PORT = 8081
"""The registry's port when none is given and none was used before (the Confluent Schema Registry's)."""

_ARTIFACT = f"io.apicurio:apicurio-registry-app:{REGISTRY_VERSION}:tar.gz:all"
_RUNNER = f"apicurio-registry-app-{REGISTRY_VERSION}-runner.jar"
_START_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 20.0
_JVM_OPTIONS = ("-Xmx384m", "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")


@dataclasses.dataclass(frozen=True)
class RegistryInfo:
    """A running local schema registry.

    ``url`` is what ``lg.Avro(registry=...)`` and confluent-kafka's
    ``SchemaRegistryClient({"url": ...})`` take (the Confluent-compatible API).

    >>> RegistryInfo("http://127.0.0.1:8081/apis/ccompat/v7", 8081, 4242, Path("/tmp/r"), Path("/tmp/r/logs/registry.out")).port
    8081
    """

    url: str
    port: int
    pid: int
    data_dir: Path
    log_file: Path


def ccompat_url(base: str) -> str:
    """The Confluent-compatible API of an Apicurio Registry at ``base``."""
    return base.rstrip("/") + "/apis/ccompat/v7"


def default_data_dir() -> Path:
    """``$LOCKGATE_REGISTRY_DIR`` if set, else ``~/.lockgate/registry``.

    >>> default_data_dir().is_absolute()
    True
    """
    env = os.environ.get("LOCKGATE_REGISTRY_DIR")
    return Path(env).expanduser().resolve() if env else Path.home() / ".lockgate" / "registry"


def install() -> Path:
    """The registry's runner jar, fetched from Maven Central by ``mvn`` and unpacked on first use."""
    home = Path.home() / ".lockgate" / f"apicurio-registry-{REGISTRY_VERSION}"
    runner = home / _RUNNER
    if runner.is_file():
        return runner
    if shutil.which("mvn") is None:
        raise RegistryError("lockgate registry needs `mvn` (Apache Maven) on PATH to fetch Apicurio Registry: install it with `apt-get install maven`")
    download = home.with_name(home.name + ".download")
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    done = subprocess.run(
        ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={_ARTIFACT}", f"-DoutputDirectory={download}"],
        capture_output=True, text=True, check=False, cwd=download,
    )
    archives = list(download.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise RegistryError(f"mvn could not fetch {_ARTIFACT} from Maven Central: {(done.stdout + done.stderr)[-2000:]}")
    unpacked = home.with_name(home.name + ".unpack")
    shutil.rmtree(unpacked, ignore_errors=True)
    with tarfile.open(archives[0]) as tar:
        tar.extractall(unpacked, filter="data")
    shutil.rmtree(download, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    os.replace(unpacked, home)
    if not runner.is_file():
        raise RegistryError(f"{_ARTIFACT} has no {_RUNNER}; its files are in {home}")
    return runner


def status(data_dir: Path | None = None) -> RegistryInfo | None:
    """The registry running from ``data_dir``, or None (it may still be starting).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     status(Path(d)) is None
    True
    """
    data_dir = _resolve_dir(data_dir)
    state = local_processes.read_state(data_dir / "registry.json")
    if state is None or not _is_registry(state.get("pid"), data_dir):
        return None
    return _info(data_dir, state)


def start(data_dir: Path | None = None, port: int | None = None, *, timeout: float = _START_TIMEOUT_S) -> RegistryInfo:
    """Start the local registry, or return the one already running from ``data_dir``.

    Idempotent, like :func:`lockgate.engine.broker.start`; waits until the
    Confluent-compatible API answers.  Raises :class:`RegistryError` when ``java``
    or ``mvn`` is missing, the port is taken, or the registry exits or does not
    answer in time (with the tail of its log).
    """
    data_dir = _resolve_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with local_processes.locked(data_dir / "registry.lock"):
        state = local_processes.read_state(data_dir / "registry.json") or {}
        if _is_registry(state.get("pid"), data_dir):
            info = _info(data_dir, state)
            if port is not None and port != info.port:
                raise RegistryError(
                    f"a lockgate registry already runs from {data_dir} on port {info.port} (pid {info.pid}), not on the requested "
                    f"port {port}: use {info.url!r}, or stop it first (`lockgate registry stop`)"
                )
            _wait_ready(info, timeout)
            return info
        return _launch(data_dir, state, port, timeout)


def stop(data_dir: Path | None = None) -> bool:
    """Stop the registry running from ``data_dir``; True if one was running.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     stop(Path(d))
    False
    """
    data_dir = _resolve_dir(data_dir)
    if not data_dir.is_dir():
        return False
    with local_processes.locked(data_dir / "registry.lock"):
        state = local_processes.read_state(data_dir / "registry.json")
        if state is None:
            return False
        pid = state.get("pid")
        running = _is_registry(pid, data_dir)
        if running:
            assert isinstance(pid, int)
            if local_processes.terminate(pid, _STOP_TIMEOUT_S) is None:
                raise RegistryError(f"the schema registry (pid {pid}) survived SIGKILL")
        state.pop("pid", None)
        local_processes.write_state(data_dir / "registry.json", state)
        return running


def _launch(data_dir: Path, state: dict[str, object], port: int | None, timeout: float) -> RegistryInfo:
    java = shutil.which("java")
    if java is None:
        raise RegistryError("lockgate registry needs `java` (OpenJDK 17+) on PATH: install it with `apt-get install openjdk-17-jre-headless`")
    runner = install()
    recorded = state.get("port")
    if port is None:
        port = recorded if isinstance(recorded, int) else DEFAULT_PORT
    if not local_processes.bindable(port):
        raise RegistryError(
            f"port {port} on {local_processes.HOST} is already in use by another process: start the lockgate registry on another "
            "port (`lockgate registry start --port N`)"
        )
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    (data_dir / "db").mkdir(exist_ok=True)
    out = logs / "registry.out"
    cmd = [
        java, *_JVM_OPTIONS,
        f"-Dquarkus.http.host={local_processes.HOST}", f"-Dquarkus.http.port={port}",
        f"-Dapicurio.datasource.url=jdbc:h2:file:{data_dir / 'db' / 'registry'}",
        f"-Dlockgate.registry.dir={data_dir}",  # how status() knows its own process
        "-jar", str(runner),
    ]
    pid = local_processes.spawn_detached(cmd, out, "lockgate-registry")
    if pid is None:
        raise RegistryError(f"could not launch the schema registry: see {out}")
    new_state: dict[str, object] = {"pid": pid, "port": port, "version": REGISTRY_VERSION}
    local_processes.write_state(data_dir / "registry.json", new_state)
    info = _info(data_dir, new_state)
    try:
        _wait_ready(info, timeout)
    except RegistryError:
        if local_processes.alive(pid):
            local_processes.terminate(pid, _STOP_TIMEOUT_S)
        del new_state["pid"]
        local_processes.write_state(data_dir / "registry.json", new_state)
        raise
    return info


def _wait_ready(info: RegistryInfo, timeout: float) -> None:
    """Wait until the Confluent-compatible API lists subjects, or raise RegistryError."""
    deadline = time.monotonic() + timeout
    while True:
        if not local_processes.alive(info.pid):
            raise RegistryError(
                f"the schema registry (pid {info.pid}) exited while starting; see {info.log_file}. Its log ends with:\n"
                f"{local_processes.log_tail(info.log_file)}"
            )
        if time.monotonic() > deadline:
            raise RegistryError(
                f"the schema registry (pid {info.pid}) did not answer on {info.url} within {timeout:.0f} s; see {info.log_file}. "
                f"Its log ends with:\n{local_processes.log_tail(info.log_file)}"
            )
        if local_processes.accepts(info.port):
            try:
                with urllib.request.urlopen(f"{info.url}/subjects", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.1)


def _is_registry(pid: object, data_dir: Path) -> bool:
    """Whether ``pid`` is alive and is the registry of ``data_dir`` (not a reused pid)."""
    if not isinstance(pid, int) or not local_processes.alive(pid):
        return False
    return os.fsencode(f"-Dlockgate.registry.dir={data_dir}") in local_processes.cmdline(pid)


def _info(data_dir: Path, state: dict[str, object]) -> RegistryInfo:
    port, pid = state["port"], state["pid"]
    assert isinstance(port, int) and isinstance(pid, int)
    return RegistryInfo(ccompat_url(f"http://{local_processes.HOST}:{port}"), port, pid, data_dir, data_dir / "logs" / "registry.out")


def _resolve_dir(data_dir: Path | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser().resolve()
