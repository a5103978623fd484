"""Write a committed epoch's prepare record to LanceDB: its tables side by side, then its prepare rows and mark.

With the deferred prepare (docs/architecture.md, "Lance off the critical path") an
epoch's rows reach LanceDB after its Kafka transaction committed, from the record
that transaction carried (:mod:`lockgate.storage.prepare_record`).  The mark comes
in the same commit-log append as the prepare rows, after every table's rows: a
reader that sees the mark sees the rows.  A crash between the tables and the mark
leaves rows no reader takes (their batch is not marked); recovery materializes the
record again with ``replace``, which first deletes what the batch wrote.  A batch
written twice (a recovery beside the stopped instance that committed it) is read
once: see :meth:`~lockgate.storage.commit_log.CommitLog.rewriting`.

>>> import tempfile, pyarrow as pa
>>> from lockgate.storage.commit_log import CommitLog, PartitionRange
>>> from lockgate.storage.lance_io import table_uri
>>> from lockgate.storage.prepare_record import PrepareRecord
>>> state = tempfile.mkdtemp()
>>> log = CommitLog(state)
>>> rows = pa.table({"user": ["a"], "_lg_batch": [7], "_lg_epoch": [1], "_lg_order": [0]})
>>> prepare = log.prepare_rows("clicks", epoch=1, batch_id=7, ranges=[PartitionRange("clicks", 0, 0, 1)], tables={"views": None})
>>> materialize(PrepareRecord("clicks", 1, 7, ((table_uri(state, "views"), rows),), prepare), log)
>>> log.committed_batches().to_list()
[7]
"""

from __future__ import annotations

from concurrent import futures

import pyarrow as pa
from lockgate.errors import StorageError
from lockgate.storage.commit_log import CommitLog
from lockgate.storage.lance_io import append_table, open_dataset
from lockgate.storage.prepare_record import PrepareRecord
from lockgate.storage.row_tags import BATCH

__all__ = ["materialize"]


def materialize(record: PrepareRecord, log: CommitLog, *, replace: bool = False, executor: futures.Executor | None = None) -> None:
    """Append the record's tables (side by side on ``executor`` when given), then its prepare rows and its mark in one append.

    ``replace`` (a recovery): nothing when the batch is marked by now; otherwise
    record the rewrite in the log first (readers then take one copy of each of the
    batch's rows, :meth:`CommitLog.rewriting`), and delete any rows of the batch
    from its tables (a crash may have written some of them) before writing them.
    An instance that lost the partitions while it was stopped may still write the
    same batch at the same time: its rows are the same rows, and read once.
    """
    if replace:
        if record.batch_id in log.committed_batches().to_list():
            return
        log.rewriting(record.pipeline, epoch=record.epoch, batch_id=record.batch_id)

    def write(uri: str, rows: pa.Table) -> None:
        if replace:
            ds = open_dataset(uri)
            if ds is not None:
                try:
                    ds.delete(f"{BATCH} = {int(record.batch_id)}")
                except (OSError, ValueError, RuntimeError) as exc:
                    raise StorageError(f"cannot delete batch {record.batch_id}'s rows from the LanceDB table at {uri}: {exc}") from exc
        if rows.num_rows:
            append_table(uri, rows)

    if executor is None:
        for uri, rows in record.tables:
            write(uri, rows)
    else:
        pending = [executor.submit(write, uri, rows) for uri, rows in record.tables]
        futures.wait(pending)
        for future in pending:
            future.result()  # the first failure names its table
    mark = log.mark_rows(record.pipeline, [(record.epoch, record.batch_id)])
    log.write(mark if record.log_rows is None else pa.concat_tables([record.log_rows, mark]))
