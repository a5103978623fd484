"""A committed epoch's prepare record written to LanceDB (storage/materialize.py): rows before the mark, once, even after a crash."""

from __future__ import annotations

from concurrent import futures

import lance
import pyarrow as pa
import pytest
from lockgate.errors import StorageError
from lockgate.storage.commit_log import CommitLog, PartitionRange
from lockgate.storage.lance_io import append_table, table_uri
from lockgate.storage.materialize import materialize
from lockgate.storage.prepare_record import PrepareRecord
from lockgate.storage.sink_tables import read_table


def _record(state: str, log: CommitLog, batch_id: int = 7) -> PrepareRecord:
    views = pa.table({"user": ["a", "b"], "_lg_batch": [batch_id] * 2, "_lg_epoch": [1, 1], "_lg_order": [0, 1]})
    counts = pa.table({"k": [1], "n": [3], "_lg_batch": [batch_id], "_lg_epoch": [1], "_lg_order": [0]})
    prepare = log.prepare_rows("clicks", epoch=1, batch_id=batch_id, ranges=[PartitionRange("clicks", 0, 0, 2)], tables={"views": None})
    return PrepareRecord("clicks", 1, batch_id, ((table_uri(state, "views"), views), (table_uri(state, "counts"), counts)), prepare)


@pytest.mark.parametrize("side_by_side", [False, True])
def test_materializing_a_record_writes_every_table_then_its_prepare_rows_and_mark(tmp_path, side_by_side):
    state = str(tmp_path)
    log = CommitLog(state)
    with futures.ThreadPoolExecutor(2) as pool:
        materialize(_record(state, log), log, executor=pool if side_by_side else None)
    assert lance.dataset(table_uri(state, "views")).count_rows() == 2 and lance.dataset(table_uri(state, "counts")).count_rows() == 1
    written = log.frame()
    assert sorted(written["kind"].to_list()) == ["commit", "prepare"] and set(written["batch_id"].to_list()) == {7}
    assert log.committed_batches().to_list() == [7]


def test_a_record_materialized_again_after_a_crash_before_its_mark_leaves_one_copy_of_its_rows(tmp_path):
    state = str(tmp_path)
    log = CommitLog(state)
    record = _record(state, log)
    append_table(*record.tables[0])  # the crash: one table written, no mark
    materialize(record, log, replace=True)
    assert lance.dataset(table_uri(state, "views")).count_rows() == 2, "the half-written rows were replaced, not doubled"
    materialize(_record(state, log, batch_id=8), log)  # another batch's rows are not touched by a replace of batch 7
    materialize(record, log, replace=True)
    assert lance.dataset(table_uri(state, "views")).to_table().column("_lg_batch").to_pylist().count(8) == 2


def test_a_table_that_cannot_be_written_fails_the_materialization_and_no_mark_is_written(tmp_path):
    state = str(tmp_path)
    log = CommitLog(state)
    record = _record(state, log)
    bad = PrepareRecord(record.pipeline, record.epoch, record.batch_id, (*record.tables, (str(tmp_path / "file.lance"), pa.table({"x": [1]}))), record.log_rows)
    (tmp_path / "file.lance").write_text("not a table")
    with pytest.raises(StorageError, match="file.lance"):
        materialize(bad, log)
    assert log.committed_batches().to_list() == []


def test_a_batch_that_a_recovery_and_the_stopped_instance_that_committed_it_both_write_is_read_once(tmp_path):
    state = str(tmp_path)
    log = CommitLog(state)
    record = _record(state, log)
    materialize(_record(state, log, batch_id=6), log)  # an earlier batch, written once
    materialize(record, log, replace=True)  # the new owner's recovery
    materialize(record, log)  # the instance that committed the batch wakes up and writes it too
    assert lance.dataset(table_uri(state, "views")).count_rows() == 6, "the batch's rows are stored twice"
    views = read_table(state, "views").collect()
    assert sorted(views["user"].to_list()) == ["a", "a", "b", "b"], "one copy of batch 7's rows beside batch 6's"
    assert log.rewritten_batches().to_list() == [7]


def test_a_recovery_of_a_batch_marked_meanwhile_writes_nothing(tmp_path):
    state = str(tmp_path)
    log = CommitLog(state)
    record = _record(state, log)
    materialize(record, log)  # the instance that committed it wrote it before the recovery got to it
    materialize(record, log, replace=True)
    assert lance.dataset(table_uri(state, "views")).count_rows() == 2
    assert log.rewritten_batches().to_list() == []
