"""Sink tables: what ``to_table`` writes, and committed-only reads of them.

Every row a batch appends carries the batch's id (:mod:`lockgate.storage.row_tags`);
a reader takes the set of committed batches from one version of the commit log and
reads only their rows, so it never sees a half-written or aborted batch.  An
update-mode table (``upsert_keys``) reads as the latest row of each key, and has
the rows later updates superseded pruned once :func:`~lockgate.storage.retention.history_due`.

Examples
--------
>>> import tempfile, polars as pl
>>> from lockgate.storage.commit_log import CommitLog, PartitionRange
>>> from lockgate.storage.sink_tables import SinkTable, read_table
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
from datetime import datetime

import polars as pl
import pyarrow as pa
from lockgate.errors import PipelineDefinitionError, StorageError
from lockgate.storage.commit_log import CommitLog, check_history
from lockgate.storage.lance_io import append_table, open_dataset, sql_list, storage_options, table_uri, use_storage_options
from lockgate.storage.retention import history_due
from lockgate.storage.row_tags import BATCH, INTERNAL_COLUMNS, ORDER, latest_rows, once, tag

__all__ = ["SinkTable", "list_tables", "read_table", "table_horizon"]


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
        """Append a batch's rows tagged with its batch id (:meth:`rows_of`, then :meth:`append_rows`); return the table version."""
        return self.append_rows(self.rows_of(frame, batch_id=batch_id, epoch=epoch))

    def rows_of(self, frame: pl.DataFrame, *, batch_id: int, epoch: int) -> pa.Table:
        """A batch's rows as this table gets them: tagged with its batch id, as Arrow; built apart from their write.

        The runner builds them as it starts an epoch (``EpochTransaction.build_rows``), so
        a prepare's appender thread only writes.
        """
        data = tag(frame, batch_id=batch_id, epoch=epoch).to_arrow(compat_level=pl.CompatLevel.oldest())
        if self.upsert_keys is not None:
            data = data.replace_schema_metadata({"lockgate.upsert_keys": json.dumps(self.upsert_keys)})
        return data

    def append_rows(self, data: pa.Table) -> int:
        """Append rows built by :meth:`rows_of`; return the table version."""
        try:
            version = append_table(self.uri, data)
        except StorageError as exc:
            raise StorageError(f"to_table {self.name!r}: {exc}") from exc
        if self.rows is not None:
            self.rows += data.num_rows
        return version

    def prune_due(self, floor: int) -> bool:
        """Whether an update-mode table is due a prune and none is scheduled.

        Due by :func:`~lockgate.storage.retention.history_due` of its rows, the rows
        its last prune left (``live``) and ``floor`` (``Pipeline(snapshot_rows=...)``).
        """
        if self.upsert_keys is None or self.prune_pending:
            return False
        if self.rows is None:
            ds = open_dataset(self.uri)
            self.rows = 0 if ds is None else ds.count_rows()
        return history_due(self.rows, self.live, floor)

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
        ds = open_dataset(self.uri)
        if keys is None or ds is None:
            return 0
        retracts = "retracted" in ds.schema.names
        columns = [*keys, *INTERNAL_COLUMNS, *(["retracted"] if retracts else [])]
        rows = pl.scan_pyarrow_dataset(ds).select(columns).filter(pl.col(BATCH).is_in(committed.implode()))
        kept = latest_rows(rows, keys)  # the rule every reader applies
        if retracts:
            kept = kept.filter(~pl.col("retracted").fill_null(False))
        row_id = [BATCH, ORDER]
        gone = rows.select(row_id).join(kept.select(row_id), on=row_id, how="anti").collect()
        deleted = 0
        try:
            for chunk in gone.sort(*row_id).iter_slices(50_000):
                where = " OR ".join(
                    f"({BATCH} = {batch} AND {ORDER} IN ({sql_list(orders)}))"
                    for batch, orders in chunk.group_by(BATCH, maintain_order=True).agg(ORDER).iter_rows()
                )  # per batch of a chunk: the rows are named by value, so a concurrent compaction cannot move them
                ds.delete(where)
                deleted += chunk.height
                ds = open_dataset(self.uri)
                assert ds is not None
        except (OSError, ValueError, RuntimeError) as exc:
            raise StorageError(f"to_table {self.name!r}: deleting the rows that later updates superseded failed: {exc}") from exc
        self.rows = self.live = ds.count_rows()
        return deleted


def table_horizon(name: str) -> str:
    """The commit-log key (``topic`` of a horizon row) of table sink ``name``."""
    return f"table:{name}"


def list_tables(state: str) -> list[str]:
    """Names of the sink tables under ``state``."""
    import lancedb

    names: list[str] = []
    token = None
    try:
        db = lancedb.connect(str(state), storage_options=storage_options(str(state)))
        while True:
            page = db.list_tables(page_token=token)
            names.extend(page.tables)
            token = page.page_token
            if not token:
                break
    except (ValueError, OSError, RuntimeError) as exc:
        raise StorageError(f"cannot list the tables under {state}: {str(exc).splitlines()[0][:300]}") from exc
    return sorted(n for n in names if not n.startswith("_lockgate"))


def read_table(
    state: str, name: str, as_of: int | datetime | None = None, storage_options: Mapping[str, str] | None = None,
) -> pl.LazyFrame:
    """The committed rows of table ``name`` as a ``pl.LazyFrame``, consistent as of one log version.

    Parameters
    ----------
    state
        The state URI the pipeline writes to (``lg.Pipeline(state=...)``).
    name
        The table, as given to ``to_table``.
    as_of
        An epoch number or a datetime: only batches committed by then.
    storage_options
        Lance's object-store options for a state on S3 (``endpoint``, ``region``,
        ``access_key_id``, ``secret_access_key`` ...), as the pipeline was given them;
        needed once per process and state URI.

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
    if storage_options:
        use_storage_options(state, storage_options)
    log = CommitLog(state)
    frame = log.frame()  # read the log first: every committed row is then in the table
    if as_of is not None:
        check_history(frame, None, table_horizon(name), as_of, f"table {name!r}")
    ids = log.committed_batches(as_of=as_of, log=frame)
    ds = open_dataset(table_uri(state, name))
    if ds is None:
        raise StorageError(f"no table {name!r} under {state}; the tables there are {list_tables(state)}")
    scan = pl.scan_pyarrow_dataset(ds).filter(pl.col(BATCH).is_in(ids.implode()))
    upsert = (ds.schema.metadata or {}).get(b"lockgate.upsert_keys")
    if upsert is None:  # an append table: one copy of each row of a batch a recovery wrote again
        scan = once(scan, log.rewritten_batches(frame))
    if upsert is not None:  # the latest committed row of each key; a retracted window disappears
        keys = json.loads(upsert)
        scan = latest_rows(scan, keys)
        if "retracted" in ds.schema.names:
            scan = scan.filter(~pl.col("retracted")).drop("retracted")
    return scan.drop(INTERNAL_COLUMNS)
