"""Fault injection for the crash tests: ``LOCKGATE_CRASH_AT=POINT:N[,POINT:N...]``.

The process SIGKILLs itself the N-th time it reaches POINT.  Off by default; when
off, a crash point is one dictionary lookup.

Examples
--------
>>> from lockgate.engine import faults
>>> faults.parse("after_poll:3,after_commit:1")
{'after_poll': 3, 'after_commit': 1}
>>> faults.crash_point("after_poll")  # not armed in this process: returns at once
"""

from __future__ import annotations

import os
import signal

from lockgate.errors import PipelineDefinitionError

__all__ = ["POINTS", "crash_point", "parse"]

#: in the order an epoch reaches them: after_prepare is its prepare record built (nothing of it in Kafka yet),
#: after_produce its transaction filled (not committed), after_commit committed (nothing in LanceDB yet),
#: before_mark its rows in LanceDB (not marked)
POINTS = ("after_poll", "after_decode", "after_prepare", "after_produce", "after_commit", "before_mark", "during_compaction")


def parse(text: str) -> dict[str, int]:
    """Read a ``POINT:N,...`` specification."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        point, _, count = part.partition(":")
        if point not in POINTS or not count.isdigit() or int(count) < 1:
            raise PipelineDefinitionError(
                f"LOCKGATE_CRASH_AT: {part!r} is not POINT:N with POINT one of {', '.join(POINTS)} and N >= 1"
            )
        out[point] = int(count)
    return out


_armed = parse(os.environ.get("LOCKGATE_CRASH_AT", ""))
_seen: dict[str, int] = {}


def crash_point(point: str) -> None:
    """SIGKILL this process if ``point`` is armed and reached for the N-th time."""
    if point in _armed:
        _seen[point] = _seen.get(point, 0) + 1
        if _seen[point] == _armed[point]:
            os.kill(os.getpid(), signal.SIGKILL)
