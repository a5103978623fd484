"""A live progress line for ``pipe.run()`` in a notebook: records, batches, lag, late, dead letters.

Outside a Jupyter kernel nothing is shown (a service logs instead).

Examples
--------
>>> from lockgate.engine.progress import render
>>> html = render("clicks", {"records_in": {"t": 1200}, "batches": 3, "lag": {("t", 0): 800}, "late": {}, "dlq": {}})
>>> "1,200 records" in html and 'value="1200" max="2000"' in html
True
"""

from __future__ import annotations

import html as _html
import sys
import time
from typing import Any

__all__ = ["NotebookProgress", "in_notebook", "render"]


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


def _total(value: Any) -> int:
    return int(sum(value.values())) if isinstance(value, dict) else int(value or 0)


def render(pipeline: str, snapshot: dict[str, Any], *, done: str | None = None) -> str:
    """The progress line as HTML: a bar of records read against records read + lag."""
    records, lag = _total(snapshot.get("records_in", {})), _total(snapshot.get("lag", {}))
    batches, late, dead = _total(snapshot.get("batches", 0)), _total(snapshot.get("late", {})), _total(snapshot.get("dlq", {}))
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
