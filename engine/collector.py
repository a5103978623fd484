"""Python's cyclic garbage collector runs between micro-batches, not inside them.

One poll holds tens of thousands of confluent-kafka ``Message`` objects, and the
collector tracks every one of them.  With its default thresholds it walked them
again and again while a batch was being built: the polls of ``bench/stateless.py``'s
2M records took 2.4 s of CPU, and 1.2 s with collection between batches
(``time.thread_time`` around each poll).  They never form cycles, and reference counting frees them when the batch is done.

So while a pipeline runs, :class:`BatchCollector`:

* freezes the objects that existed before it (``gc.freeze``: modules, the plan;
  no collection walks them again while it runs),
* turns automatic collection off,
* collects the young generations after every batch, when the batch's own objects
  are gone already (a few hundred objects are left to walk), and
* collects everything every ``full_every_s`` seconds, so that cycles made by user
  code or by libraries are still freed.

On exit it restores what it found.  Several runners in one process (threads) share
one policy: the last one out restores it.

>>> import gc
>>> was = gc.isenabled()
>>> with BatchCollector() as collector:
...     gc.isenabled()
...     collector.after_batch()
False
>>> gc.isenabled() == was
True
"""

from __future__ import annotations

import gc
import threading
import time
from types import TracebackType
from typing import Self

__all__ = ["BatchCollector"]

_lock = threading.Lock()
_active = 0
_was_enabled = True


class BatchCollector:
    """Garbage collection at batch boundaries while a runner runs (a context manager)."""

    def __init__(self, full_every_s: float = 60.0) -> None:
        self.full_every_s = full_every_s
        self._last_full = time.monotonic()

    def __enter__(self) -> Self:
        global _active, _was_enabled
        with _lock:
            if _active == 0:
                _was_enabled = gc.isenabled()
                gc.disable()
                gc.freeze()
            _active += 1
        self._last_full = time.monotonic()
        return self

    def after_batch(self) -> None:
        """Collect the young generations, and everything once per ``full_every_s``."""
        now = time.monotonic()
        if now - self._last_full >= self.full_every_s:
            self._last_full = now
            gc.collect()
        else:
            gc.collect(1)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        global _active
        with _lock:
            _active -= 1
            if _active == 0:
                gc.unfreeze()
                if _was_enabled:
                    gc.enable()
