"""The pipeline builder and its immutable plan.

``Pipeline.source(...)`` returns a :class:`Stream`; each operator on a stream returns a
new stream whose output schema is resolved at once, so a pipeline that cannot run
fails where it is defined, before any record is read.  The plan is a tuple of
frozen nodes with stable names (``filter_1``, ``to_kafka_1``) from their place in
the plan.

Examples
--------
>>> import polars as pl
>>> import lockgate as lg
>>> pipe = lg.Pipeline("doc-clicks", brokers="127.0.0.1:1", state="/tmp/lockgate-doc")
>>> clicks = pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "url": pl.String}))
>>> pages = clicks.filter(pl.col("url").str.starts_with("/p/")).select("user", "url")
>>> pages.to_kafka("pages", key="user")
>>> [node.name for node in pipe.plan().nodes]
['clicks', 'filter_1', 'select_1', 'to_kafka_1']
>>> clicks.select(pl.col("nope"))
Traceback (most recent call last):
...
lockgate.errors.PipelineDefinitionError: select 'select_2': unknown column 'nope'; the input has columns ['_topic', '_partition', '_offset', '_timestamp', '_key', 'user', 'url']
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
from lockgate.engine.columns import KAFKA_COLUMNS, KEY, OFFSET, PARTITION, TIMESTAMP, TOPIC
from lockgate.engine.avro_format import Avro
from lockgate.engine.protobuf_format import Protobuf
from lockgate.engine.formats import JSON, ArrowIPC, Format, Raw
from lockgate.operators.durations import Duration, parse_duration
from lockgate.operators.event_time import epoch_ms
from lockgate.errors import PipelineDefinitionError
from lockgate.operators.join_rows import StreamJoinSpec
from lockgate.operators.joins import TableJoin
from lockgate.operators.stateless import (
    Filter,
    MapBatches,
    Operator,
    Select,
    WithColumns,
)
from lockgate.operators.windows import WindowKind, WindowSpec

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "TIME_COLUMN",
    "DeadLetterNode",
    "StreamJoinNode",
    "JoinNode",
    "Node",
    "ChildNode",
    "OpNode",
    "Plan",
    "PlanBuilder",
    "RepartitionNode",
    "SinkNode",
    "SourceNode",
    "Stream",
    "Table",
    "TableNode",
    "WindowNode",
    "WindowedStream",
    "event_time_ms",
    "source_node",
]

#: Columns of ``stream.dead_letters()`` and of the rows sent to the dead-letter topic.
DEAD_LETTER_SCHEMA: dict[str, pl.DataType] = {
    **KAFKA_COLUMNS,
    "value": pl.Binary(),
    "reason": pl.String(),
    "error": pl.String(),
    "operator": pl.String(),
}


@dataclass(frozen=True, eq=False)
class Node:
    """One step of the plan."""

    name: str
    schema: pl.Schema

    kind = "node"

    @property
    def time_column(self) -> str | None:
        """The event-time column of this step's batches, if it has one."""
        return None

    @property
    def parents(self) -> tuple[Node, ...]:
        """The nodes this one reads from."""
        return ()


@dataclass(frozen=True, eq=False)
class SourceNode(Node):
    """Records of a Kafka topic, decoded."""

    topic: str = ""
    format: Format = field(default_factory=JSON)
    event_time: str | None = None
    watermark: Any = None
    idle_timeout: Any = None
    key: tuple[str, ...] = ()  # value columns the topic's records are keyed (partitioned) by
    #: for the source of a repartition topic: the node that writes it (its watermarks come from its marks)
    repartitioned_by: RepartitionNode | None = None
    #: for a stream join's repartition topic: both nodes that write it (the first is ``repartitioned_by``)
    hops: tuple[RepartitionNode, ...] = ()

    @property
    def writers(self) -> tuple[RepartitionNode, ...]:
        """The repartition nodes that write this source's topic (none for an input topic)."""
        if self.hops:
            return self.hops
        return () if self.repartitioned_by is None else (self.repartitioned_by,)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "source" if self.repartitioned_by is None else "repartition source"

    @property
    def time_column(self) -> str | None:
        if self.event_time is None:
            return None
        return TIMESTAMP if self.event_time == "kafka" else self.event_time

    @property
    def value_time_column(self) -> str | None:
        """The event-time column the format decodes (``format.decode(..., event_time=)``); None for ``"kafka"``."""
        return None if self.event_time in (None, "kafka") else self.event_time

    @property
    def delay_ms(self) -> int:
        """The watermark's bounded out-of-orderness in milliseconds."""
        return 0 if self.watermark is None else int(self.watermark.total_seconds() * 1000)


@dataclass(frozen=True, eq=False)
class DeadLetterNode(Node):
    """Records the pipeline could not process, with the reason."""

    kind = "dead_letters"


@dataclass(frozen=True, eq=False)
class ChildNode(Node):
    """A step that reads the batches of one parent step."""

    parent: Node | None = None

    @property
    def parents(self) -> tuple[Node, ...]:
        assert self.parent is not None
        return (self.parent,)


@dataclass(frozen=True, eq=False)
class OpNode(ChildNode):
    """A stateless operator applied to its parent's batches."""

    op: Operator | None = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        assert self.op is not None
        return self.op.kind

    @property
    def time_column(self) -> str | None:
        assert self.parent is not None
        column = self.parent.time_column
        if column is not None and column in self.schema and self.schema[column] == self.parent.schema[column]:
            return column
        return None


@dataclass(frozen=True, eq=False)
class WindowNode(ChildNode):
    """A keyed event-time window aggregation (stateful).

    ``holdback_ms``: after a stream join the window closes at the join's watermark
    less :attr:`StreamJoinNode.holdback_ms` (the pairs it folds may lie that far behind).
    """

    spec: WindowSpec | None = None
    source: SourceNode | None = None
    holdback_ms: int = 0
    #: folds a stream join's pairs in the same epoch (its repartition topic placed the keys)
    after_join: bool = False

    kind = "window"

    @property
    def time_column(self) -> str | None:
        return "window_end"  # a window's result happens at its end, for a window downstream

    @property
    def sharded(self) -> bool:
        """True when the state is kept per input partition (the input is partitioned by the keys)."""
        return self.spec is not None and self.spec.shard is not None

    @property
    def state_mode(self) -> str:
        """How the state is split, for the plan: per partition, or one owner of the whole topic."""
        if self.source is not None and self.source.repartitioned_by is not None:
            return "state per repartition partition" if self.sharded else "state in the repartition topic's one partition"
        return "state per partition" if self.sharded else "state needs all partitions in one instance"


@dataclass(frozen=True, eq=False)
class TableNode(Node):
    """A changelog table: the latest value per record key of a (compacted) topic."""

    topic: str = ""
    key: str = ""
    format: Format = field(default_factory=JSON)

    kind = "table"


