"""Window state in LanceDB: append-only deltas per epoch, committed-only loads and reads.

Each window operator has one Lance table under
``<state>/_lockgate_state/<pipeline>/<operator>.lance``.  Every epoch appends the
rows it changed: partial aggregates of the (key, window) pairs it touched, kept
rows it added, and tombstones (``_lg_deleted``) for windows that closed or merged
away and rows no window needs any more.  Nothing is updated in place.  A load or
a read takes, per (key, window) or per kept row, the latest row of a committed
batch, so cost per batch grows with what the batch changes, not with the state.

The operator's spec travels in the table's schema metadata, so ``read_state``
works from another process that does not have the pipeline's code.

Examples
--------
>>> import tempfile, polars as pl
>>> from lockgate.operators.windows import Tumbling, WindowLogic, WindowSpec
>>> from lockgate.storage.state import WindowStore, read_state
>>> from lockgate.storage.commit_log import CommitLog
>>> spec = WindowSpec.build("per_min", Tumbling("1m"), by="user", aggs={"n": pl.len()},
...                        schema=pl.Schema({"user": pl.String, "__lg_t": pl.Int64}), time_column="__lg_t")
>>> state_dir = tempfile.mkdtemp()
>>> logic = WindowLogic(spec)
>>> _ = logic.on_batch(pl.DataFrame({"user": ["a", "a"], "__lg_t": [1, 2]}), watermark=0)
>>> store = WindowStore(state_dir, "clicks", spec)
>>> store.append(logic.take_delta(), batch_id=5, epoch=1)   # the table version (1 is the empty table)
2
>>> CommitLog(state_dir).mark("clicks", epoch=1, batch_id=5)
>>> read_state(state_dir, "clicks", "per_min").collect().select("user", "n").to_dicts()
[{'user': 'a', 'n': 2}]
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from lockgate.errors import StorageError
from lockgate.operators.windows import (
    Hopping,
    Session,
    Sliding,
    Tumbling,
    WindowDelta,
    WindowSpec,
    WindowState,
    current_values,
)
from lockgate.storage.commit_log import CommitLog, check_history
from lockgate.storage.lance_io import append_table, filesystem, open_dataset, sql_list, use_storage_options
from lockgate.storage.row_tags import BATCH, DELETED, EPOCH, INTERNAL_COLUMNS, ORDER, latest_rows, tag_fields

__all__ = [
    "WindowStore", "forget_state_rows", "list_states", "read_state", "spec_from_json", "spec_to_json", "state_rows", "state_uri",
    "write_state_rows",
]

_META = (*INTERNAL_COLUMNS, DELETED)


def state_uri(state: str, pipeline: str, operator: str) -> str:
    """Where a window operator's state table lives."""
    return f"{str(state).rstrip('/')}/_lockgate_state/{pipeline}/{operator}.lance"


def spec_to_json(spec: WindowSpec) -> str:
    """A window spec as JSON: window, keys, serialized aggregation expressions, schema."""
    window = spec.window
    if isinstance(window, Tumbling):
        w: dict[str, Any] = {"kind": "tumbling", "size_ms": window.size_ms}
    elif isinstance(window, Hopping):
        w = {"kind": "hopping", "size_ms": window.size_ms, "every_ms": window.every_ms}
    elif isinstance(window, Sliding):
        w = {"kind": "sliding", "size_ms": window.size_ms}
    else:
        w = {"kind": "session", "gap_ms": window.gap_ms}
    sink = io.BytesIO()
    pl.DataFrame(schema=spec.input_schema).write_ipc_stream(sink)
    return json.dumps(
        {
            "name": spec.name,
            "window": w,
            "by": list(spec.by),
            "aggs": {a.name: a.expr.meta.serialize(format="json") for a in spec.aggs},
            "time_column": spec.time_column,
            "allowed_lateness_ms": spec.allowed_lateness_ms,
            "emit": spec.emit,
            "shard": spec.shard,
            "input_schema": base64.b64encode(sink.getvalue()).decode(),
        }
    )


