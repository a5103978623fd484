"""Table sinks and the commit log in LanceDB, with committed-only reads.

The commit path only appends (see DESIGN.md, "State in LanceDB"): every sink row
carries the id of the micro-batch that wrote it (``_lg_batch``), and the commit log
holds one *prepare* record per (batch, input partition) and one *commit* mark per
batch.  A reader takes the set of marked batches from one version of the log and
reads only their rows, so it never sees a half-written or aborted batch.

Examples
--------
>>> import tempfile, polars as pl
>>> from lockgate.storage.tables import CommitLog, SinkTable, PartitionRange, read_table
>>> state = tempfile.mkdtemp()
>>> log, sink = CommitLog(state), SinkTable(state, "views")
>>> version = sink.append(pl.DataFrame({"user": ["a", "b"]}), batch_id=7, epoch=1)
>>> log.prepare("clicks", epoch=1, batch_id=7, ranges=[PartitionRange("clicks", 0, 0, 2)], tables={"views": version})
>>> read_table(state, "views").collect().height     # prepared, not committed
0
>>> log.mark("clicks", epoch=1, batch_id=7)
>>> read_table(state, "views").collect()["user"].to_list()
['a', 'b']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import lance
import polars as pl
import pyarrow as pa
from lockgate.errors import PipelineDefinitionError, StorageError

__all__ = [
    "INTERNAL_COLUMNS", "CommitLog", "PartitionRange", "SinkTable", "check_history", "latest_rows", "list_tables", "read_table",
    "table_horizon", "table_uri",
]

COMMITS_TABLE = "_lockgate_commits"
INTERNAL_COLUMNS = ("_lg_batch", "_lg_epoch", "_lg_order")

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


def table_uri(state: str, name: str) -> str:
    """Where table ``name`` lives under the state URI ``state``."""
    return f"{str(state).rstrip('/')}/{name}.lance"


def sql_list(values: Iterable[int]) -> str:
    """Integers as the inside of an SQL ``IN (...)`` for a Lance delete filter."""
    return ", ".join(str(int(v)) for v in values)


def _open(uri: str, version: int | None = None) -> lance.LanceDataset | None:
    try:
        return lance.dataset(uri, version=version)
    except (ValueError, FileNotFoundError, OSError) as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower() or isinstance(exc, FileNotFoundError):
            return None
        raise StorageError(f"cannot open the LanceDB table at {uri}: {exc}") from exc


#: table URIs this process has seen exist: appending to one needs no open first (an open reads
#: its latest manifest, 3-4 ms once a table has a few hundred versions)
_EXISTING: set[str] = set()


def _append(uri: str, data: pa.Table) -> int:
    """Append ``data`` (creating the table on first write); return the new version."""
    try:
        mode = "append" if uri in _EXISTING or _open(uri) is not None else "create"
        try:
            ds = lance.write_dataset(data, uri, mode=mode)
        except OSError as exc:
            if mode == "create" and "already exists" in str(exc).lower():  # a concurrent first writer won
                ds = lance.write_dataset(data, uri, mode="append")
            else:
                raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise StorageError(f"cannot write the LanceDB table at {uri}: {exc}") from exc
    _EXISTING.add(uri)
    return ds.version


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
        _append(self.uri, pa.Table.from_pylist(rows, schema=_COMMIT_SCHEMA))

    def prepare(
        self,
        pipeline: str,
        *,
        epoch: int,
        batch_id: int,
        ranges: Iterable[PartitionRange],
        tables: Mapping[str, int | None],
        marks: Iterable[tuple[int, int]] = (),
        event_times: Mapping[tuple[str, int], int | None] | None = None,
        prev: Mapping[tuple[str, int], int | None] | None = None,
    ) -> None:
        """Record that ``batch_id`` wrote ``tables`` (name -> version, None when written at the same time) for these input ranges.

        Readers never go by these versions: they read the rows of marked batches.

        ``marks`` (epoch, batch id) of earlier, committed batches are written in the same append;
        ``event_times`` holds each partition's maximum event time so far (for its watermark);
        ``prev`` names, per partition, the batch this one follows on the partition's chain
        (the one whose committed offset it starts from), so recovery can walk the chain back.
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
        rows += [self._mark_row(pipeline, epoch_, batch_) for epoch_, batch_ in marks]
        if rows:
            self._rows(rows)

    @staticmethod
    def _mark_row(pipeline: str, epoch: int, batch_id: int) -> dict[str, Any]:
        return {"pipeline": pipeline, "kind": "commit", "epoch": epoch, "batch_id": batch_id, "ts": datetime.now(UTC)}

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
        ds = _open(self.uri)
        assert ds is not None
        for start in range(0, old.len(), 1_000):
            ds.delete(f"kind = 'prepare' AND batch_id IN ({sql_list(old.slice(start, 1_000))})")
        return old.len()

    def frame(self) -> pl.DataFrame:
        """The whole log (one consistent version) as a frame."""
        ds = _open(self.uri)
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
        transaction only after the previous one committed) and is marked now.  Marks
        travel with later appends, so a crash can lose several of them, not only the
        last one.  Batches prepared but not on a chain were aborted (or written by a
        fenced zombie): no mark is ever written for them, so readers never see their
        rows.  Returns the batch ids whose marks were redone, oldest first.
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


