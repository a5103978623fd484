"""Compaction merges fragments without changing what readers see, including as_of reads of earlier epochs."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
from lockgate.errors import StorageError
from lockgate.storage import compaction
from lockgate.storage.compaction import Compactor, compact
from lockgate.storage.commit_log import CommitLog, PartitionRange
from lockgate.storage.lance_io import open_dataset
from lockgate.storage.sink_tables import SinkTable, read_table


def _commit(state: str, table: SinkTable, epoch: int) -> None:
    version = table.append(pl.DataFrame({"x": [epoch, -epoch]}), batch_id=epoch, epoch=epoch)
    log = CommitLog(state)
    log.prepare("p", epoch=epoch, batch_id=epoch, ranges=[PartitionRange("in", 0, epoch, epoch + 1)], tables={"t": version})
    log.mark("p", epoch=epoch, batch_id=epoch)


def test_compaction_merges_fragments_and_readers_see_the_same_rows(state_dir):
    table = SinkTable(state_dir, "t")
    for epoch in range(1, 41):
        _commit(state_dir, table, epoch)
    before = read_table(state_dir, "t").collect().sort("x")
    earlier = read_table(state_dir, "t", as_of=10).collect().sort("x")
    report = compact([table.uri, CommitLog(state_dir).uri], retain=timedelta(0))
    assert report.fragments_before >= 80 and report.fragments_after == 2
    assert report.versions_removed > 0
    assert len(open_dataset(table.uri).get_fragments()) == 1
    assert read_table(state_dir, "t").collect().sort("x").equals(before)
    assert read_table(state_dir, "t", as_of=10).collect().sort("x").equals(earlier), "as_of of a retained epoch still works"


def test_the_compactor_runs_in_the_background_while_commits_go_on(state_dir):
    table = SinkTable(state_dir, "t")
    compactor = Compactor(lambda: [table.uri, CommitLog(state_dir).uri], every_batches=5, retain=timedelta(0))
    assert compactor.retain == timedelta(minutes=1), "never removes versions a concurrent append may still read"
    for epoch in range(1, 31):
        _commit(state_dir, table, epoch)  # commits never wait for a compaction
        compactor.committed()
    compactor.wait()
    assert compactor.error is None
    # each commit appended one fragment to the table; the compactions merged them while the commits went on (a
    # report's own before/after counts race with those commits: appends land between its counts on a loaded machine)
    assert compactor.last is not None and len(open_dataset(table.uri).get_fragments()) < 30
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == sorted([e for e in range(1, 31)] + [-e for e in range(1, 31)])


def test_a_fragment_compaction_filled_is_not_rewritten_by_the_next_one(state_dir, monkeypatch):
    monkeypatch.setattr(compaction, "FRAGMENT_ROWS", 20)
    table = SinkTable(state_dir, "t")
    for epoch in range(1, 31):  # 60 rows in two-row appends
        _commit(state_dir, table, epoch)
    compact([table.uri])
    full = {f.fragment_id for f in open_dataset(table.uri).get_fragments() if f.count_rows() == 20}
    assert len(full) == 3
    for epoch in range(31, 36):
        _commit(state_dir, table, epoch)
    compact([table.uri])
    after = {f.fragment_id: f.count_rows() for f in open_dataset(table.uri).get_fragments()}
    assert full <= set(after), "the full fragments stay as they were"
    assert len(after) == 4 and sum(after.values()) == 70, "the ten new rows are merged into one fragment"
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == sorted([*range(1, 36), *range(-35, 0)])


def test_the_compactor_cleans_up_at_most_once_a_cleanup_interval_and_merges_every_time(state_dir, monkeypatch):
    # Cleaning up: old versions removed, dead batches deleted, the commit log trimmed.
    monkeypatch.setattr(compaction, "MIN_RETAIN", timedelta(0))
    table, log = SinkTable(state_dir, "t"), CommitLog(state_dir)
    compactor = Compactor(lambda: [table.uri, log.uri], every_batches=5, retain=timedelta(0), commit_log=log)
    reports = []
    for interval in (timedelta(hours=1), timedelta(0)):
        monkeypatch.setattr(compaction, "CLEANUP_EVERY", interval)
        for round_ in range(2):
            first = 10 * len(reports) + 1
            # an aborted try at the round's first batch: prepared, never marked, then passed by the redo
            log.prepare("p", epoch=first, batch_id=1000 + first, ranges=[PartitionRange("in", 0, first, first + 1)], tables={"t": None})
            for epoch in range(first, first + 5):
                _commit(state_dir, table, epoch)
                compactor.committed()
            compactor.wait()
            assert compactor.error is None and compactor.last is not None
            reports.append(compactor.last)
    cleaned = [(r.versions_removed > 0, r.dead_batches) for r in reports]
    # the first compaction cleans up; within the hour the next one only merges (its dead batch waits for the
    # next cleanup, which deletes two); with no interval each one cleans up
    assert cleaned == [(True, 1), (False, 0), (True, 2), (True, 1)], cleaned
    assert all(r.fragments_after < r.fragments_before for r in reports), "every compaction merges"
    epochs = [e for first in (1, 11, 21, 31) for e in range(first, first + 5)]
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == sorted([*epochs, *(-e for e in epochs)])


def test_compaction_deletes_the_rows_of_dead_batches_and_keeps_a_batch_in_flight(state_dir):
    table = SinkTable(state_dir, "t")
    log = CommitLog(state_dir)

    def prepare(batch_id: int, epoch: int, first: int, next_: int, rows: list[int]) -> None:
        version = table.append(pl.DataFrame({"x": rows}), batch_id=batch_id, epoch=epoch)
        log.prepare("p", epoch=epoch, batch_id=batch_id, ranges=[PartitionRange("in", 0, first, next_)], tables={"t": version})

    prepare(1, 1, 0, 10, [1])
    log.mark("p", epoch=1, batch_id=1)
    prepare(20, 2, 10, 20, [-2])  # aborted (or a fenced zombie's): redone below
    prepare(2, 3, 10, 20, [2])
    log.mark("p", epoch=3, batch_id=2)
    prepare(30, 4, 20, 30, [3])  # in flight: ahead of the committed offset 20, never touched
    report = compact([table.uri, log.uri], retain=timedelta(0), commit_log=log)
    assert report.dead_batches == 1
    raw = pl.from_arrow(open_dataset(table.uri).to_table())
    assert sorted(raw["_lg_batch"].to_list()) == [1, 2, 30], "the dead batch's rows are gone"
    assert 20 not in log.frame()["batch_id"].to_list(), "and so is its prepare record"
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == [1, 2]
    log.mark("p", epoch=4, batch_id=30)  # the in-flight batch commits after all
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == [1, 2, 3]


def test_a_prune_waits_for_its_epochs_mark_then_writes_the_horizon_and_deletes_the_superseded_rows(state_dir):
    table = SinkTable(state_dir, "live", upsert_keys=["k"])
    log = CommitLog(state_dir)
    for epoch in (1, 2, 3):
        version = table.append(pl.DataFrame({"k": ["a", "b"], "v": [epoch, epoch]}), batch_id=epoch, epoch=epoch)
        log.prepare("p", epoch=epoch, batch_id=epoch, ranges=[PartitionRange("in", 0, epoch, epoch + 1)], tables={"live": version})
        if epoch < 3:
            log.mark("p", epoch=epoch, batch_id=epoch)
    assert table.prune_due(floor=1)
    compactor = Compactor(lambda: [table.uri], commit_log=log, keep_history=timedelta(0))
    compactor.prune(table, "p", 3)
    assert not table.prune_due(floor=1), "one prune at a time"
    assert compactor._prune_due() == 0 and compactor.prunes, "epoch 3 has no mark yet: the prune waits"
    log.mark("p", epoch=3, batch_id=3)
    assert compactor._prune_due() == 4  # epochs 1 and 2 of both keys
    assert not compactor.prunes and not table.prune_pending
    assert sorted(read_table(state_dir, "live").collect().rows()) == [("a", 3), ("b", 3)]
    assert table.live == table.rows == 2 and not table.prune_due(floor=1)  # 2 rows: not more than 4 x 2


def test_a_failed_prune_is_logged_and_a_later_epoch_may_prune_again(state_dir, monkeypatch):
    table = SinkTable(state_dir, "live", upsert_keys=["k"])
    log = CommitLog(state_dir)
    version = table.append(pl.DataFrame({"k": ["a", "a"], "v": [1, 2]}), batch_id=1, epoch=1)
    log.prepare("p", epoch=1, batch_id=1, ranges=[PartitionRange("in", 0, 0, 1)], tables={"live": version})
    log.mark("p", epoch=1, batch_id=1)

    def broken(committed: pl.Series) -> int:
        raise StorageError("to_table 'live': the disk is gone")

    monkeypatch.setattr(table, "prune", broken)
    compactor = Compactor(lambda: [table.uri], commit_log=log, keep_history=timedelta(0))
    compactor.prune(table, "p", 1)
    assert compactor._prune_due() == 0
    assert not table.prune_pending and table.prune_due(floor=1)


class _RecordingStore:
    """Stands in for a WindowStore: records the epochs whose history it was told to delete."""

    name = "counts"

    def __init__(self) -> None:
        self.forgotten: list[int] = []

    def forget_before(self, epoch: int, shards: tuple[int, ...] | None) -> int:
        self.forgotten.append(epoch)
        return 5


def test_a_snapshots_history_goes_only_once_its_epoch_is_marked_as_its_rows_come_after_the_kafka_commit(state_dir):
    log = CommitLog(state_dir)
    log.prepare("p", epoch=3, batch_id=3, ranges=[PartitionRange("in", 0, 3, 4)], tables={"state:counts": None})
    store = _RecordingStore()
    compactor = Compactor(lambda: [], commit_log=log, keep_history=timedelta(0))
    compactor.forget(store, "p", 3, None)  # type: ignore[arg-type]
    assert compactor._forget_due() == 0 and store.forgotten == [] and compactor.forgets, "no mark yet: the history stays"
    assert log.frame().filter(pl.col("kind") == "horizon").height == 0
    log.mark("p", epoch=3, batch_id=3)
    assert compactor._forget_due() == 5 and store.forgotten == [3] and not compactor.forgets
    assert log.frame().filter(pl.col("kind") == "horizon")["epoch"].to_list() == [3]
