"""The progress display of a real run: drawn in a terminal, not when piped, and moving while nothing arrives."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


RUN_FILE = textwrap.dedent(
    """
    import os, sys
    import polars as pl
    import lockgate as lg

    pipe = lg.Pipeline(os.environ["T_NAME"], brokers=os.environ["T_BROKERS"], state=os.environ["T_STATE"],
                       batch=lg.BatchPolicy(max_records=2_000, max_wait="20ms"))
    pipe.source(os.environ["T_SOURCE"], format=lg.JSON(schema={"n": pl.Int64})).to_table("numbers")
    summary = pipe.run(until="caught_up")
    print("ran", summary.records, "isatty", sys.stderr.isatty(), flush=True)
    """
)


def _run_in(tmp_path, brokers, source, name, *, terminal: bool) -> tuple[str, str]:
    """Run RUN_FILE with stderr on a pseudo-terminal (120 columns) or a pipe; (stdout, stderr)."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    path = tmp_path / f"{name}.py"
    path.write_text(RUN_FILE)
    env = {**os.environ, "T_NAME": name, "T_BROKERS": brokers, "T_STATE": str(tmp_path / name), "T_SOURCE": source, "TERM": "xterm"}
    if not terminal:
        done = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, str(path)], env=env, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(30)
    os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err
    return out, err


@pytest.mark.kafka
def test_a_run_in_a_terminal_shows_the_bar_and_a_piped_one_shows_none(brokers, make_topic, tmp_path, unique):
    from tests.conftest import json_values, produce

    source = make_topic(f"progress-in-{unique}", partitions=2)
    produce(brokers, source, json_values([{"n": i} for i in range(20_000)]))

    out, err = _run_in(tmp_path, brokers, source, f"progress-tty-{unique}", terminal=True)
    assert "ran 20000 isatty True" in out
    frames = [f for f in err.replace("\n", "\r").split("\r") if f.strip()]
    assert frames, "no bar on the terminal"
    last = frames[-1]
    assert f"progress-tty-{unique}: 100%|" in last and "20.0k/20.0k" in last and "records/s" in last, err
    assert "lag 0, " in last and " batches, stopped (caught_up)]" in last, err

    out, err = _run_in(tmp_path, brokers, source, f"progress-pipe-{unique}", terminal=False)
    assert "ran 20000 isatty False" in out
    assert "records/s" not in err and "\r" not in err and "%|" not in err, err


@pytest.mark.kafka
def test_the_display_is_called_after_empty_polls_too_so_its_clock_moves_while_nothing_arrives(brokers, make_topic, tmp_path, unique):
    import threading

    import polars as pl
    from lockgate.engine.runner import Runner

    import lockgate as lg

    source = make_topic(f"quiet-{unique}", partitions=1)
    pipe = lg.Pipeline(f"quiet-{unique}", brokers=brokers, state=str(tmp_path / "state"), batch=lg.BatchPolicy(max_wait="50ms"))
    pipe.source(source, format=lg.JSON(schema={"n": pl.Int64})).to_table("numbers")
    calls: list[dict] = []
    summary = Runner(pipe.config, pipe.plan(), pipe._metrics, threading.Event()).run(timeout=3.0, on_batch=calls.append)
    assert summary.records == 0 and summary.stopped_because == "timeout"
    assert len(calls) >= 3, f"{len(calls)} display updates in 3 s of empty polls"