class SinkTable:
    """An append-only LanceDB table that a ``to_table`` sink writes.

    With ``upsert_keys`` (an update-mode window stream), readers see only the
    latest row of each key, so the table holds the current value of each window.
    The rows that later committed rows supersede are deleted by :meth:`prune`,
    so such a table does not keep every update it ever had.
    """

    def __init__(self, state: str, name: str, upsert_keys: Iterable[str] | None = None) -> None:
        if not name or name.startswith("_lockgate") or "/" in name:
            raise PipelineDefinitionError(f"to_table: {name!r} is not a usable table name; use letters, digits and '_'")
        self.state = str(state)
        self.name = name
        self.uri = table_uri(self.state, name)
        self.upsert_keys = None if upsert_keys is None else list(upsert_keys)
        #: rows in the table (counted once, then kept up to date; an estimate while a prune runs)
        self.rows: int | None = None
        #: rows left by the last prune (0 before one ran) and whether one is scheduled
        self.live = 0
        self.prune_pending = False

    def append(self, frame: pl.DataFrame, *, batch_id: int, epoch: int) -> int:
        """Append a batch's rows tagged with its batch id; return the table version."""
        tagged = frame.with_columns(
            pl.lit(batch_id, dtype=pl.Int64).alias("_lg_batch"),
            pl.lit(epoch, dtype=pl.Int64).alias("_lg_epoch"),
            pl.int_range(pl.len(), dtype=pl.Int64).alias("_lg_order"),
        )
        data = tagged.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self.upsert_keys is not None:
            data = data.replace_schema_metadata({"lockgate.upsert_keys": json.dumps(self.upsert_keys)})
        try:
            version = _append(self.uri, data)
        except StorageError as exc:
            raise StorageError(f"to_table {self.name!r}: {exc}") from exc
        if self.rows is not None:
            self.rows += frame.height
        return version

    def prune_due(self, floor: int) -> bool:
        """Whether an update-mode table holds more than ``max(floor, 4 x live)`` rows and no prune is scheduled."""
        if self.upsert_keys is None or self.prune_pending:
            return False
        if self.rows is None:
            ds = _open(self.uri)
            self.rows = 0 if ds is None else ds.count_rows()
        return self.rows > max(floor, 4 * self.live)

    def prune(self, committed: pl.Series) -> int:
        """Delete the rows that a later row of the same key among the ``committed`` batches supersedes.

        ``committed``: ids of committed batches (an epoch's and everything marked
        before it).  A key's latest row among them stays, unless it retracts the
        window, which then has no row left to hide.  Rows of other batches (in
        flight, later, or never committed) are not touched.  Every read that sees
        all of ``committed`` (``as_of`` at or after them, see ``CommitLog.horizon``)
        reads the same as before.  Returns how many rows were deleted.
        """
        keys = self.upsert_keys
        ds = _open(self.uri)
        if keys is None or ds is None:
            return 0
        retracts = "retracted" in ds.schema.names
        columns = [*keys, *INTERNAL_COLUMNS, *(["retracted"] if retracts else [])]
        rows = pl.scan_pyarrow_dataset(ds).select(columns).filter(pl.col("_lg_batch").is_in(committed.implode()))
        kept = latest_rows(rows, keys)  # the rule every reader applies
        if retracts:
            kept = kept.filter(~pl.col("retracted").fill_null(False))
        row_id = ["_lg_batch", "_lg_order"]
        gone = rows.select(row_id).join(kept.select(row_id), on=row_id, how="anti").collect()
        deleted = 0
        try:
            for chunk in gone.sort("_lg_batch", "_lg_order").iter_slices(50_000):
                where = " OR ".join(
                    f"(_lg_batch = {batch} AND _lg_order IN ({sql_list(orders)}))"
                    for batch, orders in chunk.group_by("_lg_batch", maintain_order=True).agg("_lg_order").iter_rows()
                )  # per batch of a chunk: the rows are named by value, so a concurrent compaction cannot move them
                ds.delete(where)
                deleted += chunk.height
                ds = _open(self.uri)
                assert ds is not None
        except (OSError, ValueError, RuntimeError) as exc:
            raise StorageError(f"to_table {self.name!r}: deleting the rows that later updates superseded failed: {exc}") from exc
        self.rows = self.live = ds.count_rows()
        return deleted


