"""The live progress of ``pipe.run()``: records, rate, lag, batches, late, dead letters.

In a Jupyter kernel, one HTML line updated in place (:class:`NotebookProgress`); in a
terminal (stderr is a TTY), a tqdm bar on stderr (:class:`TerminalProgress`), with log
lines printed above it; anywhere else (a service, CI, a pipe) nothing: plain logs.
:func:`progress_display` makes that choice.

Examples
--------
>>> from lockgate.engine.progress import render
>>> snapshot = {"records_in": {"t": 1200}, "batches": 3, "lag": {("t", 0): 800}, "late": {}, "dlq": {}}
>>> html = render("clicks", snapshot)
>>> "1,200 records" in html and 'value="1200" max="2000"' in html
True
>>> import io
>>> from lockgate.engine.progress import TerminalProgress, progress_display
>>> progress_display("clicks", None, stream=io.StringIO()) is None   # not a terminal: no bar
True
>>> out = io.StringIO()
>>> bar = TerminalProgress("clicks", out, ncols=100)
>>> bar(snapshot)
>>> bar.close({**snapshot, "dlq": {"clicks-dlq": 2}}, "caught up")
>>> print(out.getvalue().split("\\r")[-1].strip())
clicks:  60%|...| 1.20k/2.00k [00:00, ... records/s, lag 800, 3 batches, 2 dead letters, caught up]
"""

from __future__ import annotations

import contextlib
import html as _html
import logging
import os
import sys
import time
from typing import IO, Any, Protocol

__all__ = ["NotebookProgress", "Progress", "TerminalProgress", "in_notebook", "is_terminal", "progress_display", "render"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where HTML displays update in place).

    A kernel has imported IPython long before any cell runs; a script has not, and
    importing it here only to learn that would cost every ``run()`` most of a second.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def is_terminal(stream: IO[str]) -> bool:
    """True when ``stream`` is a terminal that redraws a line in place (a TTY, and ``TERM`` is not ``dumb``)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return tty and os.environ.get("TERM") != "dumb"


class Progress(Protocol):
    """What ``run()`` calls: once per committed batch with ``pipe.metrics()``, and once at the end."""

    def __call__(self, snapshot: dict[str, Any]) -> None: ...

    def close(self, snapshot: dict[str, Any], done: str) -> None: ...


def progress_display(pipeline: str, progress: bool | None, *, stream: IO[str] | None = None) -> Progress | None:
    """The progress display of a run: HTML in a notebook, a bar on a terminal, else none.

    ``progress=None`` (``run()``'s default) decides by where it runs: a Jupyter kernel
    gets its HTML line; otherwise ``stream`` (default ``sys.stderr``) gets a bar only
    when it is a terminal, so services, CI and piped output stay plain logs.
    ``True`` shows one anyway (a bar outside a notebook), ``False`` never.
    """
    if progress is False:
        return None
    if in_notebook():
        return NotebookProgress(pipeline)
    stream = sys.stderr if stream is None else stream
    if progress or is_terminal(stream):
        return TerminalProgress(pipeline, stream)
    return None


def _total(value: Any) -> int:
    return int(sum(value.values())) if isinstance(value, dict) else int(value or 0)


def _counts(snapshot: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """Records read, lag, batches, late, dead letters."""
    return (
        _total(snapshot.get("records_in", {})), _total(snapshot.get("lag", {})), _total(snapshot.get("batches", 0)),
        _total(snapshot.get("late", {})), _total(snapshot.get("dlq", {})),
    )


def render(pipeline: str, snapshot: dict[str, Any], *, done: str | None = None) -> str:
    """The progress line as HTML: a bar of records read against records read + lag."""
    records, lag, batches, late, dead = _counts(snapshot)
    state = f" · {_html.escape(done)}" if done else ""
    return (
        f'<div style="font-family: monospace"><b>{_html.escape(pipeline)}</b> '
        f'<progress value="{records}" max="{max(records + lag, 1)}" style="width: 14em; vertical-align: middle"></progress> '
        f"{records:,} records · {batches:,} batches · lag {lag:,} · late {late:,} · dead letters {dead:,}{state}</div>"
    )


class NotebookProgress:
    """Updates one HTML display in place, at most every ``every`` seconds."""

    def __init__(self, pipeline: str, every: float = 0.25) -> None:
        from IPython.display import HTML, display

        self.pipeline = pipeline
        self.every = every
        self._html = HTML
        self._last = 0.0
        self._handle = display(HTML(render(pipeline, {}, done="starting")), display_id=True)

    def __call__(self, snapshot: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._handle.update(self._html(render(self.pipeline, snapshot)))

    def close(self, snapshot: dict[str, Any], done: str) -> None:
        """The final numbers and why the run stopped."""
        self._handle.update(self._html(render(self.pipeline, snapshot, done=done)))


def _console_handlers() -> bool:
    return any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr) for h in logging.root.handlers)


class TerminalProgress:
    """A tqdm bar on a terminal: records read of records read + lag, the rate, then lag, batches, late, dead letters.

    While it is shown, the root logger's console handlers print through ``tqdm.write``
    (above the bar, which is drawn again below them).
    """

    def __init__(self, pipeline: str, stream: IO[str], *, every: float = 0.25, ncols: int | None = None) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._logs = contextlib.ExitStack()
        if _console_handlers():
            self._logs.enter_context(logging_redirect_tqdm())
        self._bar = tqdm(
            desc=pipeline, total=None, postfix="starting", file=stream, unit=" records", unit_scale=True, mininterval=every, ncols=ncols,
            dynamic_ncols=ncols is None, leave=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
        )

    def _show(self, snapshot: dict[str, Any], done: str | None = None) -> None:
        records, lag, batches, late, dead = _counts(snapshot)
        parts = [f"lag {lag:,}", f"{batches:,} batches"] + [f"{n:,} {what}" for n, what in ((late, "late"), (dead, "dead letters")) if n]
        self._bar.total = max(records + lag, 1)
        self._bar.set_postfix_str(", ".join(parts + ([done] if done else [])), refresh=False)
        self._bar.update(records - self._bar.n)  # draws at most every `every` seconds

    def __call__(self, snapshot: dict[str, Any]) -> None:
        self._show(snapshot)

    def close(self, snapshot: dict[str, Any], done: str) -> None:
        """The final numbers and why the run stopped; the bar stays on the screen.

        A run that failed before it read a record leaves no bar: its error speaks alone.
        """
        try:
            self._show(snapshot, done)
            self._bar.leave = not (done == "failed" and self._bar.n == 0)
            self._bar.close()
        finally:
            self._logs.close()
