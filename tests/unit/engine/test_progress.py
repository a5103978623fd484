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