def spec_from_json(text: str) -> WindowSpec:
    """The inverse of :func:`spec_to_json`."""
    d = json.loads(text)
    w = d["window"]
    window = {
        "tumbling": lambda: Tumbling(f"{w['size_ms']}ms"),
        "hopping": lambda: Hopping(f"{w.get('size_ms')}ms", f"{w.get('every_ms')}ms"),
        "sliding": lambda: Sliding(f"{w.get('size_ms')}ms"),
        "session": lambda: Session(f"{w.get('gap_ms')}ms"),
    }[w["kind"]]()
    schema = pl.read_ipc_stream(base64.b64decode(d["input_schema"])).schema
    aggs = {k: pl.Expr.deserialize(io.StringIO(v), format="json") for k, v in d["aggs"].items()}
    return WindowSpec.build(
        d["name"], window, by=d["by"], aggs=aggs, schema=schema, time_column=d["time_column"],
        allowed_lateness=f"{d['allowed_lateness_ms']}ms", emit=d["emit"], shard=d.get("shard"),
    )


class WindowStore:
    """The durable copy of one window operator's state."""

    def __init__(self, state: str, pipeline: str, spec: WindowSpec) -> None:
        self.state = str(state)
        self.pipeline = pipeline
        self.spec = spec
        self.uri = state_uri(self.state, pipeline, spec.name)
        base = spec.row_schema() if spec.keeps_rows else spec.partial_schema()
        fields = pl.DataFrame(schema=base).to_arrow(compat_level=pl.CompatLevel.oldest()).schema
        for tag_field in [*tag_fields(), pa.field(DELETED, pa.bool_())]:
            fields = fields.append(tag_field)
        self.arrow_schema = fields.with_metadata({"lockgate.window_spec": spec_to_json(spec)})
        self.appended = 0  # rows appended since the last load (for the snapshot decision)
        self.loaded_rows = 0  # rows the last load scanned

    @property
    def name(self) -> str:
        """The operator's name (what the commit log's horizons and the epoch's writes call this store)."""
        return self.spec.name

    def append(self, delta: WindowDelta, *, batch_id: int, epoch: int) -> int | None:
        """Append a window logic's delta: its upserts, then its deletes as tombstones.

        Returns the table version, or None when the delta is empty.

        A snapshot delta (``delta.snapshot``) holds every open window (or kept row),
        not only the changed ones, with the epoch's tombstones: once the epoch has
        committed, the rows of earlier epochs of these shards are history that
        :meth:`forget_before` may delete.
        """
        return self.append_rows(state_rows(self.arrow_schema, delta.upserts, delta.deletes, batch_id, epoch))

    def append_rows(self, rows: pa.Table | None) -> int | None:
        """Append a delta already built by :func:`state_rows` (with this store's ``arrow_schema``); as :meth:`append`."""
        version, count = write_state_rows(self.uri, rows, f"window {self.spec.name!r}")
        self.appended += count
        return version

    def forget_before(self, epoch: int, shards: Collection[int] | None) -> int:
        """Delete the rows of epochs before ``epoch`` (of ``shards``, for a sharded operator); returns how many.

        Only after ``epoch`` committed a snapshot of those shards: every open window
        is then in it, and every closed one was closed by a tombstone before.  Reads
        ``as_of`` an earlier epoch are refused from then on (see :func:`read_state`).
        """
        return forget_state_rows(self.uri, epoch, self.spec.shard, shards, f"window {self.spec.name!r}")

    def load(
        self, watermark: int | None, *, as_of: int | datetime | None = None, shards: Collection[int] | None = None
    ) -> WindowState:
        """The committed state (latest row per window or kept row, tombstones applied).

        ``shards``: for a sharded operator (``spec.shard``), only the windows of these
        input partitions (the ones this instance owns); None loads every shard.
        """
        state, scanned = _load(self.state, self.uri, self.spec, watermark, as_of, shards, self.pipeline)
        self.loaded_rows, self.appended = scanned, 0
        return state


