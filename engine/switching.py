"""While a pipeline runs, Python hands the GIL between threads every millisecond, not every five.

The runner's thread builds each epoch in about twenty Polars queries; each one
releases the GIL, and when it returns, another thread that ran Python meanwhile
(the epoch's commit thread, the materializer, the trim, the compactor, librdkafka's
callbacks) keeps the GIL until it blocks or until the interpreter's switch
interval ends: 5 ms by default.  Profiled offline (2026-12-07), an epoch's
operators took 216 ms at p50 beside a thread that ran Python all the time, and 55 ms
with a 1 ms interval; in ``bench/latency.py`` at 50k events/s (with fewer queries per
epoch, the same change) the end-to-end p99 fell to 0.53-0.64 of what it was in each
of 3 runs (docs/architecture.md, "Latency").  :class:`ThreadSwitching` sets ``sys.setswitchinterval`` to
``SWITCH_INTERVAL_S`` while any runner runs, and restores what it found when the
last one stops.

>>> import sys
>>> before = sys.getswitchinterval()
>>> with ThreadSwitching():
...     sys.getswitchinterval()
0.001
>>> sys.getswitchinterval() == before
True
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Self

__all__ = ["SWITCH_INTERVAL_S", "ThreadSwitching"]

#: the switch interval while a runner runs (Python's default: 0.005)
SWITCH_INTERVAL_S = 0.001

_lock = threading.Lock()
_active = 0
_was = 0.005


class ThreadSwitching:
    """A shorter GIL switch interval while a runner runs (a context manager; several runners share it)."""

    def __enter__(self) -> Self:
        global _active, _was
        with _lock:
            if _active == 0:
                _was = sys.getswitchinterval()
                sys.setswitchinterval(min(_was, SWITCH_INTERVAL_S))
            _active += 1
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        global _active
        with _lock:
            _active -= 1
            if _active == 0:
                sys.setswitchinterval(_was)
