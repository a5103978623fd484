"""The commit log: one prepare record per (batch, input partition), one commit mark per batch, horizons.

The commit path only appends (see docs/architecture.md, "State in LanceDB").  A batch's
*prepare* records name the offsets it read; its *commit* mark, written once Kafka
committed the batch, makes its rows visible to readers, who take the set of
marked batches from one version of the log.  After a crash, :meth:`CommitLog.recover`
redoes the marks that were lost from the group's committed offsets.  A *horizon*
records that an operator's (or a table's) rows before an epoch are no longer
kept, and :func:`check_history` refuses ``as_of`` reads from before it.

Examples
--------
>>> import tempfile
>>> from lockgate.storage.commit_log import CommitLog, PartitionRange
>>> log = CommitLog(tempfile.mkdtemp())
>>> log.prepare("clicks", epoch=1, batch_id=7, ranges=[PartitionRange("clicks", 0, 0, 2)], tables={"views": None})
>>> log.committed_batches().to_list()          # prepared, not committed
[]
>>> log.recover("clicks", {("clicks", 0): (2, 7)})   # Kafka committed offset 2 for batch 7: redo its mark
[7]
>>> log.committed_batches().to_list()
[7]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
from lockgate.errors import PipelineDefinitionError, StorageError
from lockgate.storage.lance_io import append_table, open_dataset, sql_list, table_uri

__all__ = ["COMMITS_TABLE", "CommitLog", "PartitionRange", "check_history", "marked_ends"]

COMMITS_TABLE = "_lockgate_commits"

_COMMIT_SCHEMA = pa.schema(
    [
        ("pipeline", pa.string()),
        ("kind", pa.string()),
        ("epoch", pa.int64()),
        ("batch_id", pa.int64()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("first_offset", pa.int64()),
        ("next_offset", pa.int64()),
        ("tables", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("max_event_time", pa.int64()),
        ("prev_batch_id", pa.int64()),
    ]
)


@dataclass(frozen=True)
class PartitionRange:
    """The offsets ``[first_offset, next_offset)`` of one input partition in a batch."""

    topic: str
    partition: int
    first_offset: int
    next_offset: int


class CommitLog:
    """The append-only log of prepared and committed micro-batches under one state URI."""

    def __init__(self, state: str) -> None:
        self.state = str(state)
        self.uri = table_uri(self.state, COMMITS_TABLE)

    def _rows(self, rows: list[dict[str, Any]]) -> None:
        """Append log rows; the columns a row leaves out are null (a mark has no offsets, for one)."""
        self.write(pa.Table.from_pylist(rows, schema=_COMMIT_SCHEMA))

    def write(self, rows: pa.Table | None) -> None:
        """Append rows built by :meth:`prepare_rows` (nothing when None)."""
        if rows is not None:
            append_table(self.uri, rows)

    def prepare(self, pipeline: str, **fields: Any) -> None:
        """Record that a batch wrote its tables for its input ranges: :meth:`prepare_rows` (the same arguments), then :meth:`write`."""
        self.write(self.prepare_rows(pipeline, **fields))

    def prepare_rows(
        self,
        pipeline: str,
        *,
        epoch: int,
        batch_id: int,
        ranges: Iterable[PartitionRange],
        tables: Mapping[str, int | None],
        event_times: Mapping[tuple[str, int], int | None] | None = None,
        prev: Mapping[tuple[str, int], int | None] | None = None,
    ) -> pa.Table | None:
        """The log rows that record ``batch_id`` (name -> version, None when written at the same time), built apart from their write.

        Readers never go by these versions: they read the rows of marked batches.

        ``event_times`` holds each partition's maximum event time so far (for its watermark);
        ``prev`` names, per partition, the batch this one follows on the partition's chain
        (the one whose committed offset it starts from), so recovery can walk the chain back.
        None when there is nothing to record.  The runner builds them as it starts an
        epoch; they travel in the epoch's prepare record and are written with its mark
        after its Kafka commit (see ``EpochTransaction.build_rows``).

        >>> import tempfile
        >>> log = CommitLog(tempfile.mkdtemp())
        >>> rows = log.prepare_rows("p", epoch=1, batch_id=7, ranges=[PartitionRange("t", 0, 0, 5)], tables={})
        >>> rows.column("kind").to_pylist(), rows.column("batch_id").to_pylist()
        (['prepare'], [7])
        """
        now = datetime.now(UTC)
        encoded = json.dumps(dict(tables), sort_keys=True)
        rows = [
            {
                "pipeline": pipeline, "kind": "prepare", "epoch": epoch, "batch_id": batch_id,
                "topic": r.topic, "partition": r.partition, "first_offset": r.first_offset,
                "next_offset": r.next_offset, "tables": encoded, "ts": now,
                "max_event_time": (event_times or {}).get((r.topic, r.partition)),
                "prev_batch_id": (prev or {}).get((r.topic, r.partition)),
            }
            for r in ranges
        ]
        return pa.Table.from_pylist(rows, schema=_COMMIT_SCHEMA) if rows else None

    def mark_rows(self, pipeline: str, marks: Iterable[tuple[int, int]]) -> pa.Table:
        """The commit marks of these (epoch, batch id) as log rows, built apart from their write (see :meth:`write`)."""
        return pa.Table.from_pylist([self._mark_row(pipeline, epoch, batch_id) for epoch, batch_id in marks], schema=_COMMIT_SCHEMA)

    @staticmethod
    def _mark_row(pipeline: str, epoch: int, batch_id: int) -> dict[str, Any]:
        return {"pipeline": pipeline, "kind": "commit", "epoch": epoch, "batch_id": batch_id, "ts": datetime.now(UTC)}

    def rewriting(self, pipeline: str, *, epoch: int, batch_id: int) -> None:
        """Record that ``batch_id``'s rows are being written again (a recovery): readers then take one copy of each of its rows.

        Written before the rewrite's first row.  Only a recovery writes a batch a
        second time (an instance that lost its partitions while it was stopped may
        still write the batch it had committed, at the same time), so only the rows
        of these batches can repeat; :func:`~lockgate.storage.row_tags.once` drops
        the repeats.
        """
        self._rows([{"pipeline": pipeline, "kind": "rewrite", "epoch": epoch, "batch_id": batch_id, "ts": datetime.now(UTC)}])

    def rewritten_batches(self, log: pl.DataFrame | None = None) -> pl.Series:
        """Ids of the batches some recovery wrote again (see :meth:`rewriting`): their rows may be there twice."""
        log = self.frame() if log is None else log
        return log.filter(pl.col("kind") == "rewrite")["batch_id"].unique()

    def mark(self, pipeline: str, *, epoch: int, batch_id: int) -> None:
        """Mark ``batch_id`` committed: a hint for readers, redone by recovery when missing."""
        self._rows([self._mark_row(pipeline, epoch, batch_id)])

    def horizon(self, pipeline: str, operator: str, epoch: int, moment: datetime) -> None:
        """Record that the state of ``operator`` before ``epoch`` (committed at ``moment``) is no longer kept."""
        self._rows([{"pipeline": pipeline, "kind": "horizon", "epoch": epoch, "topic": operator, "ts": moment}])

    def settled(self, pipeline: str, epoch: int, log: pl.DataFrame | None = None) -> tuple[pl.Series, datetime] | None:
        """The batches every read ``as_of`` ``epoch`` or later sees, and the moment ``epoch`` was marked.

        None while ``epoch`` of ``pipeline`` has no commit mark yet.  The batches are
        those marked with an epoch up to ``epoch`` and by that moment, so a read
        ``as_of`` that epoch or later, or that moment or later, reads all of them.
        """
        log = self.frame() if log is None else log
        marks = log.filter(pl.col("kind") == "commit")
        own = marks.filter((pl.col("pipeline") == pipeline) & (pl.col("epoch") == epoch))
        if own.height == 0:
            return None
        moment = own["ts"].max()
        assert isinstance(moment, datetime)
        ids = marks.filter((pl.col("epoch") <= epoch) & (pl.col("ts") <= moment))["batch_id"].unique()
        return ids, moment

    def trim(self, keep: int = 100, log: pl.DataFrame | None = None) -> int:
        """Delete the prepare records of committed batches older than the last ``keep`` on every partition they read.

        Recovery, watermarks and dead-batch cleanup only look at the latest committed
        batches of a partition and the ones after them; readers need only the marks.
        A batch is trimmed when it is marked and, on each of its partitions, ``keep``
        newer marked batches follow.  Returns how many batches were trimmed.
        """
        log = self.frame() if log is None else log
        marked = log.filter(pl.col("kind") == "commit")["batch_id"].implode()
        ranked = log.filter((pl.col("kind") == "prepare") & pl.col("batch_id").is_in(marked)).with_columns(
            pl.col("epoch").rank("ordinal", descending=True).over("pipeline", "topic", "partition").alias("__newer")
        )
        old = ranked.group_by("batch_id").agg((pl.col("__newer") > keep).all().alias("old")).filter("old")["batch_id"]
        if old.len() == 0:
            return 0
        ds = open_dataset(self.uri)
        assert ds is not None
        for start in range(0, old.len(), 1_000):
            ds.delete(f"kind = 'prepare' AND batch_id IN ({sql_list(old.slice(start, 1_000))})")
        return old.len()

    def frame(self) -> pl.DataFrame:
        """The whole log (one consistent version) as a frame."""
        ds = open_dataset(self.uri)
        if ds is None:
            return pl.DataFrame(schema=pl.Schema(pl.from_arrow(_COMMIT_SCHEMA.empty_table()).schema))
        out = pl.from_arrow(ds.to_table())
        assert isinstance(out, pl.DataFrame)
        return out

    def committed_batches(self, *, as_of: int | datetime | None = None, log: pl.DataFrame | None = None) -> pl.Series:
        """Ids of the committed batches, optionally as of an epoch number or a datetime."""
        log = self.frame() if log is None else log
        marks = log.filter(pl.col("kind") == "commit")
        if isinstance(as_of, datetime):
            moment = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
            marks = marks.filter(pl.col("ts") <= moment)
        elif isinstance(as_of, int):
            marks = marks.filter(pl.col("epoch") <= as_of)
        elif as_of is not None:
            raise PipelineDefinitionError(f"as_of={as_of!r}: give an epoch number (int) or a datetime")
        return marks["batch_id"].unique()

    def event_times(self, pipeline: str) -> dict[tuple[str, int], int]:
        """Each partition's maximum event time as of its last committed batch."""
        log = self.frame().filter(pl.col("pipeline") == pipeline)
        committed = log.filter(pl.col("kind") == "commit")["batch_id"].implode()
        last = (
            log.filter((pl.col("kind") == "prepare") & pl.col("batch_id").is_in(committed) & pl.col("max_event_time").is_not_null())
            .sort("epoch")
            .group_by("topic", "partition")
            .agg(pl.col("max_event_time").max())
        )
        return {(t, p): v for t, p, v in last.iter_rows()}

    def read_to(self, pipeline: str, log: pl.DataFrame | None = None) -> dict[tuple[str, int], int]:
        """Each input partition's offset that the marked batches of ``pipeline`` have read to (the largest next offset).

        A batch that is not marked and ended before it on some partition can never be
        marked: the batches of a partition are marked in the order they committed.

        >>> import tempfile
        >>> log = CommitLog(tempfile.mkdtemp())
        >>> log.prepare("clicks", epoch=1, batch_id=7, ranges=[PartitionRange("clicks", 0, 0, 5)], tables={})
        >>> log.read_to("clicks")
        {}
        >>> log.mark("clicks", epoch=1, batch_id=7)
        >>> log.read_to("clicks")
        {('clicks', 0): 5}
        """
        ends = marked_ends(self.frame() if log is None else log).filter(pl.col("pipeline") == pipeline)
        return {(t, p): v for t, p, v in ends.select("topic", "partition", "passed").iter_rows()}

    def last_epoch(self, pipeline: str) -> int:
        """The highest epoch this pipeline has prepared (0 when none)."""
        log = self.frame().filter(pl.col("pipeline") == pipeline)
        return int(log["epoch"].max() or 0)  # type: ignore[arg-type]

    def recover(self, pipeline: str, committed: Mapping[tuple[str, int], tuple[int, int | None]]) -> list[int]:
        """Redo missing commit marks from the group's committed offsets.

        ``committed`` maps each partition to its committed offset ``C`` and the batch
        id that the offset's metadata names (None if it names none).  That batch is
        the last committed epoch of the partition; without an id, it is the latest
        prepared batch whose next offset is ``C``.  From it, the partition's chain is
        walked back through each prepare record's ``prev_batch_id`` until a marked
        batch: every batch on the way committed in Kafka (the runner begins a Kafka
        transaction only after the previous one committed) and is marked now.  Batches
        prepared but not on a chain were aborted (or written by a fenced zombie): no
        mark is ever written for them, so readers never see their rows.  Returns the
        batch ids whose marks were redone, oldest first.

        Since the deferred prepare (``engine.prepares``) a batch's prepare rows are
        written in the same append as its mark, so a log written since has nothing
        for this to redo; it stays for a state directory written before, whose last
        marks (which travelled with the next epoch's prepare) a crash may have lost.
        """
        log = self.frame().filter(pl.col("pipeline") == pipeline)
        if log.height == 0 or not committed:
            return []
        marked = set(log.filter(pl.col("kind") == "commit")["batch_id"].to_list())
        prepared = log.filter(pl.col("kind") == "prepare")
        wanted: dict[int, int] = {}
        for (topic, partition), (offset, batch_id) in committed.items():
            rows = prepared.filter((pl.col("topic") == topic) & (pl.col("partition") == partition))
            links = {b: (e, prev) for b, e, prev in rows.select("batch_id", "epoch", "prev_batch_id").iter_rows()}
            if batch_id is None:
                hits = rows.filter(pl.col("next_offset") == offset).sort("epoch")
                batch_id = hits["batch_id"][-1] if hits.height else None
            seen: set[int] = set()
            while batch_id is not None and batch_id in links and batch_id not in marked and batch_id not in seen:
                seen.add(batch_id)
                epoch, prev = links[batch_id]
                wanted[batch_id] = epoch
                batch_id = prev
        redone = []
        for batch_id, epoch in sorted(wanted.items(), key=lambda kv: kv[1]):
            self.mark(pipeline, epoch=epoch, batch_id=batch_id)
            redone.append(batch_id)
        return redone