def state_rows(arrow_schema: pa.Schema, upserts: pl.DataFrame, deletes: pl.DataFrame, batch_id: int, epoch: int) -> pa.Table | None:
    """An operator's state delta as the rows its table gets: the upserts, then the deletes as tombstones (``_lg_deleted``).

    Rows are tagged with the batch and epoch and cast to ``arrow_schema`` (missing
    columns null); None when the delta is empty.  Built apart from the write: the
    runner thread builds them while it builds the epoch (it holds the GIL then
    anyway), and an appender thread only writes them.  Each Polars or pyarrow call
    here waits for the GIL once more, up to a switch interval beside a busy thread:
    ``bench/state_appends.py`` timed this build and write at 63 ms beside a busy
    Python thread, the write of a prebuilt table at 14 ms.
    """
    parts = [(frame.to_arrow(compat_level=pl.CompatLevel.oldest()), deleted) for frame, deleted in ((upserts, False), (deletes, True)) if frame.height]
    if not parts:
        return None
    rows = sum(t.num_rows for t, _ in parts)
    constants = {
        DELETED: lambda: pa.array(np.concatenate([np.full(t.num_rows, d) for t, d in parts])),
        BATCH: lambda: pa.array(np.full(rows, batch_id, dtype=np.int64)),
        EPOCH: lambda: pa.array(np.full(rows, epoch, dtype=np.int64)),
        ORDER: lambda: pa.array(np.arange(rows, dtype=np.int64)),
    }
    columns = []
    for f in arrow_schema:  # no Polars query: each column is the parts' Arrow columns side by side, cast to the table's type
        if f.name in constants:
            columns.append(constants[f.name]().cast(f.type))
            continue
        pieces = [t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for t, _ in parts]
        columns.append(pa.chunked_array([c for piece in pieces for c in (piece.chunks if isinstance(piece, pa.ChunkedArray) else [piece])], f.type))
    return pa.Table.from_arrays(columns, schema=arrow_schema)


def write_state_rows(uri: str, rows: pa.Table | None, what: str) -> tuple[int | None, int]:
    """Append rows built by :func:`state_rows` (nothing when None); the table version and the rows written.

    ``what`` names the operator in errors.  Window and join state both write this way.
    """
    if rows is None:
        return None, 0
    try:
        return append_table(uri, rows), rows.num_rows
    except StorageError as exc:
        raise StorageError(f"{what} state: {exc}") from exc


def forget_state_rows(uri: str, epoch: int, shard: str | None, shards: Collection[int] | None, what: str) -> int:
    """Delete the state rows of epochs before ``epoch`` (of ``shards`` in column ``shard``, when both are given); how many went."""
    ds = open_dataset(uri)
    if ds is None:
        return 0
    where = f"{EPOCH} < {int(epoch)}"
    if shard is not None and shards is not None:
        if not shards:
            return 0
        where += f" AND {shard} IN ({sql_list(sorted(shards))})"
    before = ds.count_rows()
    try:
        ds.delete(where)
    except (OSError, ValueError, RuntimeError) as exc:
        raise StorageError(f"{what} state: deleting the history before epoch {epoch} failed: {exc}") from exc
    after = open_dataset(uri)
    return before - (after.count_rows() if after is not None else 0)


def _load(
    state: str, uri: str, spec: WindowSpec, watermark: int | None, as_of: int | datetime | None,
    shards: Collection[int] | None = None, pipeline: str = "",
) -> tuple[WindowState, int]:
    """The committed state, and how many committed rows it was taken from."""
    empty = WindowState.empty(spec)
    ds = open_dataset(uri)
    if ds is None:
        return WindowState(empty.partials, empty.rows, watermark, 0), 0
    log = CommitLog(state)
    frame = log.frame()
    if as_of is not None:
        check_history(frame, pipeline, spec.name, as_of, f"window {spec.name!r} of pipeline {pipeline!r}")
    committed = log.committed_batches(as_of=as_of, log=frame)
    scan = pl.scan_pyarrow_dataset(ds).filter(pl.col(BATCH).is_in(committed.implode()))
    if shards is not None and spec.shard is not None:
        scan = scan.filter(pl.col(spec.shard).is_in(pl.Series(sorted(shards), dtype=spec.input_schema[spec.shard]).implode()))
    if spec.keeps_rows:
        ident = spec.row_ids
    else:
        ident = [*spec.group_keys, "window_start", "window_end"]
    latest, scanned = pl.collect_all([
        latest_rows(scan, ident).filter(~pl.col(DELETED)).drop(_META),
        scan.select(pl.len()),
    ])
    return WindowState.resume(spec, latest, watermark), int(scanned.item())


