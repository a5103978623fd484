"""``lockgate run FILE``: run the pipeline a Python file or a notebook defines, as a service.

A ``.py`` file is executed with ``__name__ == "__lockgate__"`` (so a
``if __name__ == "__main__": pipe.run()`` block does not run).  A notebook's code
cells are executed in order, the same way, except cells tagged ``skip-in-service``
(where a notebook runs, previews or plots) and IPython lines (``%magic``, ``!shell``).
Then the ``lg.Pipeline`` it defined runs until SIGTERM or SIGINT, which let the open
micro-batch finish and commit before the process exits with code 0.
"""

from __future__ import annotations

import json
import logging
import runpy
import signal
from pathlib import Path
from types import FrameType

from lockgate.engine.pipeline import Pipeline, defined_pipelines
from lockgate.engine.runner import RunSummary, Until
from lockgate.errors import PipelineDefinitionError

__all__ = ["load_pipeline", "serve"]

log = logging.getLogger("lockgate.service")


def load_pipeline(path: str | Path, name: str | None = None) -> Pipeline:
    """Execute ``path`` and return the pipeline it defines (the one named ``name`` if several)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineDefinitionError(f"lockgate run: no file {str(path)!r}")
    if path.suffix not in (".py", ".ipynb"):
        raise PipelineDefinitionError(f"lockgate run: {path.name} is neither a Python file (.py) nor a notebook (.ipynb)")
    before = {id(p) for p in defined_pipelines()}
    if path.suffix == ".ipynb":
        namespace: dict = {"__name__": "__lockgate__", "__file__": str(path)}
        exec(compile(notebook_source(path), str(path), "exec"), namespace)  # noqa: S102 - running the user's pipeline is the point
    else:
        namespace = runpy.run_path(str(path), run_name="__lockgate__")
    found = [p for p in namespace.values() if isinstance(p, Pipeline)]
    found += [p for p in defined_pipelines() if id(p) not in before and all(p is not q for q in found)]
    if name is not None:
        found = [p for p in found if p.name == name]
    if not found:
        raise PipelineDefinitionError(
            f"lockgate run: {path.name} defines no lg.Pipeline" + (f" named {name!r}" if name else "")
        )
    if len(found) > 1:
        raise PipelineDefinitionError(
            f"lockgate run: {path.name} defines {len(found)} pipelines {[p.name for p in found]}; choose one with --pipeline NAME"
        )
    return found[0]


SKIP_TAG = "skip-in-service"


def notebook_source(path: str | Path) -> str:
    """The Python source of a notebook as a service runs it: code cells in order, minus skipped ones.

    Cells tagged ``skip-in-service`` are left out, and so are IPython lines
    (``%magic``, ``%%cell magic``, ``!shell``), which are not Python.
    """
    path = Path(path)
    try:
        nb = json.loads(path.read_text())
        cells = nb["cells"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineDefinitionError(f"lockgate run: {path.name} is not a Jupyter notebook (nbformat 4): {exc}") from None
    parts = []
    for number, cell in enumerate(cells, 1):
        if cell.get("cell_type") != "code" or SKIP_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        text = cell.get("source", "")
        text = "".join(text) if isinstance(text, list) else text
        if text.lstrip().startswith("%%"):
            continue  # a cell magic: the whole cell is not Python
        lines = [_not_ipython(line) for line in text.splitlines()]
        parts.append(f"# cell {number}\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _not_ipython(line: str) -> str:
    stripped = line.lstrip()
    if stripped.startswith(("%", "!")):
        return f"{line[: len(line) - len(stripped)]}pass  # {stripped}"
    return line


def serve(pipe: Pipeline, until: Until = None, max_batches: int | None = None) -> RunSummary:
    """Run ``pipe`` until SIGTERM/SIGINT (or ``until``/``max_batches``); the open batch finishes first."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing the open micro-batch, then stopping", signal.Signals(signum).name)
        pipe.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return pipe.run(until, max_batches=max_batches)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