def marked_ends(log: pl.DataFrame) -> pl.DataFrame:
    """Per pipeline and input partition, the largest next offset of its marked batches (column ``passed``).

    The batches of a partition are marked in the order they committed, so a batch
    not marked that ended before it there is on no chain the committed offsets lead
    to (compaction's dead batches, ``trim_prepares``' earlier runs).

    >>> import polars as pl
    >>> log = pl.DataFrame({"pipeline": ["p", "p", "p"], "kind": ["prepare", "commit", "prepare"], "batch_id": [7, 7, 8],
    ...                     "topic": ["t", None, "t"], "partition": [0, None, 0], "next_offset": [5, None, 9]})
    >>> marked_ends(log).rows()
    [('p', 't', 0, 5)]
    """
    marked = log.filter(pl.col("kind") == "commit")["batch_id"].implode()
    return (
        log.filter((pl.col("kind") == "prepare") & pl.col("batch_id").is_in(marked))
        .group_by("pipeline", "topic", "partition")
        .agg(pl.col("next_offset").max().alias("passed"))
    )


def check_history(log: pl.DataFrame, pipeline: str | None, operator: str, as_of: int | datetime, what: str) -> None:
    """Refuse an ``as_of`` read from before the history that ``operator`` let go of (its last horizon).

    ``pipeline`` None: a horizon of any pipeline counts.  ``what`` names the
    operator in the error, e.g. ``"window 'per_minute' of pipeline 'clicks'"``.
    """
    horizons = log.filter((pl.col("kind") == "horizon") & (pl.col("topic") == operator))
    if pipeline is not None:
        horizons = horizons.filter(pl.col("pipeline") == pipeline)
    if horizons.height == 0:
        return
    last = horizons.sort("epoch").tail(1)
    epoch, moment = int(last["epoch"][0]), last["ts"][0]
    if isinstance(as_of, datetime):
        too_old = (as_of if as_of.tzinfo else as_of.replace(tzinfo=moment.tzinfo)) < moment
    else:
        too_old = as_of < epoch
    if too_old:
        raise StorageError(
            f"{what}: as_of={as_of!r} is before epoch {epoch} ({moment:%Y-%m-%d %H:%M:%S} UTC), the oldest state "
            "still kept; history is deleted Pipeline(keep_history=...) after a snapshot or a later update supersedes it"
        )
