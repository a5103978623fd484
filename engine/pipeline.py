"""``lg.Pipeline``: where a user defines sources, operators and sinks, and runs them.

Examples
--------
>>> import polars as pl
>>> import lockgate as lg
>>> pipe = lg.Pipeline("doc-pipe", brokers="127.0.0.1:1", state="/tmp/lockgate-doc",
...                    batch=lg.BatchPolicy(max_records=10_000, max_wait="50ms"))
>>> clicks = pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "ts": pl.Datetime("ms")}), event_time="ts")
>>> clicks.with_columns(day=pl.col("ts").dt.date()).to_table("clicks_by_day")
>>> print(pipe.plan().explain().splitlines()[-1].split()[:3])
['to_table_1', 'to_table', 'from']
>>> pipe.source("more", format=lg.JSON(schema={"x": pl.Int64}), watermark="5 parsecs")
Traceback (most recent call last):
...
lockgate.errors.PipelineDefinitionError: source 'more': watermark: cannot read '5 parsecs' as a duration; write a number and a unit (one of us, ms, s, m, h, d), e.g. '250ms', '5s', '1m', or pass a datetime.timedelta
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl
from lockgate.engine.config import BatchPolicy, PipelineConfig, overrides, resolve_instance
from lockgate.engine.formats import Format
from lockgate.engine.metrics import Metrics
from lockgate.engine.plan import Plan, PlanBuilder, Stream, Table, TableNode, source_node
from lockgate.engine.progress import progress_display
from lockgate.engine.runner import Runner, RunSummary, Until
from lockgate.operators.durations import Duration
from lockgate.errors import PipelineDefinitionError
from lockgate.storage.lance_io import use_storage_options
from lockgate.storage.sink_tables import read_table

__all__ = ["Pipeline", "defined_pipelines"]

_DEFINED: weakref.WeakValueDictionary[int, Pipeline] = weakref.WeakValueDictionary()


def defined_pipelines() -> list[Pipeline]:
    """Pipelines created in this process, oldest first (``lockgate run`` picks from these)."""
    return [p for _, p in sorted(_DEFINED.items())]


class Pipeline:
    """A named streaming pipeline: one consumer group, one transactional producer per instance.

    Parameters
    ----------
    name
        The pipeline's name: the consumer group id and the prefix of its transactional id.
    brokers
        Kafka bootstrap servers.  ``$LOCKGATE_BROKERS`` wins over them (as every
        ``LOCKGATE_*`` variable wins over its option), and without either they are
        ``localhost:9092`` (where ``lockgate broker start`` runs a broker).
    state
        LanceDB URI for table sinks and state (a local directory or ``s3://...``).
    batch
        When a micro-batch closes (``lg.BatchPolicy``).
    instance
        This instance's id, stable across restarts: ``$LOCKGATE_INSTANCE`` wins; ``"hostname"``
        takes the host name's trailing ordinal (a StatefulSet pod ``orders-3`` is ``3``), as does
        no setting inside Kubernetes; else ``0``.  Each instance needs its own id
        (:func:`lockgate.engine.config.resolve_instance`).
    kafka
        Extra librdkafka options for every client (e.g. ``{"security.protocol": "SSL"}``).
        Options that hold secrets (``sasl.password`` ...) become ``SecretStr``: never in
        logs, reprs or errors.  ``LOCKGATE_*`` variables and ``lockgate run --config
        FILE.toml`` override every option given here (see ``lockgate.engine.config.overrides``).
    storage_options
        Lance's object-store options for a ``state`` on S3 (``state="s3://bucket/prefix"``):
        ``endpoint``, ``region``, ``access_key_id``, ``secret_access_key``, ``allow_http``
        ...; or ``LOCKGATE_STORAGE_OPTIONS__ENDPOINT`` etc.  Keys and tokens become
        ``SecretStr``.  Without them Lance reads the ``AWS_*`` variables.  Instances on
        several machines share the state through it; Lance commits each table version
        with a conditional put (``If-None-Match``), so the store must support
        conditional writes (AWS S3 does).
    compact_every
        Compact the LanceDB tables (in the background) every this many committed batches.
    commit_timeout
        Timeout of each call of the Kafka commit (``send_offsets_to_transaction``,
        ``commit_transaction``); a retriable timeout is retried with backoff.  A call
        that has not returned well past it is taken as hung: the producer is replaced.
    snapshot_rows
        The floor of the retention rule (:func:`lockgate.storage.retention.history_due`):
        once it says so, a window's state table gets a full snapshot of its open
        windows (in an epoch's prepare step, like any delta), and after that epoch
        commits the older rows of its partitions are deleted, so a restart reads
        what is open, not the whole history; an update-mode window's ``to_table``
        has the rows that later updates superseded deleted.
    keep_history
        How long the history before a snapshot, or superseded rows of an update-mode
        table, stay for ``as_of`` reads (10 minutes).
    """

    def __init__(
        self,
        name: str,
        *,
        brokers: str = "localhost:9092",
        state: str = "./lockgate-state",
        batch: BatchPolicy | None = None,
        instance: str | None = None,
        kafka: dict[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        compact_every: int = 50,
        commit_timeout: Duration = "60s",
        snapshot_rows: int = 1_000_000,
        keep_history: Duration = "10m",
    ) -> None:
        options: dict[str, Any] = {
            "name": name, "brokers": brokers, "state": str(state), "kafka": kafka or {},
            "storage_options": storage_options or {}, "compact_every": compact_every,
            "commit_timeout": commit_timeout, "snapshot_rows": snapshot_rows, "keep_history": keep_history,
        }
        if batch is not None:
            options["batch"] = batch
        if instance is not None:
            options["instance"] = instance
        # a service's environment and --config file win over what the code says (see config.overrides)
        given = overrides()
        options["kafka"] = {**options["kafka"], **given.pop("kafka", {})}
        options["storage_options"] = {**options["storage_options"], **given.pop("storage_options", {})}
        if "batch" in given:
            base = options["batch"].model_dump() if isinstance(options.get("batch"), BatchPolicy) else {}
            options["batch"] = BatchPolicy(**{**base, **given.pop("batch")})
        options.update(given)
        options["instance"] = resolve_instance(options.get("instance"), os.environ, socket.gethostname())
        self.config = PipelineConfig(**options)
        use_storage_options(self.config.state, self.config.lance_storage_options())
        self._builder = PlanBuilder(self.config.name)
        self._metrics = Metrics()
        self._stop = threading.Event()
        self._running = threading.Lock()
        _DEFINED[id(self)] = self

    @property
    def name(self) -> str:
        """The pipeline's name."""
        return self.config.name

    def __repr__(self) -> str:
        return f"<lockgate Pipeline {self.name!r} brokers={self.config.brokers!r} state={self.config.state!r} steps={len(self._builder.nodes)}>"

    def _repr_html_(self) -> str:
        return f"<b>lockgate Pipeline {self.name}</b>" + self.plan()._repr_html_()

    def source(
        self,
        topic: str,
        *,
        format: Format,
        event_time: str | None = None,
        watermark: Duration | None = None,
        idle_timeout: Duration = "30s",
        name: str | None = None,
        key: str | Sequence[str] | None = None,
    ) -> Stream:
        """A stream of the records of ``topic``, decoded with ``format``.

        Every batch has the Kafka columns ``_topic``, ``_partition``, ``_offset``,
        ``_timestamp``, ``_key`` and the decoded value columns.  Records that do not
        decode go to the dead-letter topic ``<pipeline>-dlq`` (reason ``decode``), and
        so do records whose event time is missing, null or not a time (reason
        ``event_time``): those never reach an operator or a window.

        ``event_time`` (a Datetime or integer epoch-ms column, or ``"kafka"``) and
        ``watermark`` (bounded out-of-orderness) drive windows: a partition's
        watermark is the maximum event time seen minus ``watermark``; the pipeline's
        is the minimum over partitions that had records within ``idle_timeout``, or
        that still hold records not read yet (a partition waiting for its turn in
        the consumer's fetch queue is never idle).

        ``key`` names the value column(s) the producers key the records by, so that
        one key's records are all in one partition (as Kafka's default partitioner
        does).  A window whose ``by`` includes them (or the record key ``_key``)
        keeps its state per input partition: instances of the pipeline can then
        share the partitions, and a partition's windows move with it.  Without
        that, a window needs every partition of its topic in one instance.

        Examples
        --------
        Defining a source reads nothing yet; its batches have the Kafka columns and the
        value columns of the format:

        >>> import polars as pl
        >>> import lockgate as lg
        >>> pipe = lg.Pipeline("doc-source")
        >>> clicks = pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "ts": pl.Datetime("ms")}), event_time="ts")
        >>> clicks.schema.names()
        ['_topic', '_partition', '_offset', '_timestamp', '_key', 'user', 'ts']
        """
        node = source_node(self._builder, topic, format, event_time, watermark, name, idle_timeout, key)
        return Stream(self._builder, self._builder.add(node))

    def table(self, topic: str, *, key: str, format: Format, name: str | None = None) -> Table:
        """A changelog table: the latest value per record key of ``topic`` (a compacted topic).

        Every instance reads the whole topic (like a Kafka Streams GlobalKTable): to
        its end before the first batch, then the new records before each batch.
        A record with a null value (a tombstone) deletes its key.  ``key`` names the
        value column that streams join on.
        """
        schema = pl.Schema(format.value_schema())
        if key not in schema:
            raise PipelineDefinitionError(f"table {topic!r}: key={key!r} is not a column of its format; it has {list(schema.names())}")
        node = TableNode(self._builder.name("table", name or topic), schema, topic=topic, key=key, format=format)
        return Table(self._builder.add(node))  # type: ignore[arg-type]

    def plan(self) -> Plan:
        """The validated plan, as it will run."""
        return self._builder.plan()

    def metrics(self) -> dict[str, Any]:
        """Counters: records in/out per topic, dead letters, batches, commits, aborts, table rows."""
        return self._metrics.snapshot()

    def stop(self) -> None:
        """Ask a running ``run`` to stop after the open micro-batch (thread- and signal-safe)."""
        self._stop.set()

    def run(
        self, until: Until = None, *, max_batches: int | None = None, timeout: float | None = None, progress: bool | None = None
    ) -> RunSummary:
        """Process micro-batches exactly once.

        Parameters
        ----------
        until
            ``"caught_up"``: stop when every assigned partition has lag 0.  ``None``: run
            until ``stop()`` (or SIGTERM under ``lockgate run``).
        max_batches
            Stop after this many committed micro-batches.
        timeout
            Stop after this many seconds.
        progress
            Show the live progress (records, rate, lag, batches, late, dead letters).
            Default: an HTML line in a notebook, a bar when stderr is a terminal, and
            nothing elsewhere (a service, CI, output piped to a file: plain logs).

        Examples
        --------
        On the broker at ``$LOCKGATE_BROKERS`` (else ``localhost:9092``), a new topic of
        1,000 sample clicks, a pipeline named after it, and the clicks on ``/cart`` into a table:

        >>> import tempfile
        >>> import polars as pl
        >>> import lockgate as lg
        >>> topic = lg.sample_clicks(records=1_000, seed=1)
        >>> state = tempfile.mkdtemp()
        >>> pipe = lg.Pipeline(topic, state=state)
        >>> clicks = pipe.source(topic, format=lg.JSON(schema={"user": pl.String, "url": pl.String}))
        >>> clicks.filter(pl.col("url") == "/cart").to_table("carts")
        >>> pipe.run(until="caught_up")
        RunSummary(batches=..., records=1000, seconds=..., stopped_because='caught_up', seconds_from_first_record=...)
        >>> lg.read_table(state, "carts").collect().height
        22
        """
        if not self._running.acquire(blocking=False):
            raise PipelineDefinitionError(f"pipeline {self.name!r} is already running in this process")
        bar = progress_display(self.name, progress)
        summary: RunSummary | None = None
        try:
            self._stop.clear()
            summary = Runner(self.config, self.plan(), self._metrics, self._stop).run(until, max_batches, timeout, on_batch=bar)
            return summary
        finally:
            self._running.release()
            if bar is not None:
                bar.close(self._metrics.snapshot(), f"stopped ({summary.stopped_because})" if summary else "failed")

    def preview(self, n: int = 10, *, timeout: float = 10.0) -> dict[str, pl.DataFrame]:
        """What each sink would get from the next ``n`` records; nothing is produced, written or committed.

        Reads from where the pipeline's consumer group stands (with a throwaway consumer
        that commits nothing); window operators start from the committed state.
        Returns one frame per sink, keyed by its topic or table name.

        Examples
        --------
        On the broker at ``$LOCKGATE_BROKERS`` (else ``localhost:9092``), a new topic of
        100 sample clicks from 2026-01-01 on, 10 ms apart; the topic ``views`` gets nothing:

        >>> import polars as pl
        >>> import lockgate as lg
        >>> topic = lg.sample_clicks(records=100, seed=1, start="2026-01-01")
        >>> pipe = lg.Pipeline(topic)
        >>> clicks = pipe.source(topic, format=lg.JSON(schema={"user": pl.String, "url": pl.String, "ts": pl.Datetime("ms")}))
        >>> clicks.select("ts", "user", "url").to_kafka("views")
        >>> pipe.preview(100)["views"].sort("ts").head(3)
        shape: (3, 3)
        ┌─────────────────────────┬──────────┬───────┐
        │ ts                      ┆ user     ┆ url   │
        │ ---                     ┆ ---      ┆ ---   │
        │ datetime[ms]            ┆ str      ┆ str   │
        ╞═════════════════════════╪══════════╪═══════╡
        │ 2026-01-01 00:00:00     ┆ user-34  ┆ /p/33 │
        │ 2026-01-01 00:00:00.010 ┆ user-195 ┆ /p/1  │
        │ 2026-01-01 00:00:00.020 ┆ user-30  ┆ /p/28 │
        └─────────────────────────┴──────────┴───────┘
        """
        from lockgate.engine.preview import preview

        return preview(self.config, self.plan(), n, timeout)

    def state(self, name: str, *, as_of: int | datetime | None = None) -> pl.LazyFrame:
        """The committed rows of this pipeline's table ``name`` (see ``lg.read_table``)."""
        return read_table(self.config.state, name, as_of=as_of)
