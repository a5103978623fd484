"""Helpers of the storage tests: batches written and committed (or not) through the commit log."""

from __future__ import annotations

import polars as pl
from lockgate.storage.commit_log import CommitLog, PartitionRange
from lockgate.storage.sink_tables import SinkTable


def write_batch(state: str, batch_id: int, epoch: int, rows: list[int], *, first: int, commit: bool, prev: int | None = None) -> None:
    """Append ``rows`` to table ``t`` as batch ``batch_id`` of pipeline ``p`` reading partition ``in``/0 from ``first``; mark it if ``commit``."""
    version = SinkTable(state, "t").append(pl.DataFrame({"x": rows}), batch_id=batch_id, epoch=epoch)
    log = CommitLog(state)
    log.prepare(
        "p", epoch=epoch, batch_id=batch_id, ranges=[PartitionRange("in", 0, first, first + len(rows))], tables={"t": version},
        prev={("in", 0): prev} if prev is not None else None,
    )
    if commit:
        log.mark("p", epoch=epoch, batch_id=batch_id)
