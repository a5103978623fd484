"""Stream-join state in LanceDB: each side's buffered rows, appended per epoch, read as of committed batches.

An interval join keeps the rows of each side that a future row could still
match (:class:`lockgate.operators.interval_join.IntervalJoinLogic`).  Each side is
one Lance table under ``<state>/_lockgate_state/<pipeline>/<join>.<side>.lance``,
written as window state is (:mod:`lockgate.storage.state`): every epoch appends
the rows that came or changed and a tombstone (``_lg_deleted``) for each row id
(``__lg_row``) that left; nothing is updated in place; a load takes the latest
row of each id of the committed batches.  A snapshot delta holds every buffered
row, so that once it committed the rows before it can be deleted.

Examples
--------
>>> import tempfile, polars as pl
>>> from lockgate.operators.interval_join import IntervalJoinLogic
>>> from lockgate.operators.join_rows import StreamJoinSpec
>>> from lockgate.storage.commit_log import CommitLog
>>> from lockgate.storage.join_state import JoinSideStore
>>> schema = pl.Schema({"ad": pl.String, "t": pl.Int64})
>>> spec = StreamJoinSpec.build("j", on="ad", lower_ms=0, upper_ms=1_000, how="inner",
...     left_schema=schema, right_schema=schema, left_time="t", right_time="t")
>>> logic = IntervalJoinLogic(spec)
>>> _ = logic.on_batch(pl.DataFrame({"ad": ["a"], "t": [5]}), pl.DataFrame(schema=schema), watermark_before=None, watermark_after=0)
>>> state = tempfile.mkdtemp()
>>> left, _ = JoinSideStore.pair(state, "p", spec)
>>> left.append(logic.take_delta()[0], batch_id=1, epoch=1)
2
>>> CommitLog(state).mark("p", epoch=1, batch_id=1)
>>> left.load().select("ad", "t").rows()
[('a', 5)]
"""

from __future__ import annotations

from collections.abc import Collection

import polars as pl
import pyarrow as pa
from lockgate.errors import StorageError
from lockgate.operators.join_rows import ROW_ID, JoinRowsDelta, StreamJoinSpec
from lockgate.storage.commit_log import CommitLog
from lockgate.storage.lance_io import open_dataset
from lockgate.storage.row_tags import BATCH, DELETED, INTERNAL_COLUMNS, latest_rows, tag_fields
from lockgate.storage.state import forget_state_rows, state_rows, state_uri, write_state_rows

__all__ = ["JOIN_SIDE_KEY", "JoinSideStore", "read_join_side"]

#: the schema metadata key that marks a table as one side of a stream join (its value: the side)
JOIN_SIDE_KEY = b"lockgate.join_side"
_SHARD_KEY = b"lockgate.join_shard"
_META = (*INTERNAL_COLUMNS, DELETED)


class JoinSideStore:
    """The durable copy of one side's buffered rows of a stream join."""

    def __init__(self, state: str, pipeline: str, name: str, side: str, schema: pl.Schema, shard: str | None = None) -> None:
        self.state = str(state)
        self.shard = shard  # the column of the input partition each row belongs to, when the state is kept per partition
        self.pipeline = pipeline
        self.name = name
        self.side = side
        self.uri = state_uri(self.state, pipeline, name)
        fields = pl.DataFrame(schema=schema).to_arrow(compat_level=pl.CompatLevel.oldest()).schema
        for tag_field in [*tag_fields(), pa.field(DELETED, pa.bool_())]:
            fields = fields.append(tag_field)
        self.arrow_schema = fields.with_metadata({JOIN_SIDE_KEY: side.encode(), _SHARD_KEY: (shard or "").encode()})
        self.appended = 0  # rows appended since the last load (for the snapshot decision)
        self.loaded_rows = 0  # rows the last load scanned

    @staticmethod
    def pair(state: str, pipeline: str, spec: StreamJoinSpec) -> tuple[JoinSideStore, JoinSideStore]:
        """The left and the right store of ``spec``'s join (tables ``<join>.left`` and ``<join>.right``)."""
        return (
            JoinSideStore(state, pipeline, f"{spec.name}.left", "left", spec.state_schema("left"), spec.shard),
            JoinSideStore(state, pipeline, f"{spec.name}.right", "right", spec.state_schema("right"), spec.shard),
        )

    def append(self, delta: JoinRowsDelta, *, batch_id: int, epoch: int) -> int | None:
        """Append the side's upserts, then its deletes as tombstones; the table version, or None when empty."""
        return self.append_rows(state_rows(self.arrow_schema, delta.upserts, delta.deletes, batch_id, epoch))

    def append_rows(self, rows: pa.Table | None) -> int | None:
        """Append a delta already built by :func:`~lockgate.storage.state.state_rows`; as :meth:`append`."""
        version, count = write_state_rows(self.uri, rows, f"join {self.name!r}")
        self.appended += count
        return version

    def forget_before(self, epoch: int, shards: Collection[int] | None) -> int:
        """Delete the rows of epochs before ``epoch`` (which committed a snapshot of ``shards``); returns how many."""
        return forget_state_rows(self.uri, epoch, self.shard, shards, f"join {self.name!r}")

    def load(self, shards: Collection[int] | None = None) -> pl.DataFrame:
        """The committed buffered rows (the latest row of each id, tombstones applied); of ``shards`` only, when given."""
        rows, scanned = _load(self.state, self.uri, self.arrow_schema, self.shard, shards)
        self.loaded_rows, self.appended = scanned, 0
        return rows


def _load(
    state: str, uri: str, arrow_schema: pa.Schema | None = None, shard: str | None = None, shards: Collection[int] | None = None,
) -> tuple[pl.DataFrame, int]:
    ds = open_dataset(uri)
    if ds is None:
        assert arrow_schema is not None
        return pl.from_arrow(arrow_schema.empty_table()).drop(_META), 0  # type: ignore[union-attr]
    committed = CommitLog(state).committed_batches()
    scan = pl.scan_pyarrow_dataset(ds).filter(pl.col(BATCH).is_in(committed.implode()))
    if shard is not None and shards is not None:  # tombstones carry the shard too
        scan = scan.filter(pl.col(shard).is_in(pl.Series(sorted(shards), dtype=pl.Int32).implode()))
    latest, scanned = pl.collect_all([
        latest_rows(scan, [ROW_ID] if shard is None else [shard, ROW_ID]).filter(~pl.col(DELETED)).drop(_META).sort(ROW_ID),
        scan.select(pl.len()),
    ])
    return latest, int(scanned.item())


def read_join_side(state: str, pipeline: str, operator: str) -> pl.DataFrame:
    """The committed buffered rows of one side of a stream join (``operator`` is ``<join>.left`` or ``<join>.right``)."""
    uri = state_uri(state, pipeline, operator)
    ds = open_dataset(uri)
    if ds is None:
        raise StorageError(f"no state for join side {operator!r} of pipeline {pipeline!r} under {state}")
    shard = (ds.schema.metadata or {}).get(_SHARD_KEY, b"").decode() or None
    return _load(state, uri, shard=shard)[0]