def read_state(
    state: str, pipeline: str, operator: str, as_of: int | datetime | None = None, storage_options: Mapping[str, str] | None = None,
) -> pl.LazyFrame:
    """The open windows of a window operator with their current values, as of one committed epoch.

    Parameters
    ----------
    state
        The pipeline's state URI.
    pipeline
        The pipeline's name.
    operator
        The window step's name (``window_1``, or the ``name=`` given to ``window``).
    as_of
        An epoch number or a datetime: the state committed by then.
    storage_options
        For a state on S3: as for :func:`lockgate.storage.sink_tables.read_table`.

    Examples
    --------
    On the broker at ``$LOCKGATE_BROKERS`` (else ``localhost:9092``), clicks per second
    of 1,000 sample clicks, 10 ms apart from 2026-01-01 on.  Once the run has caught up,
    the windows the watermark has not passed yet are still open, with their counts so far:

    >>> import tempfile
    >>> import polars as pl
    >>> import lockgate as lg
    >>> topic = lg.sample_clicks(records=1_000, seed=1, start="2026-01-01")
    >>> state = tempfile.mkdtemp()
    >>> pipe = lg.Pipeline(topic, state=state)
    >>> clicks = pipe.source(topic, format=lg.JSON(schema={"ts": pl.Datetime("ms")}), event_time="ts", watermark="0s")
    >>> clicks.window(lg.Tumbling("1s")).agg(clicks=pl.len()).to_table("per_second")
    >>> _ = pipe.run(until="caught_up")
    >>> lg.read_state(state, pipe.name, "window_1").collect()
    shape: (1, 3)
    ┌─────────────────────┬─────────────────────┬────────┐
    │ window_start        ┆ window_end          ┆ clicks │
    │ ---                 ┆ ---                 ┆ ---    │
    │ datetime[ms]        ┆ datetime[ms]        ┆ u32    │
    ╞═════════════════════╪═════════════════════╪════════╡
    │ 2026-01-01 00:00:09 ┆ 2026-01-01 00:00:10 ┆ 100    │
    └─────────────────────┴─────────────────────┴────────┘
    """
    if storage_options:
        use_storage_options(state, storage_options)
    uri = state_uri(state, pipeline, operator)
    ds = open_dataset(uri)
    if ds is None:
        raise StorageError(f"no state for window {operator!r} of pipeline {pipeline!r} under {state}")
    meta = ds.schema.metadata or {}
    if b"lockgate.join_side" in meta:  # one side of a stream join: its buffered rows
        from lockgate.storage.join_state import read_join_side

        return read_join_side(state, pipeline, operator).lazy()
    raw = meta.get(b"lockgate.window_spec")
    if raw is None:
        raise StorageError(f"{uri} is not a lockgate window state table")
    spec = spec_from_json(raw.decode())
    return current_values(spec, _load(state, uri, spec, None, as_of, None, pipeline)[0]).lazy()


def list_states(state: str) -> list[tuple[str, str]]:
    """(pipeline, operator) of every window state table under ``state`` (a directory or ``s3://`` URI)."""
    import pyarrow.fs as pafs

    fs, root = filesystem(str(state).rstrip("/") + "/_lockgate_state")
    try:
        pipelines = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (OSError, FileNotFoundError):
        return []
    out = []
    for p in pipelines:
        if p.type != pafs.FileType.Directory:
            continue
        for op in fs.get_file_info(pafs.FileSelector(p.path)):
            if op.type == pafs.FileType.Directory and op.base_name.endswith(".lance"):
                out.append((p.base_name, op.base_name.removesuffix(".lance")))
    return sorted(out)