@dataclass(frozen=True, eq=False)
class JoinNode(ChildNode):
    """Each batch of the parent joined with the current rows of a table."""

    table: TableNode | None = None
    join: TableJoin | None = None

    kind = "join"

    @property
    def parents(self) -> tuple[Node, ...]:
        assert self.parent is not None and self.table is not None
        return (self.parent, self.table)

    @property
    def time_column(self) -> str | None:
        assert self.parent is not None
        return self.parent.time_column


@dataclass(frozen=True, eq=False)
class StreamJoinNode(Node):
    """Two streams joined on key within an event-time interval or window (stateful; :mod:`lockgate.operators.interval_join`, :mod:`lockgate.operators.window_join`).

    ``left_source``/``right_source``: the sources whose watermarks drive the join
    (its watermark is the smaller of the two).  The state needs every partition of
    both source topics in one instance.
    """

    left: Node | None = None
    right: Node | None = None
    spec: StreamJoinSpec | None = None
    left_source: SourceNode | None = None
    right_source: SourceNode | None = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "window_join" if self.spec is not None and self.spec.window is not None else "interval_join"

    @property
    def time_column(self) -> str | None:
        """A pair's event time is its left row's."""
        return self.spec.left_time if self.spec is not None and self.spec.left_time in self.schema else None

    @property
    def holdback_ms(self) -> int:
        """How far (ms) behind the join's watermark a row it emits may lie: what a window after it holds its watermark back by.

        An interval join emits a pair when its second row comes; that row is not late,
        and the left row lies at most ``upper`` before it (an unmatched left row comes
        out once the watermark passed ``left.t + upper``).  A window join emits a
        window's pairs when the window closes: a left row lies at most the window's
        size before.  Flink's interval join holds its output watermark back the same way.
        """
        assert self.spec is not None
        if self.spec.window is not None:
            return self.spec.window.size_ms
        return max(self.spec.upper_ms, 0)

    @property
    def parents(self) -> tuple[Node, ...]:
        assert self.left is not None and self.right is not None
        return (self.left, self.right)

    @property
    def sharded(self) -> bool:
        """True when the state is kept per partition of the join's repartition topic."""
        return self.spec is not None and self.spec.shard is not None

    @property
    def state_mode(self) -> str:
        """How the state is split, for the plan."""
        return "state per repartition partition" if self.sharded else "state needs all partitions of both sides in one instance"


@dataclass(frozen=True, eq=False)
class SinkNode(ChildNode):
    """Writes its parent's batches to a Kafka topic (``to_kafka``) or a LanceDB table (``to_table``)."""

    sink: Literal["kafka", "table"] = "kafka"
    target: str = ""
    key: str | None = None
    format: Format = field(default_factory=JSON)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"to_{self.sink}"

    @property
    def value_columns(self) -> list[str]:
        """The columns written: all but the Kafka metadata columns (and, for lg.Raw, the key)."""
        skip = self.key if isinstance(self.format, Raw) else None
        return [c for c in self.schema.names() if c not in KAFKA_COLUMNS and c != skip]


@dataclass(frozen=True, eq=False)
class RepartitionNode(SinkNode):
    """Writes its parent's rows to an internal topic, each to the partition of its ``by`` key (:mod:`lockgate.engine.repartition`).

    ``upstream`` is the source whose watermarks travel with the rows as marks;
    ``partitions`` the topic's partition count when set (else the upstream topic's;
    1 without ``by``); ``time_column`` the parent's event-time column.
    """

    by: tuple[str, ...] = ()
    upstream: SourceNode | None = None
    partitions: int | None = None
    time_column_of_parent: str = ""
    #: a stream join's hop: its marks carry each upstream partition's watermark (the maximum event time less
    #: the upstream source's delay), as the two sides' delays may differ; a window's carry the maximum
    marks_watermarks: bool = False
    #: after a stream join: the marks say each upstream maximum less this (ms), as the rows may lie that far behind it
    holdback_ms: int = 0

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "repartition"


