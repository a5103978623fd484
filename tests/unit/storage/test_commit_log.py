"""The commit log: recovery redoes lost marks along each partition's chain; trimming old prepare records changes nothing a reader sees."""

from __future__ import annotations

import polars as pl
from lockgate.storage.commit_log import CommitLog, PartitionRange
from lockgate.storage.compaction import dead_batches
from lockgate.storage.sink_tables import SinkTable, read_table

from tests.unit.storage.conftest import write_batch as _write


def test_recovery_marks_the_batch_whose_next_offset_is_the_committed_offset(state_dir):
    _write(state_dir, 1, 1, [1, 2], first=0, commit=True)
    _write(state_dir, 2, 2, [3], first=2, commit=False)  # Kafka committed it, the process died before the mark
    _write(state_dir, 3, 3, [4], first=3, commit=False)  # aborted: Kafka's committed offset is 3
    redone = CommitLog(state_dir).recover("p", {("in", 0): (3, None)})
    assert redone == [2]
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == [1, 2, 3]
    assert CommitLog(state_dir).recover("p", {("in", 0): (3, None)}) == [], "recovery is idempotent"


def test_recovery_trusts_the_batch_id_in_the_committed_offset_metadata_over_a_lookalike(state_dir):
    _write(state_dir, 1, 1, [1, 2], first=0, commit=True)
    _write(state_dir, 2, 2, [3], first=2, commit=False)  # aborted, then redone with the same offsets:
    _write(state_dir, 3, 3, [3], first=2, commit=False)  # committed in Kafka, mark lost
    assert CommitLog(state_dir).recover("p", {("in", 0): (3, 3)}) == [3]
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == [1, 2, 3], "the aborted look-alike stays invisible"


def test_recovery_walks_the_chain_back_and_marks_every_batch_whose_mark_was_lost(state_dir):
    # marks ride on later appends: a kill after the Kafka commit of batch 5 leaves 3, 4 and 5 unmarked
    _write(state_dir, 1, 1, [1, 2], first=0, commit=True)
    _write(state_dir, 3, 3, [3], first=2, commit=False, prev=1)
    _write(state_dir, 40, 4, [4, 99], first=3, commit=False, prev=3)  # aborted: not on the chain
    _write(state_dir, 4, 5, [4], first=3, commit=False, prev=3)  # its redo
    _write(state_dir, 5, 6, [5], first=4, commit=False, prev=4)  # named by the committed offset's metadata
    _write(state_dir, 60, 7, [6], first=5, commit=False, prev=5)  # prepared ahead, never committed
    assert CommitLog(state_dir).recover("p", {("in", 0): (5, 5)}) == [3, 4, 5]
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == [1, 2, 3, 4, 5]


def test_without_metadata_recovery_takes_the_latest_lookalike(state_dir):
    _write(state_dir, 1, 1, [1, 2], first=0, commit=True)
    _write(state_dir, 2, 2, [3], first=2, commit=False)
    _write(state_dir, 3, 3, [3], first=2, commit=False)
    assert CommitLog(state_dir).recover("p", {("in", 0): (3, None)}) == [3]


def test_old_prepare_records_are_trimmed_but_recovery_watermarks_and_reads_stay_the_same(state_dir):
    """Partition 0 gets 30 committed batches, partition 1 only every tenth; one dead batch and one in flight follow."""
    log = CommitLog(state_dir)
    table = SinkTable(state_dir, "t")
    prev: dict[int, int] = {}
    for epoch in range(1, 31):
        parts = [0, 1] if epoch % 10 == 0 else [0]
        table.append(pl.DataFrame({"x": [epoch]}), batch_id=epoch, epoch=epoch)
        ranges = [PartitionRange("in", p, (epoch - 1) * 10, epoch * 10) for p in parts]
        log.prepare("p", epoch=epoch, batch_id=epoch, ranges=ranges, tables={}, event_times={("in", p): epoch * 1000 for p in parts},
                    prev={("in", p): prev.get(p) for p in parts})
        log.mark("p", epoch=epoch, batch_id=epoch)
        prev.update({p: epoch for p in parts})
    log.prepare("p", epoch=31, batch_id=31, ranges=[PartitionRange("in", 0, 290, 300)], tables={}, prev={("in", 0): 30})  # aborted: passed
    log.prepare("p", epoch=32, batch_id=32, ranges=[PartitionRange("in", 0, 300, 310)], tables={}, prev={("in", 0): 30})  # in flight
    before = (log.event_times("p"), log.last_epoch("p"))
    rows = read_table(state_dir, "t").collect().sort("x")

    assert log.trim(keep=5) == 23  # batches 1..25 of partition 0, but not 10 and 20, which partition 1 still needs
    prepared = log.frame().filter(pl.col("kind") == "prepare")
    assert sorted(prepared.filter(pl.col("partition") == 0)["batch_id"].to_list()) == [10, 20, 26, 27, 28, 29, 30, 31, 32]
    assert sorted(prepared.filter(pl.col("partition") == 1)["batch_id"].to_list()) == [10, 20, 30]
    assert (log.event_times("p"), log.last_epoch("p")) == before
    assert read_table(state_dir, "t").collect().sort("x").equals(rows)
    assert dead_batches(log.frame()) == [31]
    assert log.recover("p", {("in", 0): (320, 32)}) == [32]  # the batch in flight committed after all
