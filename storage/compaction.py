"""Compaction: merge the small fragments that per-batch appends leave, and remove old versions.

Each micro-batch appends a few rows to several tables; every append writes a
manifest that lists every fragment, so append and read costs grow with the
fragment count until fragments are merged.  Compaction rewrites fragments without
changing a single row (a Lance *Rewrite*, which commits alongside concurrent
appends), so it runs on a background thread while batches keep committing.
Cleanup then deletes the files of versions older than ``retain``: readers pin a
version for the length of one read, and ``as_of`` reads select committed epochs
from the commit log, not from old versions, so they survive cleanup.

Examples
--------
>>> import tempfile, polars as pl
>>> from lockgate.storage.tables import SinkTable
>>> from lockgate.storage.compaction import compact
>>> table = SinkTable(tempfile.mkdtemp(), "t")
>>> for i in range(20):
...     _ = table.append(pl.DataFrame({"x": [i]}), batch_id=i, epoch=i)
>>> compact([table.uri]).fragments_after
1
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from lockgate.operators.errors import StorageError
from lockgate.storage.tables import _open

__all__ = ["compact", "CompactionReport", "Compactor"]

log = logging.getLogger("lockgate.compaction")


@dataclass(frozen=True)
class CompactionReport:
    """What one compaction did over its tables."""

    tables: int
    fragments_before: int
    fragments_after: int
    versions_removed: int
    seconds: float


def compact(uris: Iterable[str], *, retain: timedelta = timedelta(minutes=10), hook: Callable[[], None] | None = None) -> CompactionReport:
    """Compact each table at ``uris`` (those that exist) and clean up versions older than ``retain``."""
    started = time.monotonic()
    tables = before = after = removed = 0
    for uri in uris:
        ds = _open(uri)
        if ds is None:
            continue
        tables += 1
        count = len(ds.get_fragments())
        before += count
        try:
            if count > 1:
                ds.optimize.compact_files()
                if hook is not None:
                    hook()  # fault injection: a crash in the middle of compaction
            ds = _open(uri)
            assert ds is not None
            stats = ds.cleanup_old_versions(older_than=retain)
        except (OSError, ValueError, RuntimeError) as exc:
            raise StorageError(f"compaction of {uri} failed: {exc}") from exc
        removed += stats.old_versions
        after += len(ds.get_fragments())
    return CompactionReport(tables, before, after, removed, time.monotonic() - started)


MIN_RETAIN = timedelta(minutes=1)


class Compactor:
    """Runs :func:`compact` on a background thread every ``every_batches`` commits, one at a time.

    It keeps every version younger than ``MIN_RETAIN`` whatever ``retain`` says: an
    append committing at the same time reads the manifests of the versions it
    raced with, and removing them under it fails the append (seen here with a
    zero retention).
    """

    def __init__(
        self, uris: Callable[[], list[str]], *, every_batches: int = 50, retain: timedelta = timedelta(minutes=10),
        hook: Callable[[], None] | None = None,
    ) -> None:
        self.uris = uris
        self.every_batches = every_batches
        self.retain = max(retain, MIN_RETAIN)
        self.hook = hook
        self.since = 0
        self.thread: threading.Thread | None = None
        self.last: CompactionReport | None = None
        self.error: BaseException | None = None

    def committed(self) -> None:
        """Count a committed batch; start a compaction when one is due and none runs."""
        self.since += 1
        if self.since >= self.every_batches and (self.thread is None or not self.thread.is_alive()):
            self.since = 0
            self.thread = threading.Thread(target=self._run, name="lockgate-compaction", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            self.last = compact(self.uris(), retain=self.retain, hook=self.hook)
            log.info("compaction: %s", self.last)
        except BaseException as exc:  # reported by wait(); commits go on meanwhile
            self.error = exc
            log.error("compaction failed: %s", exc)

    def wait(self) -> None:
        """Wait for a running compaction (at shutdown)."""
        if self.thread is not None:
            self.thread.join()