@dataclass(frozen=True)
class Plan:
    """The validated, immutable plan of a pipeline."""

    nodes: tuple[Node, ...]

    @property
    def sources(self) -> tuple[SourceNode, ...]:
        """The source nodes."""
        return tuple(n for n in self.nodes if isinstance(n, SourceNode))

    @property
    def tables(self) -> tuple[TableNode, ...]:
        """The changelog tables."""
        return tuple(n for n in self.nodes if isinstance(n, TableNode))

    @property
    def sinks(self) -> tuple[SinkNode, ...]:
        """The sink nodes (the repartition nodes among them)."""
        return tuple(n for n in self.nodes if isinstance(n, SinkNode))

    @property
    def repartitions(self) -> tuple[RepartitionNode, ...]:
        """The nodes that write repartition topics."""
        return tuple(n for n in self.nodes if isinstance(n, RepartitionNode))

    def stages(self) -> dict[str, int]:
        """Each node's stage: 1 from the sources on, one more after each repartition topic.

        A stage is what runs between two Kafka topics; every instance runs every
        stage, on the partitions it owns of the topics the stage reads.
        """
        stage: dict[str, int] = {}
        for node in self.nodes:  # parents come first
            if isinstance(node, SourceNode) and node.repartitioned_by is not None:
                stage[node.name] = stage[node.repartitioned_by.name] + 1
            else:
                stage[node.name] = max((stage[p.name] for p in node.parents), default=1)
        return stage

    def _detail(self, node: Node) -> str:
        if isinstance(node, RepartitionNode):
            by = f"by {list(node.by)}" if node.by else "no key: one partition"
            return f" -> {node.target} ({by}, read by stage {self.stages()[node.name] + 1})"
        if isinstance(node, SinkNode):
            return f" -> {node.target}"
        if isinstance(node, SourceNode):
            return f" <- {node.topic}"
        if isinstance(node, (WindowNode, StreamJoinNode)):
            return f" [{node.state_mode}]"
        return ""

    def explain(self) -> str:
        """One line per node: name, kind, input, columns; a heading per stage when a repartition topic splits the plan."""
        stages = self.stages()
        split = len(set(stages.values())) > 1
        lines = []
        for number in sorted(set(stages.values())):
            if split:
                reads = [n.topic for n in self.nodes if isinstance(n, SourceNode) and stages[n.name] == number]
                lines.append(f"stage {number} (reads {', '.join(reads)})")
            for node in (n for n in self.nodes if stages[n.name] == number):
                src = ", ".join(p.name for p in node.parents) or "-"
                lines.append(f"{node.name:<16} {node.kind:<13} from {src:<14}{self._detail(node)}  {dict(node.schema)}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        stages = self.stages()
        rows = "".join(
            f"<tr><td>{stages[n.name]}</td><td>{html.escape(n.name)}</td><td>{html.escape(n.kind)}</td>"
            f"<td>{html.escape(', '.join(p.name for p in n.parents))}{html.escape(self._detail(n))}</td>"
            f"<td>{html.escape(', '.join(f'{k}: {v}' for k, v in n.schema.items()))}</td></tr>"
            for n in self.nodes
        )
        return f"<table><tr><th>stage</th><th>step</th><th>kind</th><th>from</th><th>schema</th></tr>{rows}</table>"


class PlanBuilder:
    """Collects nodes and hands out stable names; owned by one Pipeline."""

    def __init__(self, pipeline: str = "lockgate") -> None:
        self.pipeline = pipeline  # names the internal topics (repartition topics)
        self.nodes: list[Node] = []
        self.counts: dict[str, int] = {}
        self.names: set[str] = set()

    def name(self, kind: str, given: str | None) -> str:
        """The step's name: ``given``, or ``<kind>_<n>`` (n counts only steps that were added)."""
        if given is None:
            given = f"{kind}_{self.counts.get(kind, 0) + 1}"
        if given in self.names:
            raise PipelineDefinitionError(f"{kind}: the name {given!r} is taken by another step; pass a different name=")
        return given

    def add(self, node: Node) -> Node:
        kind, _, number = node.name.rpartition("_")
        if number.isdigit() and kind and int(number) == self.counts.get(kind, 0) + 1:
            self.counts[kind] = int(number)
        self.names.add(node.name)
        self.nodes.append(node)
        return node

    def plan(self) -> Plan:
        return Plan(tuple(self.nodes))


class Stream:
    """A stream of micro-batches; every method returns a new stream or adds a sink.

    A stream is lazy: it cannot be used as a truth value.
    """

    def __init__(self, builder: PlanBuilder, node: Node) -> None:
        self._builder = builder
        self._node = node

    @property
    def schema(self) -> pl.Schema:
        """The columns of this stream's batches."""
        return self._node.schema

    @property
    def name(self) -> str:
        """The stable name of the step that makes this stream."""
        return self._node.name

    def __bool__(self) -> bool:
        raise TypeError(
            "the truth value of a lockgate Stream is ambiguous: a stream is a lazy plan, not data; "
            "to test rows use stream.filter(expr)"
        )

    def __repr__(self) -> str:
        return f"<lockgate Stream {self._node.name!r} ({self._node.kind}) {dict(self.schema)}>"

    def _repr_html_(self) -> str:
        return self._builder.plan()._repr_html_()

    def _op(self, op: Operator) -> Stream:
        schema = op.resolve(self.schema)
        return Stream(self._builder, self._builder.add(OpNode(op.name, schema, parent=self._node, op=op)))

    def filter(self, predicate: pl.Expr, *, name: str | None = None) -> Stream:
        """Keep the rows where ``predicate`` is true.

        The predicate is checked against the stream's columns where it is written,
        before any record is read.

        Examples
        --------
        On the broker at ``$LOCKGATE_BROKERS`` (else ``localhost:9092``), the
        product-page views among 1,000 sample clicks:

        >>> import polars as pl
        >>> import lockgate as lg
        >>> topic = lg.sample_clicks(records=1_000, seed=1)
        >>> pipe = lg.Pipeline(topic)
        >>> clicks = pipe.source(topic, format=lg.JSON(schema={"user": pl.String, "url": pl.String}))
        >>> clicks.filter(pl.col("url").str.starts_with("/p/")).to_kafka("product-views")
        >>> pipe.preview(1_000)["product-views"].height
        935
        >>> clicks.filter(pl.col("page") == "/cart")
        Traceback (most recent call last):
        ...
        lockgate.errors.PipelineDefinitionError: filter 'filter_2': unknown column 'page'; ...
        """
        return self._op(Filter(self._builder.name("filter", name), predicate))

    def with_columns(self, *exprs: Any, name: str | None = None, **named: Any) -> Stream:
        """Add or replace columns (``pl.DataFrame.with_columns``)."""
        return self._op(WithColumns(self._builder.name("with_columns", name), exprs, named))

    def select(self, *exprs: Any, name: str | None = None, **named: Any) -> Stream:
        """Keep or compute exactly these columns (``pl.DataFrame.select``)."""
        return self._op(Select(self._builder.name("select", name), exprs, named))

    def map_batches(
        self,
        fn: Callable[[pl.DataFrame], pl.DataFrame],
        *,
        schema: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> Stream:
        """Apply ``fn`` to each whole batch; it must return a ``pl.DataFrame``."""
        return self._op(MapBatches(self._builder.name("map_batches", name), fn, schema))

    def join(
        self, other: Table | Stream, *, on: str | Sequence[str], how: str | None = None,
        within: Duration | tuple[Duration, Duration] | None = None, window: WindowKind | None = None, name: str | None = None,
        repartition: bool = True, partitions: int | None = None,
    ) -> Stream:
        """Join with a changelog table (``pipe.table``) or, given ``within=``, with another stream.

        **With a table**: each batch is enriched with the table's current rows (one
        Polars join per batch).  ``how="left"`` (the default) keeps every record (table
        columns null when the key is absent); ``how="inner"`` keeps only records whose
        key is in the table.

        **With a stream** (an interval join, as Flink's): a pair matches when the keys
        are equal and the right row's event time lies within ``within`` of the left
        row's: ``within="10s"`` means ``|left.t - right.t| <= 10 s``;
        ``within=("5s", "30s")`` means ``left.t - 5 s <= right.t <= left.t + 30 s``.
        Each pair is emitted once, as soon as both rows have been read; ``how="inner"``
        (the default for streams) emits pairs only, ``how="left"`` also each left row
        that found no match, with nulls, once the watermark has passed
        ``left.t + after`` (never earlier, never twice).

        **With a stream, given ``window=``** (a window join, Nexmark q8's and Kafka
        Streams' windowed join): a pair matches when the keys are equal and both event
        times fall in one ``lg.Tumbling`` or ``lg.Hopping`` window; pairs come out when
        the watermark passes the window's end, with ``window_start`` and ``window_end``
        (``how="left"``: also each left row whose window closed without a match).

        Output of a stream join: the left columns, then
        the right value columns but the keys (a name the left has gets ``_right``).  The
        join keeps both sides' rows in its state (LanceDB, committed with the epoch)
        until the watermark, the smaller of the two sources' watermarks, makes a match
        impossible; a row whose event time is below the watermark is late and goes to
        the dead letters (reason ``late``, naming the input record).

        Both sides' rows first go through one repartition topic
        ``<pipeline>-<join>-repartition`` (``partitions`` partitions, by default as many
        as the larger input topic), each row to the partition of its key, so the state
        is kept per repartition partition and instances share them, as Kafka Streams
        repartitions a join's inputs.  One topic for both sides, not one per side: a
        Kafka consumer group cannot promise that partition p of two topics goes to one
        instance (Kafka Streams' own assignor does that; librdkafka's cannot).  After
        the hop ``_topic``, ``_partition`` and ``_offset`` are the repartition topic's
        (``_timestamp`` stays the input record's).  ``repartition=False`` keeps one
        state for every partition of both topics instead (one instance must own them
        all; a second one stops with ``AssignmentError``).

        A window after a stream join closes at the join's watermark held back by how
        far behind it a pair may lie (``after`` for an interval join, the window's
        size for a window join), as Flink holds back an interval join's output
        watermark; keyed by the join key it keeps its state per repartition partition
        in the same epoch, keyed by anything else it hops once more (Nexmark q4).
        A pair's event time is its left row's.

        Examples
        --------
        On the broker at ``$LOCKGATE_BROKERS`` (else ``localhost:9092``), 1,000 sample
        clicks joined with the sample users (``user``, ``country``, ``plan``) of a
        compacted topic, counted per country:

        >>> import polars as pl
        >>> import lockgate as lg
        >>> topic, users_topic = lg.sample_clicks(records=1_000, seed=1), lg.sample_users()
        >>> pipe = lg.Pipeline(topic)
        >>> users = pipe.table(users_topic, key="user",
        ...                    format=lg.JSON(schema={"user": pl.String, "country": pl.String, "plan": pl.String}))
        >>> clicks = pipe.source(topic, format=lg.JSON(schema={"user": pl.String, "url": pl.String}))
        >>> clicks.join(users, on="user").select("user", "country", "url").to_kafka("clicks-with-country")
        >>> pipe.preview(1_000)["clicks-with-country"].group_by("country").len().sort("country")
        shape: (4, 2)
        ┌─────────┬─────┐
        │ country ┆ len │
        │ ---     ┆ --- │
        │ str     ┆ u32 │
        ╞═════════╪═════╡
        │ DE      ┆ 260 │
        │ FR      ┆ 238 │
        │ NL      ┆ 269 │
        │ US      ┆ 233 │
        └─────────┴─────┘

        Two streams, run here with no broker (``lg.run_plan``): the clicks at most 10 s
        after a view of the same ad, and the views per 10 s window that had a click:

        >>> pipe = lg.Pipeline("doc-views", brokers="127.0.0.1:1")
        >>> schema = {"ad": pl.String, "t": pl.Int64}
        >>> views = pipe.source("views", format=lg.JSON(schema=schema), event_time="t", watermark="0s")
        >>> clicks = pipe.source("clicks", format=lg.JSON(schema=schema), event_time="t", watermark="0s")
        >>> views.join(clicks, on="ad", within=("0s", "10s")).select("ad", "t", "t_right").to_table("clicked")
        >>> views.join(clicks, on="ad", window=lg.Tumbling("10s")).select("ad", "window_start").to_table("per_window")
        >>> out = lg.run_plan(pipe.plan(), {"views": pl.DataFrame({"ad": ["a", "b"], "t": [0, 0]}),
        ...                                 "clicks": pl.DataFrame({"ad": ["a", "b"], "t": [4_000, 12_000]})})
        >>> out["clicked"].rows(), out["per_window"]["ad"].to_list()
        ([('a', 0, 4000)], ['a'])
        """
        if isinstance(other, Stream):
            if partitions is not None and (not isinstance(partitions, int) or partitions < 1):
                raise PipelineDefinitionError(f"join: partitions={partitions!r}; give the repartition topic's partition count, >= 1")
            return self._stream_join(
                other, on=on, how=how or "inner", within=within, window=window, name=name, repartition=repartition, partitions=partitions
            )
        if not isinstance(other, Table):
            raise PipelineDefinitionError(
                f"join: give a table made by pipe.table(topic, key=...) or a stream of the same pipeline, not {type(other).__name__}"
            )
        node_name = self._builder.name("join", name)
        if within is not None or window is not None:
            raise PipelineDefinitionError(
                f"join {node_name!r}: within= and window= are for joining two streams; a table join matches the table's current rows"
            )
        spec = TableJoin(node_name, on if isinstance(on, str) else tuple(on), how or "left")
        schema = spec.resolve(self.schema, other.schema)
        node = JoinNode(node_name, schema, parent=self._node, table=other._node, join=spec)
        return Stream(self._builder, self._builder.add(node))

    def _stream_join(
        self, other: Stream, *, on: str | Sequence[str], how: str, within: Duration | tuple[Duration, Duration] | None,
        window: WindowKind | None, name: str | None, repartition: bool, partitions: int | None,
    ) -> Stream:
        """``join`` with a stream: the checks, then the node."""
        node_name = self._builder.name("join", name)
        where = f"join {node_name!r}"
        if other._builder is not self._builder:
            raise PipelineDefinitionError(f"{where}: the right stream belongs to another pipeline; build both from one lg.Pipeline")
        if (within is None) == (window is None):
            raise PipelineDefinitionError(
                f"{where}: joining two streams needs either within='10s' (or within=(before, after)): how far apart in event time "
                "a pair may be, or window=lg.Tumbling('10s'): the window both rows must share"
            )
        if within is None:
            before = after = parse_duration("0s")
        elif isinstance(within, tuple):
            if len(within) != 2:
                raise PipelineDefinitionError(f"{where}: within={within!r}; give one duration or (before, after)")
            before, after = (parse_duration(w, what=f"{where}: within", allow_zero=True) for w in within)
        else:
            before = after = parse_duration(within, what=f"{where}: within", allow_zero=True)
        sides = []
        for side, node in (("left", self._node), ("right", other._node)):
            source = _source_of(node)
            column = node.time_column
            if source is None or any(isinstance(n, (WindowNode, StreamJoinNode)) or (isinstance(n, SourceNode) and n.repartitioned_by)
                                     for n in _ancestors(node)):
                raise PipelineDefinitionError(
                    f"{where}: the {side} stream comes from a window, a repartition topic or another stream join; "
                    "a stream join reads streams of sources (with stateless steps between) for now"
                )
            if column is None:
                if source.event_time is None:
                    raise PipelineDefinitionError(
                        f"{where}: the {side} source {source.name!r} has no event time; pass event_time='<column>' "
                        "(or 'kafka' for the record timestamp) and watermark='5s' to pipe.source(...)"
                    )
                raise PipelineDefinitionError(f"{where}: the {side} stream no longer has its event-time column {source.time_column!r}; keep it in select(...)")
            sides.append((source, column))
        bounds = {"lower_ms": -int(before.total_seconds() * 1000), "upper_ms": int(after.total_seconds() * 1000)}
        spec = StreamJoinSpec.build(  # checked on the streams as the user wrote them: errors name their columns
            node_name, on=_names(on), **bounds, how=how, left_schema=self.schema, right_schema=other.schema,
            left_time=sides[0][1], right_time=sides[1][1], right_hidden=tuple(KAFKA_COLUMNS), window=window,  # type: ignore[arg-type]
        )
        left, right = self._node, other._node
        left_source, right_source = sides[0][0], sides[1][0]
        if repartition:
            from lockgate.engine.repartition import SOURCE_COLUMNS

            left, right, union = _join_repartitioned(self._builder, node_name, sides, (left, right), spec.on, partitions)
            left_source = right_source = union
            spec = StreamJoinSpec.build(
                node_name, on=spec.on, **bounds, how=how, left_schema=left.schema, right_schema=right.schema,
                left_time=sides[0][1], right_time=sides[1][1], right_hidden=tuple(KAFKA_COLUMNS), hidden=tuple(SOURCE_COLUMNS),
                shard=PARTITION, window=window,  # type: ignore[arg-type]
            )
        node = StreamJoinNode(
            node_name, spec.output_schema(), left=left, right=right, spec=spec, left_source=left_source, right_source=right_source,
        )
        return Stream(self._builder, self._builder.add(node))

    def window(
        self,
        window: WindowKind,
        *,
        by: str | Sequence[str] | None = None,
        allowed_lateness: Duration = "0s",
        emit: str = "final",
        name: str | None = None,
        repartition: bool = True,
        partitions: int | None = None,
    ) -> WindowedStream:
        """Group this stream by ``by`` into event-time windows; finish with ``.agg(name=expr, ...)``.

        Output columns: the keys, ``window_start``, ``window_end`` (``pl.Datetime("ms")``)
        and the aggregates.  ``emit="final"`` emits one row per (key, window) when the
        watermark passes ``window_end + allowed_lateness``; ``emit="update"`` emits the
        new value of every (key, window) each batch changes.

        When the source's records are keyed by the ``by`` columns
        (``pipe.source(..., key=...)``), the window keeps its state per input
        partition.  Otherwise the rows first go through the repartition topic
        ``<pipeline>-<window>-repartition`` (created by lockgate with ``partitions``
        partitions, as many as the source by default, one without ``by``), each to
        the partition of its key, as Kafka Streams does after a ``groupBy``: the
        window keeps its state per repartition partition, instances share those, and
        the hop stays exactly once (the rows are produced in the epoch's transaction,
        read ``read_committed`` by a later epoch).  After the hop the Kafka columns
        (``_partition``, ``_offset`` ...) are those of the repartition topic.  The hop
        costs a second epoch of latency; ``repartition=False`` keeps one state for
        every partition of the source instead (one instance must own them all, a
        second one stops with ``AssignmentError``).  ``repartition`` has no effect on
        a window keyed like its source.

        Examples
        --------
        On the broker at ``$LOCKGATE_BROKERS`` (else ``localhost:9092``), clicks per
        second of 1,000 sample clicks, 10 ms apart from 2026-01-01 on: each window is
        emitted once the watermark (the latest event time, less ``watermark``) has
        passed its end.

        >>> import tempfile
        >>> import polars as pl
        >>> import lockgate as lg
        >>> topic = lg.sample_clicks(records=1_000, seed=1, start="2026-01-01")
        >>> state = tempfile.mkdtemp()
        >>> pipe = lg.Pipeline(topic, state=state)
        >>> clicks = pipe.source(topic, format=lg.JSON(schema={"url": pl.String, "ts": pl.Datetime("ms")}),
        ...                      event_time="ts", watermark="0s")
        >>> per_second = clicks.window(lg.Tumbling("1s")).agg(clicks=pl.len(), carts=(pl.col("url") == "/cart").sum())
        >>> per_second.to_table("per_second")
        >>> _ = pipe.run(until="caught_up")
        >>> lg.read_table(state, "per_second").collect().sort("window_start").head(3)
        shape: (3, 4)
        ┌─────────────────────┬─────────────────────┬────────┬───────┐
        │ window_start        ┆ window_end          ┆ clicks ┆ carts │
        │ ---                 ┆ ---                 ┆ ---    ┆ ---   │
        │ datetime[ms]        ┆ datetime[ms]        ┆ u32    ┆ u32   │
        ╞═════════════════════╪═════════════════════╪════════╪═══════╡
        │ 2026-01-01 00:00:00 ┆ 2026-01-01 00:00:01 ┆ 100    ┆ 2     │
        │ 2026-01-01 00:00:01 ┆ 2026-01-01 00:00:02 ┆ 100    ┆ 4     │
        │ 2026-01-01 00:00:02 ┆ 2026-01-01 00:00:03 ┆ 100    ┆ 1     │
        └─────────────────────┴─────────────────────┴────────┴───────┘
        """
        if partitions is not None and (not isinstance(partitions, int) or partitions < 1):
            raise PipelineDefinitionError(f"window: partitions={partitions!r}; give the repartition topic's partition count, >= 1")
        return WindowedStream(self, window, by, allowed_lateness, emit, name, repartition, partitions)

    def to_kafka(
        self, topic: str, *, key: str | None = None, format: Format | None = None, name: str | None = None
    ) -> None:
        """Produce each batch to ``topic`` in the micro-batch's Kafka transaction.

        The Kafka metadata columns (``_topic``, ``_partition``, ...) are not written.
        A topic that does not exist is created with as many partitions as the source.

        Examples
        --------
        On the broker at ``$LOCKGATE_BROKERS`` (else ``localhost:9092``), the clicks on
        ``/cart`` of 1,000 sample clicks as JSON, keyed by user, to the topic ``carts``
        (a ``read_committed`` consumer sees them once their batch has committed):

        >>> import tempfile
        >>> import polars as pl
        >>> import lockgate as lg
        >>> topic = lg.sample_clicks(records=1_000, seed=1)
        >>> pipe = lg.Pipeline(topic, state=tempfile.mkdtemp())
        >>> clicks = pipe.source(topic, format=lg.JSON(schema={"user": pl.String, "url": pl.String}))
        >>> clicks.filter(pl.col("url") == "/cart").select("user", "url").to_kafka("carts", key="user")
        >>> _ = pipe.run(until="caught_up")
        >>> pipe.metrics()["records_out"]
        {'carts': 22}
        """
        kind = "to_kafka"
        fmt = JSON() if format is None else format
        if not isinstance(fmt, (JSON, Raw, ArrowIPC, Avro, Protobuf)):
            raise PipelineDefinitionError(
                f"{kind}: format must be lg.JSON(), lg.Avro(registry=...), lg.Protobuf(registry=...), lg.Raw() or lg.ArrowIPC(), got {fmt!r}"
            )
        if not topic:
            raise PipelineDefinitionError(f"{kind}: give the topic to write to")
        node_name = self._builder.name(kind, name)
        if key is not None and key not in self.schema:
            raise PipelineDefinitionError(
                f"{kind} {node_name!r}: the key column {key!r} is not in the stream; "
                f"its columns are {list(self.schema.names())}"
            )
        node = SinkNode(node_name, self.schema, parent=self._node, sink="kafka", target=topic, key=key, format=fmt)
        written = fmt.for_sink(topic, {c: self.schema[c] for c in node.value_columns}, f"{kind} {node_name!r}")
        if written is not fmt:  # a registry format registered (or found) its schema, now
            node = dataclasses.replace(node, format=written)
        if isinstance(fmt, JSON):
            fmt.check_writable({c: self.schema[c] for c in node.value_columns}, f"{kind} {node_name!r}")
        if isinstance(fmt, Raw) and len(node.value_columns) != 1:
            raise PipelineDefinitionError(
                f"{kind} {node_name!r}: lg.Raw() writes one column, the stream has {node.value_columns}; select one first"
            )
        self._builder.add(node)

    def to_table(self, table: str, *, name: str | None = None) -> None:
        """Append each committed batch to the LanceDB table ``table`` under the pipeline's state.

        ``lg.read_table(state, table)`` reads the rows of committed batches only.

        Examples
        --------
        On the broker at ``$LOCKGATE_BROKERS`` (else ``localhost:9092``), the clicks on
        ``/cart`` of 1,000 sample clicks, 10 ms apart from 2026-01-01 on, into the
        table ``carts``:

        >>> import tempfile
        >>> import polars as pl
        >>> import lockgate as lg
        >>> topic = lg.sample_clicks(records=1_000, seed=1, start="2026-01-01")
        >>> state = tempfile.mkdtemp()
        >>> pipe = lg.Pipeline(topic, state=state)
        >>> clicks = pipe.source(topic, format=lg.JSON(schema={"user": pl.String, "url": pl.String, "ts": pl.Datetime("ms")}))
        >>> clicks.filter(pl.col("url") == "/cart").select("ts", "user").to_table("carts")
        >>> _ = pipe.run(until="caught_up")
        >>> lg.read_table(state, "carts").collect().sort("ts").head(3)
        shape: (3, 2)
        ┌─────────────────────────┬──────────┐
        │ ts                      ┆ user     │
        │ ---                     ┆ ---      │
        │ datetime[ms]            ┆ str      │
        ╞═════════════════════════╪══════════╡
        │ 2026-01-01 00:00:00.270 ┆ user-150 │
        │ 2026-01-01 00:00:00.590 ┆ user-65  │
        │ 2026-01-01 00:00:01.110 ┆ user-16  │
        └─────────────────────────┴──────────┘
        """
        kind = "to_table"
        node_name = self._builder.name(kind, name)
        if not table or not table.replace("_", "a").replace("-", "a").isalnum() or table.startswith("_"):
            raise PipelineDefinitionError(
                f"{kind} {node_name!r}: {table!r} is not a usable table name; use letters, digits, '_' and '-'"
            )
        self._builder.add(SinkNode(node_name, self.schema, parent=self._node, sink="table", target=table))

    def dead_letters(self) -> Stream:
        """The records this pipeline could not process, with ``reason``, ``error`` and ``operator``.

        Every such record also goes to the topic ``<pipeline>-dlq``.
        """
        for node in self._builder.nodes:
            if isinstance(node, DeadLetterNode):
                return Stream(self._builder, node)
        node = DeadLetterNode(self._builder.name("dead_letters", None), pl.Schema(DEAD_LETTER_SCHEMA))
        return Stream(self._builder, self._builder.add(node))


class Table:
    """A changelog table (``pipe.table``): join streams with it; it is not a stream itself."""

    def __init__(self, node: TableNode) -> None:
        self._node = node

    @property
    def schema(self) -> pl.Schema:
        """The table's columns."""
        return self._node.schema

    def __repr__(self) -> str:
        return f"<lockgate Table {self._node.name!r} <- {self._node.topic!r} key={self._node.key!r} {dict(self.schema)}>"


class WindowedStream:
    """A stream grouped into windows; ``.agg(...)`` makes it a stream of window results."""

    def __init__(
        self, stream: Stream, window: WindowKind, by: Any, lateness: Duration, emit: str, name: str | None,
        repartition: bool = True, partitions: int | None = None,
    ) -> None:
        self._stream, self._window, self._by, self._lateness, self._emit, self._name = stream, window, by, lateness, emit, name
        self._repartition, self._partitions = repartition, partitions

    def __bool__(self) -> bool:
        raise TypeError("the truth value of a lockgate WindowedStream is ambiguous: finish it with .agg(name=expr, ...)")

    def agg(self, **aggs: pl.Expr) -> Stream:
        """The aggregations, by output name: any Polars aggregation expression.

        Decomposable ones (``len``, ``count``, ``sum``, ``min``, ``max``, ``mean``,
        ``var``, ``std``, ``first``, ``last``) keep partial aggregates in the state;
        others (``n_unique`` here) keep the window's rows.

        Examples
        --------
        >>> import polars as pl
        >>> import lockgate as lg
        >>> pipe = lg.Pipeline("doc-agg")
        >>> clicks = pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "url": pl.String, "ts": pl.Datetime("ms")}),
        ...                      event_time="ts")
        >>> per_user = clicks.window(lg.Tumbling("1m"), by="user").agg(clicks=pl.len(), pages=pl.col("url").n_unique())
        >>> dict(per_user.schema)
        {'user': String, 'window_start': Datetime(time_unit='ms', time_zone=None), 'window_end': Datetime(time_unit='ms', time_zone=None),
         'clicks': UInt32, 'pages': UInt32}
        """
        stream = self._stream
        builder = stream._builder
        node_name = builder.name("window", self._name)
        parent = stream._node
        time_column = parent.time_column
        source = _source_of(parent)
        if time_column is None or source is None:
            where = f"window {node_name!r}"
            if source is not None and source.event_time is None:
                raise PipelineDefinitionError(
                    f"{where}: its source {source.name!r} has no event time; pass event_time='<column>' "
                    "(or 'kafka' for the record timestamp) and watermark='5s' to pipe.source(...)"
                )
            raise PipelineDefinitionError(
                f"{where}: the stream no longer has its event-time column "
                f"({source.time_column if source else '?'!r}); keep it in select(...)"
            )
        by = _names(self._by)
        joined = next((n for n in _ancestors(parent) if isinstance(n, StreamJoinNode)), None)
        holdback = 0
        if joined is None:
            keyed = copartitioned(parent, source, by)
        else:
            assert joined.spec is not None
            if not joined.sharded:
                raise PipelineDefinitionError(
                    f"window {node_name!r}: a window after stream join {joined.name!r} needs the join's repartition topic "
                    "(its watermark speaks of both sides); drop repartition=False from the join"
                )
            holdback = joined.holdback_ms
            keyed = set(joined.spec.on) <= set(by) and _keeps(parent, joined, {*joined.spec.on, PARTITION})
        if not keyed and self._repartition:
            # check the spec against the stream as it is before adding the hop (errors name the user's columns)
            WindowSpec.build(
                node_name, self._window, by=self._by, aggs=aggs, schema=pl.Schema({**dict(parent.schema), _TIME: pl.Int64()}),
                time_column=_TIME, allowed_lateness=self._lateness, emit=self._emit,
            )
            parent = source = _repartitioned(builder, node_name, parent, source, by, self._partitions, holdback)
            keyed, holdback, joined = bool(by), 0, None
        schema = pl.Schema({**dict(parent.schema), _TIME: pl.Int64()})
        spec = WindowSpec.build(
            node_name, self._window, by=self._by, aggs=aggs, schema=schema, time_column=_TIME,
            allowed_lateness=self._lateness, emit=self._emit, shard=PARTITION if keyed else None,
        )
        node = WindowNode(node_name, spec.output_schema, parent=parent, spec=spec, source=source, holdback_ms=holdback,
                          after_join=joined is not None)
        return Stream(builder, builder.add(node))


TIME_COLUMN = "__lg_t"  # event time as Int64 epoch ms, the column a window folds on
_TIME = TIME_COLUMN



def _names(columns: str | Sequence[str] | None) -> tuple[str, ...]:
    """One column name, several, or none, as a tuple (as ``by=`` and ``key=`` take them)."""
    return (columns,) if isinstance(columns, str) else tuple(columns or ())


def copartitioned(node: Node, source: SourceNode, by: Sequence[str]) -> bool:
    """True when all records of one ``by`` key come from one partition of ``source``.

    That holds when the topic is keyed by columns that ``by`` includes (``pipe.source(...,
    key=...)`` declares them, and ``_key`` is the record key itself) and no step between
    the source and ``node`` redefines them or the ``_partition`` column: then a window
    can keep its state per input partition, and partitions (with their state) can move
    between instances.  ``map_batches`` may change anything, so after it this is False.
    """
    declared = set(source.key)
    if KEY in by:
        declared = {KEY}
    if not declared or not declared <= set(by) or PARTITION not in node.schema:
        return False
    guarded = declared | {PARTITION}
    while not isinstance(node, SourceNode):
        if isinstance(node, OpNode):
            assert node.op is not None
            if node.op.kind == "map_batches" or _redefines(node.op, guarded):
                return False
        elif not isinstance(node, JoinNode):
            return False
        node = node.parents[0]
    return node is source


def _keeps(node: Node, joined: StreamJoinNode, columns: set[str]) -> bool:
    """True when the steps from stream join ``joined`` down to ``node`` keep ``columns`` as the join made them (stateless steps only)."""
    while node is not joined:
        if not isinstance(node, (OpNode, JoinNode)):
            return False
        if isinstance(node, OpNode):
            assert node.op is not None
            if node.op.kind == "map_batches" or _redefines(node.op, columns):
                return False
        node = node.parents[0]
    return True


def _redefines(op: Operator, columns: set[str]) -> bool:
    """True when a with_columns or select step may compute one of ``columns`` anew (a plain ``pl.col`` keeps it)."""

    def keeps(expr: pl.Expr, name: str) -> bool:
        return expr.meta.is_column() and expr.meta.output_name() == name

    for name, value in getattr(op, "named", {}).items():
        if name in columns and not (isinstance(value, pl.Expr) and keeps(value, name)):
            return True
    for item in getattr(op, "exprs", ()):
        for expr in item if isinstance(item, (list, tuple)) else (item,):
            if not isinstance(expr, pl.Expr):
                continue  # a column name keeps the column
            name = expr.meta.output_name(raise_if_undetermined=False)
            if name is None or (name in columns and not keeps(expr, name)):
                return True  # pl.all() * 2 and the like may overwrite anything
    return False


def _repartitioned(
    builder: PlanBuilder, window: str, parent: Node, source: SourceNode, by: tuple[str, ...], partitions: int | None,
    holdback_ms: int = 0,
) -> SourceNode:
    """Add the hop through ``window``'s repartition topic after ``parent``; returns the source that reads it.

    The topic carries the parent's value columns, its event time (as ``EVENT_TIME``,
    Int64 epoch ms) and the partition, offset and timestamp of the input record each
    row came from (``SOURCE_COLUMNS``: for dead letters and the end-to-end latency);
    the Kafka columns after it are the repartition topic's.
    """
    from lockgate.engine.repartition import EVENT_TIME, SOURCE_COLUMNS, RepartitionFormat, repartition_topic

    kafka_only = [c for c in by if c in KAFKA_COLUMNS]
    if kafka_only:
        raise PipelineDefinitionError(
            f"window {window!r}: by={list(by)} includes the Kafka column(s) {kafka_only}, which a repartition topic "
            "replaces with its own; copy them into a value column first (with_columns(k=pl.col('_key'))), "
            "or pass repartition=False"
        )
    time_column = parent.time_column
    assert time_column is not None
    topic = repartition_topic(builder.pipeline, window)
    values = {c: t for c, t in parent.schema.items() if c not in KAFKA_COLUMNS and c != EVENT_TIME and c not in SOURCE_COLUMNS}
    values[EVENT_TIME] = pl.Int64()
    values.update(SOURCE_COLUMNS)
    sink = RepartitionNode(
        builder.name("repartition", None), parent.schema, parent=parent, sink="kafka", target=topic,
        format=RepartitionFormat(schema=values), by=by, upstream=source, partitions=partitions if by else 1,
        time_column_of_parent=time_column, holdback_ms=holdback_ms,
    )
    builder.add(sink)
    node = SourceNode(
        builder.name("source", topic), pl.Schema({**KAFKA_COLUMNS, **values}), topic=topic, format=sink.format,
        event_time=EVENT_TIME, watermark=source.watermark, idle_timeout=source.idle_timeout, key=by, repartitioned_by=sink,
    )
    builder.add(node)
    return node


#: which side of a stream join a row of its repartition topic came from (0 left, 1 right), and the column prefixes there
JOIN_SIDE = "__lg_side"
_SIDE_PREFIX = ("__lg_left:", "__lg_right:")
_KEY_PREFIX = "__lg_key:"


def _join_repartitioned(
    builder: PlanBuilder, join: str, sides: list[tuple[SourceNode, str]], nodes: tuple[Node, Node], on: tuple[str, ...],
    partitions: int | None,
) -> tuple[Node, Node, SourceNode]:
    """Add the hop of both sides of stream join ``join`` through one repartition topic; returns (left, right, its source).

    Each side writes its value columns under a prefix of its own (the other side's
    null), the join key under ``__lg_key:<column>`` (both sides route by it, so one key
    lands on one partition), its side in ``__lg_side``, its event time and its input
    record's provenance; after the hop a filter and a select give each side back its
    columns.
    """
    from lockgate.engine.repartition import EVENT_TIME, SOURCE_COLUMNS, SOURCE_TIMESTAMP, RepartitionFormat, repartition_topic

    kafka_only = [c for c in on if c in KAFKA_COLUMNS]
    if kafka_only:
        raise PipelineDefinitionError(
            f"join {join!r}: on={list(on)} includes the Kafka column(s) {kafka_only}, which a repartition topic replaces with its own; "
            "copy them into a value column first (with_columns(k=pl.col('_key'))), or pass repartition=False"
        )
    internal = {EVENT_TIME, *SOURCE_COLUMNS}
    values = [{c: t for c, t in node.schema.items() if c not in KAFKA_COLUMNS and c not in internal} for node in nodes]
    union: dict[str, pl.DataType] = {JOIN_SIDE: pl.Int8(), **{f"{_KEY_PREFIX}{k}": nodes[0].schema[k] for k in on}}
    for prefix, columns in zip(_SIDE_PREFIX, values, strict=True):
        union.update({f"{prefix}{c}": t for c, t in columns.items()})
    union[EVENT_TIME] = pl.Int64()
    union.update(SOURCE_COLUMNS)
    topic = repartition_topic(builder.pipeline, join)
    fmt = RepartitionFormat(schema=union)
    by = tuple(f"{_KEY_PREFIX}{k}" for k in on)
    hops = []
    for index, (node, (source, time_column)) in enumerate(zip(nodes, sides, strict=True)):
        prefix, other = _SIDE_PREFIX[index], _SIDE_PREFIX[1 - index]
        columns = {
            JOIN_SIDE: pl.lit(index, pl.Int8),
            **{f"{_KEY_PREFIX}{k}": pl.col(k) for k in on},
            **{f"{prefix}{c}": pl.col(c) for c in values[index]},
            **{f"{other}{c}": pl.lit(None, t) for c, t in values[1 - index].items()},
        }
        exprs = [
            *(columns[c].alias(c) for c in union if c in columns),  # in the topic's column order, both sides alike
            *(pl.col(c) for c in KAFKA_COLUMNS if c in node.schema),  # the provenance of each row
            *(pl.col(c) for c in SOURCE_COLUMNS if c in node.schema),
        ]
        side = "left" if index == 0 else "right"
        op = Select(f"{join}_{side}_to_hop", tuple(exprs), {})
        shaped = builder.add(OpNode(op.name, op.resolve(node.schema), parent=node, op=op))
        hop = RepartitionNode(
            builder.name("repartition", None), shaped.schema, parent=shaped, sink="kafka", target=topic, format=fmt, by=by,
            upstream=source, partitions=partitions, time_column_of_parent=f"{prefix}{time_column}" if time_column in values[index] else time_column,
            marks_watermarks=True,
        )
        hops.append(builder.add(hop))
    idle = min(s.idle_timeout for s, _ in sides)
    reader = SourceNode(
        builder.name("source", topic), pl.Schema({**KAFKA_COLUMNS, **union}), topic=topic, format=fmt, event_time=EVENT_TIME,
        watermark=parse_duration("0s"), idle_timeout=idle, key=by, repartitioned_by=hops[0], hops=tuple(hops),  # type: ignore[arg-type]
    )
    builder.add(reader)
    out = []
    for index, side in enumerate(("left", "right")):
        prefix = _SIDE_PREFIX[index]
        keep = Filter(f"{join}_{side}_from_hop", pl.col(JOIN_SIDE) == index)
        kept = builder.add(OpNode(keep.name, keep.resolve(reader.schema), parent=reader, op=keep))
        exprs = [
            pl.col(TOPIC), pl.col(PARTITION), pl.col(OFFSET),
            pl.from_epoch(pl.col(SOURCE_TIMESTAMP), time_unit="ms").cast(KAFKA_COLUMNS[TIMESTAMP]).alias(TIMESTAMP),  # the input record's, not the hop's
            pl.col(KEY),
            *(pl.col(f"{prefix}{c}").alias(c) for c in values[index]),
            *(pl.col(c) for c in SOURCE_COLUMNS),
        ]
        back = Select(f"{join}_{side}_side", tuple(exprs), {})
        out.append(builder.add(OpNode(back.name, back.resolve(kept.schema), parent=kept, op=back)))
    return out[0], out[1], reader


def input_topic(source: SourceNode) -> str:
    """The input topic whose records ``source``'s rows came from: its own, or before its repartition topics the upstream one.

    >>> import polars as pl
    >>> import lockgate as lg
    >>> pipe = lg.Pipeline("doc-input")
    >>> clicks = pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "ts": pl.Int64}), event_time="ts")
    >>> clicks.window(lg.Tumbling("1m"), by="user", name="per_user").agg(n=pl.len()).to_table("n")
    >>> hop = next(s for s in pipe.plan().sources if s.repartitioned_by is not None)
    >>> hop.topic, input_topic(hop)
    ('doc-input-per_user-repartition', 'clicks')
    """
    while source.repartitioned_by is not None and source.repartitioned_by.upstream is not None:
        source = source.repartitioned_by.upstream
    return source.topic


def _ancestors(node: Node) -> list[Node]:
    """``node`` and every node it reads from, directly or not."""
    seen, todo = [], [node]
    while todo:
        current = todo.pop()
        if all(current is not n for n in seen):
            seen.append(current)
            todo.extend(current.parents)
    return seen


def _source_of(node: Node) -> SourceNode | None:
    while not isinstance(node, SourceNode):
        parents = node.parents
        if not parents:
            return None
        node = parents[0]
    return node


def event_time_ms(column: str, dtype: pl.DataType) -> pl.Expr:
    """An event-time column as Int64 epoch milliseconds (Datetime, or integer epoch ms), in the engine's time column."""
    return epoch_ms(column, dtype).alias(_TIME)


def source_node(
    builder: PlanBuilder,
    topic: str,
    fmt: Format,
    event_time: str | None,
    watermark: Duration | None,
    name: str | None,
    idle_timeout: Duration = "30s",
    key: str | Sequence[str] | None = None,
) -> SourceNode:
    """Validate a source's options and build its node."""
    if not isinstance(fmt, Format):
        raise PipelineDefinitionError(
            f"source {topic!r}: format must be lg.JSON(schema=...), lg.Avro(registry=...), lg.Protobuf(registry=..., message=...), "
            "lg.Raw() or lg.ArrowIPC(schema=...)"
        )
    fmt = fmt.for_source(topic)  # a registry format's reader schema, resolved once, now
    value_schema = fmt.value_schema()
    clash = set(value_schema) & set(KAFKA_COLUMNS)
    if clash:
        raise PipelineDefinitionError(f"source {topic!r}: the value columns {sorted(clash)} clash with Kafka's metadata columns")
    schema = pl.Schema({**KAFKA_COLUMNS, **value_schema})
    if event_time is not None and event_time != "kafka":
        if event_time not in schema:
            raise PipelineDefinitionError(
                f"source {topic!r}: event_time={event_time!r} is not a column; the columns are "
                f"{list(schema.names())}, or use event_time='kafka' for the record timestamp"
            )
        dtype = schema[event_time]
        if not (isinstance(dtype, pl.Datetime) or dtype.is_integer()):
            raise PipelineDefinitionError(
                f"source {topic!r}: event_time column {event_time!r} is {dtype}; it must be a Datetime or integer epoch milliseconds"
            )
    parsed = None if watermark is None else parse_duration(watermark, what=f"source {topic!r}: watermark")
    idle = parse_duration(idle_timeout, what=f"source {topic!r}: idle_timeout", allow_zero=False)
    keys = _names(key)
    for column in keys:
        if column not in value_schema:
            raise PipelineDefinitionError(
                f"source {topic!r}: key={column!r} is not a value column; it has {list(value_schema.names())} "
                "(name the value columns the producers key the records by)"
            )
    node_name = builder.name("source", name or topic)
    return SourceNode(
        node_name, schema, topic=topic, format=fmt, event_time=event_time, watermark=parsed, idle_timeout=idle, key=keys
    )
