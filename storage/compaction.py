"""Compaction: merge the small fragments that per-batch appends leave, and remove old versions.

Each micro-batch appends a few rows to several tables; every append writes a
manifest that lists every fragment, so append and read costs grow with the
fragment count until fragments are merged.  Compaction rewrites fragments without
changing a single row (a Lance *Rewrite*, which commits alongside concurrent
appends), so it runs on a background thread while batches keep committing.
Cleanup then deletes the files of versions older than ``retain``: readers pin a
version for the length of one read, and ``as_of`` reads select committed epochs
from the commit log, not from old versions, so they survive cleanup.

Both run beside the epochs on a machine that may have two cores, so they are kept
cheap.  A merge is written by one thread into fragments of at most
``FRAGMENT_ROWS`` rows: a fragment that size is never rewritten again (with Lance's
default of about a million, each compaction rewrote the whole state table of a
run, up to 0.7 s beside 10 epochs a second).  Cleanup reads the manifest of every
version it keeps (ten epochs a second leave 6,000 in ten minutes), so the
:class:`Compactor` cleans up at most once every ``CLEANUP_EVERY`` (0.2-0.7 s per
table each time, removing nothing, when it ran with every compaction).  Deleting
dead batches and trimming the commit log, which read the whole log (0.2-0.4 s),
wait for the same cleanup; in between, a compaction only merges.

Given the commit log, compaction first deletes the rows of dead batches: prepared,
never marked, and passed by the committed chain (a marked batch of the same
pipeline and partition ends at or after their next offset).  Such a batch can never
commit: a commit starts where the committed offset is, and it is already past them.
They are what an aborted batch or a fenced zombie left; no reader ever saw them.
A batch still in flight (ahead of every committed offset) is never touched.

Examples
--------
>>> import tempfile, polars as pl
>>> from lockgate.storage.sink_tables import SinkTable
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
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import polars as pl
from lockgate.errors import StorageError
from lockgate.storage.commit_log import CommitLog, marked_ends
from lockgate.storage.lance_io import open_dataset, sql_list
from lockgate.storage.row_tags import BATCH
from lockgate.storage.sink_tables import SinkTable, table_horizon
from lockgate.storage.state import WindowStore

__all__ = ["CompactionReport", "Compactor", "compact"]

log = logging.getLogger("lockgate.compaction")
T = TypeVar("T", bound=tuple)


@dataclass(frozen=True)
class CompactionReport:
    """What one compaction did over its tables."""

    tables: int
    fragments_before: int
    fragments_after: int
    versions_removed: int
    seconds: float
    dead_batches: int = 0


def dead_batches(log: pl.DataFrame) -> list[int]:
    """Ids of prepared batches that can never commit (see the module docstring)."""
    marked = log.filter(pl.col("kind") == "commit")["batch_id"].implode()
    dead = (
        log.filter((pl.col("kind") == "prepare") & ~pl.col("batch_id").is_in(marked))
        .join(marked_ends(log), on=["pipeline", "topic", "partition"])
        .filter(pl.col("next_offset") <= pl.col("passed"))
    )
    return sorted(dead["batch_id"].unique().to_list())


def compact(
    uris: Iterable[str], *, retain: timedelta = timedelta(minutes=10), hook: Callable[[], None] | None = None,
    commit_log: CommitLog | None = None, cleanup: bool = True,
) -> CompactionReport:
    """Compact each table at ``uris`` (those that exist) and, with ``cleanup``, remove the versions older than ``retain``.

    With ``commit_log`` (the commit log of these tables), the rows of dead batches go first.
    """
    started = time.monotonic()
    tables = before = after = removed = 0
    frame = commit_log.frame() if commit_log is not None else None
    dead = dead_batches(frame) if frame is not None else []
    for uri in uris:
        ds = open_dataset(uri)
        if ds is None:
            continue
        tables += 1
        is_log = commit_log is not None and uri == commit_log.uri
        try:
            if dead:
                _delete_batches(ds, dead, is_log=is_log)
                ds = open_dataset(uri)
                assert ds is not None
            if is_log:
                assert commit_log is not None
                commit_log.trim(log=frame)
                ds = open_dataset(uri)
                assert ds is not None
        except (OSError, ValueError, RuntimeError) as exc:
            raise StorageError(f"removing the rows of dead batches (or old prepare records) from {uri} failed: {exc}") from exc
        count = len(ds.get_fragments())
        before += count
        try:
            if count > 1:
                ds.optimize.compact_files(target_rows_per_fragment=FRAGMENT_ROWS, num_threads=1)
                if hook is not None:
                    hook()  # fault injection: a crash in the middle of compaction
            ds = open_dataset(uri)
            assert ds is not None
            if cleanup:
                removed += ds.cleanup_old_versions(older_than=retain).old_versions
        except (OSError, ValueError, RuntimeError) as exc:
            raise StorageError(f"compaction of {uri} failed: {exc}") from exc
        after += len(ds.get_fragments())
    return CompactionReport(tables, before, after, removed, time.monotonic() - started, len(dead))


def _delete_batches(ds: object, batch_ids: list[int], *, is_log: bool) -> None:
    ids = sql_list(batch_ids)
    column = "batch_id" if is_log else BATCH
    if column not in ds.schema.names:  # type: ignore[attr-defined]
        return
    where = f"{column} IN ({ids})" + (" AND kind = 'prepare'" if is_log else "")
    ds.delete(where)  # type: ignore[attr-defined]


def _split_due(entries: list[T]) -> tuple[list[T], list[T]]:
    """Scheduled entries (due monotonic time first) split into those due now and the rest."""
    now = time.monotonic()
    return [e for e in entries if e[0] <= now], [e for e in entries if e[0] > now]


MIN_RETAIN = timedelta(minutes=1)
#: rows of a fragment that compaction writes; one this size is not merged again
FRAGMENT_ROWS = 65_536
#: the Compactor cleans up (old versions, dead batches, the commit log's trim) at most this often (see the module docstring)
CLEANUP_EVERY = timedelta(minutes=1)


class Compactor:
    """Runs :func:`compact` on a background thread every ``every_batches`` commits, one at a time.

    It keeps every version younger than ``MIN_RETAIN`` whatever ``retain`` says: an
    append committing at the same time reads the manifests of the versions it
    raced with, and removing them under it fails the append (seen here with a
    zero retention).
    """

    def __init__(
        self, uris: Callable[[], list[str]], *, every_batches: int = 50, retain: timedelta = timedelta(minutes=10),
        hook: Callable[[], None] | None = None, commit_log: CommitLog | None = None,
        keep_history: timedelta = timedelta(minutes=10),
    ) -> None:
        self.uris = uris
        self.keep_history = keep_history
        #: (due monotonic time, store, pipeline, epoch, shards, commit time): history to delete behind a committed snapshot
        self.forgets: list[tuple[float, WindowStore, str, int, tuple[int, ...] | None, datetime]] = []
        #: (due monotonic time, table, pipeline, epoch): superseded rows of an update-mode table to delete
        self.prunes: list[tuple[float, SinkTable, str, int]] = []
        self.lock = threading.Lock()
        self.commit_log = commit_log
        self.every_batches = every_batches
        self.retain = max(retain, MIN_RETAIN)
        self.hook = hook
        self.since = 0
        self.thread: threading.Thread | None = None
        self.last: CompactionReport | None = None
        self.cleaned_at: float | None = None  # monotonic time of the last cleanup (see CLEANUP_EVERY)
        self.error: BaseException | None = None

    def forget(self, store: WindowStore, pipeline: str, epoch: int, shards: tuple[int, ...] | None) -> None:
        """``epoch`` committed a snapshot of ``store``: delete the rows before it after ``keep_history``."""
        with self.lock:
            self.forgets.append((time.monotonic() + self.keep_history.total_seconds(), store, pipeline, epoch, shards, datetime.now(UTC)))

    def prune(self, table: SinkTable, pipeline: str, epoch: int) -> None:
        """``epoch`` committed: after ``keep_history``, delete the rows of ``table`` that the epoch's state supersedes."""
        table.prune_pending = True
        with self.lock:
            self.prunes.append((time.monotonic() + self.keep_history.total_seconds(), table, pipeline, epoch))

    def _prune_due(self) -> int:
        """Prune the update-mode tables that are due (on the compaction thread); returns the rows deleted.

        The horizon goes to the commit log first, so that no ``as_of`` read from
        before the epoch starts on rows that are about to go.  A prune whose epoch
        has no commit mark yet waits for the next run.
        """
        with self.lock:
            due, self.prunes = _split_due(self.prunes)
        if not due or self.commit_log is None:
            return 0
        frame = self.commit_log.frame()
        deleted = 0
        for entry in due:
            _, table, pipeline, epoch = entry
            settled = self.commit_log.settled(pipeline, epoch, log=frame)
            if settled is None:
                with self.lock:
                    self.prunes.append(entry)
                continue
            ids, moment = settled
            try:
                self.commit_log.horizon(pipeline, table_horizon(table.name), epoch, moment)
                deleted += table.prune(ids)
            except (StorageError, OSError, ValueError, RuntimeError) as exc:  # e.g. another instance pruned at the same time
                log.error("compaction: pruning table %r failed (a later epoch tries again): %s", table.name, exc)
            finally:
                table.prune_pending = False
        return deleted

    def _forget_due(self) -> int:
        """Delete the history that is due (on the compaction thread); returns the rows deleted.

        A snapshot whose epoch has no commit mark yet (its rows are written after its
        Kafka commit, by the deferred prepare) waits for the next run: the history
        behind it goes only once a reader sees the snapshot.
        """
        with self.lock:
            due, self.forgets = _split_due(self.forgets)
        frame = self.commit_log.frame() if due and self.commit_log is not None else None
        deleted = 0
        for entry in due:
            _, store, pipeline, epoch, shards, moment = entry
            if self.commit_log is not None:
                if self.commit_log.settled(pipeline, epoch, log=frame) is None:
                    with self.lock:
                        self.forgets.append(entry)
                    continue
                self.commit_log.horizon(pipeline, store.name, epoch, moment)  # first: no as_of read may start on what goes
            deleted += store.forget_before(epoch, shards)
        return deleted

    def committed(self) -> None:
        """Count a committed batch; start a compaction when one is due and none runs."""
        self.since += 1
        if self.since >= self.every_batches and (self.thread is None or not self.thread.is_alive()):
            self.since = 0
            self.thread = threading.Thread(target=self._run, name="lockgate-compaction", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            forgotten = self._forget_due()
            if forgotten:
                log.info("compaction: deleted %d rows of window state history behind committed snapshots", forgotten)
            pruned = self._prune_due()
            if pruned:
                log.info("compaction: deleted %d rows of update-mode tables that later updates superseded", pruned)
            now = time.monotonic()
            cleanup = self.cleaned_at is None or now - self.cleaned_at >= CLEANUP_EVERY.total_seconds()
            # between cleanups only the merges: dead batches, the commit log's trim and old versions wait
            self.last = compact(self.uris(), retain=self.retain, hook=self.hook, commit_log=self.commit_log if cleanup else None,
                                cleanup=cleanup)
            if cleanup:
                self.cleaned_at = now
            log.info("compaction: %s", self.last)
        except BaseException as exc:  # reported by wait(); commits go on meanwhile
            self.error = exc
            log.error("compaction failed: %s", exc)

    def wait(self) -> None:
        """Wait for a running compaction (at shutdown)."""
        if self.thread is not None:
            self.thread.join()

    def finish(self) -> None:
        """At a clean stop: wait for a running compaction, then delete the history and superseded rows already due.

        A snapshot committed by one of the last epochs (fewer than ``every_batches``
        before the stop) would otherwise keep its history until the next run's
        compaction.  Failures are logged: the next run tries again.
        """
        self.wait()
        try:
            self._forget_due()
            self._prune_due()
        except (StorageError, OSError, ValueError, RuntimeError) as exc:
            log.error("compaction at the stop failed (the next run tries again): %s", exc)
