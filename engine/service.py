"""``lockgate run FILE``: run the pipeline a Python file defines, as a service.

The file is executed with ``__name__ == "__lockgate__"`` (so a
``if __name__ == "__main__": pipe.run()`` block does not run), then the
``lg.Pipeline`` it defined runs until SIGTERM or SIGINT, which let the open
micro-batch finish and commit before the process exits with code 0.
"""

from __future__ import annotations

import logging
import runpy
import signal
from pathlib import Path
from types import FrameType

from lockgate.engine.pipeline import Pipeline, defined_pipelines
from lockgate.engine.runner import RunSummary, Until
from lockgate.operators.errors import PipelineDefinitionError

__all__ = ["load_pipeline", "serve"]

log = logging.getLogger("lockgate.service")


def load_pipeline(path: str | Path, name: str | None = None) -> Pipeline:
    """Execute ``path`` and return the pipeline it defines (the one named ``name`` if several)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineDefinitionError(f"lockgate run: no file {str(path)!r}")
    if path.suffix != ".py":
        raise PipelineDefinitionError(f"lockgate run: {path.name} is not a Python file (.py)")
    before = {id(p) for p in defined_pipelines()}
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
