"""The notebook progress line: shown in a Jupyter kernel only, at no cost elsewhere."""

from __future__ import annotations

import subprocess
import sys


def test_a_script_learns_it_is_not_in_a_notebook_without_importing_ipython():
    code = "import sys; from lockgate.engine.progress import in_notebook; print(in_notebook(), 'IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]  # IPython is installed here (the notebook tests use it), yet not imported


def test_an_ipython_shell_outside_a_kernel_is_not_a_notebook():
    code = (
        "import sys; from IPython.testing.globalipapp import start_ipython; start_ipython(); "
        "from lockgate.engine.progress import in_notebook; print(in_notebook(), 'IPython' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split()[-2:] == ["False", "True"]


# --- the terminal bar -------------------------------------------------------------------------

import io  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402

from lockgate.engine.progress import TerminalProgress, is_terminal, progress_display  # noqa: E402


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


SNAPSHOT = {"records_in": {"t": 12_000}, "batches": 3, "lag": {("t", 0): 30_000, ("t", 1): 8_000}, "late": {}, "dlq": {}}


def _frames(out: io.StringIO) -> list[str]:
    return [f.strip() for f in out.getvalue().replace("\n", "\r").split("\r") if f.strip()]


def test_a_bar_is_drawn_only_when_stderr_is_a_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    assert is_terminal(_Tty()) and not is_terminal(io.StringIO())
    assert isinstance(progress_display("p", None, stream=_Tty()), TerminalProgress)
    assert progress_display("p", None, stream=io.StringIO()) is None, "piped or captured (a service, CI): plain logs"
    assert progress_display("p", False, stream=_Tty()) is None, "progress=False: never"
    assert isinstance(progress_display("p", True, stream=io.StringIO()), TerminalProgress), "progress=True: a bar anyway"
    monkeypatch.setenv("TERM", "dumb")
    assert progress_display("p", None, stream=_Tty()) is None, "a terminal that cannot redraw a line"
    closed = _Tty()
    closed.close()
    assert not is_terminal(closed)


def test_the_bar_shows_records_rate_lag_and_batches_and_ends_with_why_it_stopped():
    out = io.StringIO()
    bar = TerminalProgress("clicks", out, every=0, ncols=120)  # every=0: draw each update (else at most every 0.25 s)
    bar(SNAPSHOT)
    bar.close({**SNAPSHOT, "records_in": {"t": 50_000}, "batches": 9, "lag": {}, "dlq": {"clicks-dlq": 12}, "late": {"w": 2}}, "stopped (caught_up)")
    first, last = _frames(out)[1], _frames(out)[-1]
    assert first.startswith("clicks:  24%|") and "12.0k/50.0k" in first and "records/s" in first and "lag 38,000, 3 batches" in first
    assert last.startswith("clicks: 100%|") and "50.0k/50.0k" in last and "lag 0, 9 batches, 2 late, 12 dead letters, stopped (caught_up)]" in last
    assert out.getvalue().endswith("\n"), "the final line stays on the screen"


def test_a_run_that_fails_before_reading_leaves_no_bar_behind():
    out = io.StringIO()
    TerminalProgress("clicks", out, ncols=80).close({}, "failed")
    *_, drawn, cleared, after = out.getvalue().split("\r")
    assert drawn.startswith("clicks:") and cleared.strip() == "" and after == "", repr(out.getvalue())


def test_log_lines_print_above_the_bar_and_the_handlers_come_back():
    out = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    handler.stream = __import__("sys").stderr  # a console handler, as `lockgate` sets up
    before = list(root.handlers)
    root.addHandler(handler)
    try:
        bar = TerminalProgress("clicks", out, ncols=80)
        assert handler not in root.handlers, "console logging goes through tqdm.write while the bar is shown"
        bar.close(SNAPSHOT, "stopped")
        assert handler in root.handlers
    finally:
        root.removeHandler(handler)
    assert root.handlers == before


# --- a real run in a pseudo-terminal, and piped -----------------------------------------------

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
    import subprocess
    import sys
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