def latest_rows(frame: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """The last row of each key, by ``(_lg_epoch, _lg_order)``: what an upsert or a state delta left.

    Only the rows of keys that have more than one are sorted: in a state load most
    keys have one row (1M pairs, 1% updated: 0.64 -> 0.13 s here).  The keys of one
    row come first, in ``frame``'s order, then the others in the order of their
    last row.

    >>> rows = pl.LazyFrame({"k": ["a", "b", "a"], "v": [1, 2, 3], "_lg_epoch": [1, 1, 2], "_lg_order": [0, 1, 0]})
    >>> latest_rows(rows, ["k"]).collect().select("k", "v").rows()
    [('b', 2), ('a', 3)]
    """
    marked = frame.with_columns((pl.len().over(keys) > 1).alias("__lg_many"))
    return pl.concat([
        marked.filter(~pl.col("__lg_many")),
        marked.filter(pl.col("__lg_many")).sort("_lg_epoch", "_lg_order").unique(keys, keep="last", maintain_order=True),
    ]).drop("__lg_many")


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


def table_horizon(name: str) -> str:
    """The commit-log key (``topic`` of a horizon row) of table sink ``name``."""
    return f"table:{name}"


def list_tables(state: str) -> list[str]:
    """Names of the sink tables under ``state``."""
    import lancedb

    db = lancedb.connect(str(state))
    names: list[str] = []
    token = None
    while True:
        page = db.list_tables(page_token=token)
        names.extend(page.tables)
        token = page.page_token
        if not token:
            break
    return sorted(n for n in names if not n.startswith("_lockgate"))


def read_table(state: str, name: str, as_of: int | datetime | None = None) -> pl.LazyFrame:
    """The committed rows of table ``name`` as a ``pl.LazyFrame``, consistent as of one log version.

    Parameters
    ----------
    state
        The state URI the pipeline writes to (``lg.Pipeline(state=...)``).
    name
        The table, as given to ``to_table``.
    as_of
        An epoch number or a datetime: only batches committed by then.

    Examples
    --------
    On the broker at ``$LOCKGATE_BROKERS`` (else ``localhost:9092``), 1,000 sample clicks
    into a table, then the three most visited pages; the query runs on the committed rows:

    >>> import tempfile
    >>> import polars as pl
    >>> import lockgate as lg
    >>> topic = lg.sample_clicks(records=1_000, seed=1)
    >>> state = tempfile.mkdtemp()
    >>> pipe = lg.Pipeline(topic, state=state)
    >>> pipe.source(topic, format=lg.JSON(schema={"user": pl.String, "url": pl.String})).to_table("clicks")
    >>> _ = pipe.run(until="caught_up")
    >>> lg.read_table(state, "clicks").group_by("url").len().sort("len", "url", descending=True).head(3).collect()
    shape: (3, 2)
    ┌───────┬─────┐
    │ url   ┆ len │
    │ ---   ┆ --- │
    │ str   ┆ u32 │
    ╞═══════╪═════╡
    │ /p/29 ┆ 35  │
    │ /p/22 ┆ 33  │
    │ /p/10 ┆ 31  │
    └───────┴─────┘
    """
    log = CommitLog(state)
    frame = log.frame()  # read the log first: every committed row is then in the table
    if as_of is not None:
        check_history(frame, None, table_horizon(name), as_of, f"table {name!r}")
    ids = log.committed_batches(as_of=as_of, log=frame)
    ds = _open(table_uri(state, name))
    if ds is None:
        raise StorageError(f"no table {name!r} under {state}; the tables there are {list_tables(state)}")
    scan = pl.scan_pyarrow_dataset(ds).filter(pl.col("_lg_batch").is_in(ids.implode()))
    upsert = (ds.schema.metadata or {}).get(b"lockgate.upsert_keys")
    if upsert is not None:  # the latest committed row of each key; a retracted window disappears
        keys = json.loads(upsert)
        scan = latest_rows(scan, keys)
        if "retracted" in ds.schema.names:
            scan = scan.filter(~pl.col("retracted")).drop("retracted")
    return scan.drop(INTERNAL_COLUMNS)
