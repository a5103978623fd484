"""Detached local services (the Kafka broker, the schema registry): launch, watch, stop, and their state files.

Each service lives in a data directory with a JSON state file (pid, ports) and a
lock that serialises start and stop across processes; its JVM is launched
detached, so it outlives the process that started it.

>>> import tempfile
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as d:
...     write_state(Path(d) / "svc.json", {"pid": 1, "port": 9})
...     read_state(Path(d) / "svc.json")
{'pid': 1, 'port': 9}
>>> alive(2**22 + 7)   # no such process
False
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"


def spawn_detached(cmd: list[str], out: Path, name: str) -> int | None:
    """Run ``cmd`` in a new session, orphaned to init, its output appended to ``out``; its pid (None if it could not start).

    A shell forks the process into the background and exits at once, so the
    service is nobody's child: no zombie when it exits, no ``Popen`` to keep alive,
    and it outlives the calling process.
    """
    script = 'out=$1; shift; exec "$@" </dev/null >>"$out" 2>&1 &\necho $!'
    done = subprocess.run(
        ["/bin/sh", "-c", script, name, str(out), *cmd],
        cwd=out.parent,  # where a crashing JVM writes hs_err_pid*.log
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=False,
    )
    try:
        return int(done.stdout.strip())
    except ValueError:
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, unreaped by a careless init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may hold spaces.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[bytes]:
    """The arguments ``pid`` runs with ([] when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to exit; True if it did."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, timeout: float) -> bool | None:
    """SIGTERM, up to ``timeout`` s, then SIGKILL: True if it exited on SIGTERM, False on SIGKILL, None if it survived both."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_exit(pid, timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False if wait_exit(pid, 5.0) else None


def accepts(port: int) -> bool:
    """Whether something listens on ``port`` of 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def bindable(port: int) -> bool:
    """Whether ``port`` of 127.0.0.1 is free to listen on (TIME_WAIT leftovers do not count: JVMs bind with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (another process may take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Serialise start and stop of one service across processes."""
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_state(path: Path) -> dict[str, object] | None:
    """A service's state file, or None when it is missing or unreadable."""
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def write_state(path: Path, state: dict[str, object]) -> None:
    """Write a service's state file atomically."""
    write_atomic(path, json.dumps(state, indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' when it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
