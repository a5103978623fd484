"""Step 3 of an epoch: every operator of the plan over one decoded batch.

:func:`execute` runs the plan's nodes over one batch's frames: stateless steps are
lazy Polars queries collected together (a step two sinks share runs once), a window
collects its input and folds it into its hot state, a table join reads the
table's current rows.  Windows run first, so that the dead letters include their
late records.  :func:`operate` is the same with the engine's window runtime
(watermarks from the batch's event times, then the folds); the runner and
``pipe.preview`` both call it.

:func:`run_plan` runs a whole plan over dataframes, with no broker: the way to test
a pipeline's logic in a unit test or a notebook cell (like ``bytewax.testing.run_main``).
Window state lives in a temporary directory for the call; nothing is committed.

Examples
--------
>>> import polars as pl
>>> import lockgate as lg
>>> from lockgate.engine.execution import run_plan
>>> pipe = lg.Pipeline("doc-run-plan", brokers="127.0.0.1:9092", state="/tmp/lockgate-doc")
>>> clicks = pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "t": pl.Int64}), event_time="t")
>>> clicks.window(lg.Tumbling("1m"), by="user").agg(n=pl.len()).to_table("per_minute")
>>> batches = [{"clicks": pl.DataFrame({"user": ["a", "a", "b"], "t": [1_000, 2_000, 61_000]})},
...            {"clicks": pl.DataFrame({"user": ["b"], "t": [62_000]})}]
>>> out = run_plan(pipe.plan(), batches)   # [0, 1m) closes in the first batch, [1m, 2m) at the end of the input
>>> out["per_minute"].select("user", "n").rows()
[('a', 2), ('b', 2)]
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING

import polars as pl
from lockgate.engine.columns import (
    KAFKA_COLUMNS,
    KEY,
    OFFSET,
    PARTITION,
    TIMESTAMP,
    TOPIC,
)
from lockgate.engine.decode import DecodedBatch, source_event_times
from lockgate.engine.plan import (
    DEAD_LETTER_SCHEMA,
    DeadLetterNode,
    StreamJoinNode,
    JoinNode,
    Node,
    OpNode,
    Plan,
    RepartitionNode,
    SinkNode,
    SourceNode,
    WindowNode,
)
from lockgate.operators.queries import collect, collect_all
from lockgate.storage.commit_log import CommitLog

from lockgate.errors import PipelineDefinitionError

if TYPE_CHECKING:
    from lockgate.engine.stateful import WindowRuntime

__all__ = ["execute", "hop", "hop_counts", "operate", "run_plan"]

#: the watermark of the end of the input (``run_plan``): every window closes
END_OF_INPUT = 2**62


def execute(
    plan: Plan,
    inputs: Mapping[str, pl.DataFrame],
    window_step: Callable[[WindowNode, pl.DataFrame], pl.DataFrame] | None = None,
    dead_letters: Callable[[], pl.DataFrame] | None = None,
    tables: Mapping[str, pl.DataFrame] | None = None,
    join_step: Callable[[StreamJoinNode, pl.DataFrame, pl.DataFrame], pl.DataFrame] | None = None,
) -> dict[str, pl.DataFrame]:
    """Run every operator of ``plan`` over one batch; returns each sink's frame, by sink node name.

    ``inputs`` maps source node names to their frames.  Stateless steps are lazy
    queries collected together, so shared steps run once; a window step collects
    its input and folds it with ``window_step``, a stream join its two inputs with
    ``join_step``.  Those stateful steps run first, so that the dead letters
    (``dead_letters()``) include their late records.
    """
    lazy: dict[str, pl.LazyFrame] = {}
    #: nodes whose frame is already materialized (sources, stateful steps' outputs): no query to collect them
    eager: dict[str, pl.DataFrame] = {}

    def frame_of(node: Node) -> pl.DataFrame:
        build(node)
        return eager[node.name] if node.name in eager else collect(lazy[node.name])

    def build(node: Node) -> pl.LazyFrame:
        if node.name not in lazy:
            if isinstance(node, SourceNode):
                eager[node.name] = inputs[node.name]
                lazy[node.name] = inputs[node.name].lazy()
            elif isinstance(node, DeadLetterNode):
                lazy[node.name] = (dead_letters() if dead_letters else pl.DataFrame(schema=DEAD_LETTER_SCHEMA)).lazy()
            elif isinstance(node, OpNode):
                assert node.parent is not None and node.op is not None
                lazy[node.name] = node.op.apply(build(node.parent))
            elif isinstance(node, WindowNode):
                assert node.parent is not None and window_step is not None
                eager[node.name] = window_step(node, frame_of(node.parent))
                lazy[node.name] = eager[node.name].lazy()
            elif isinstance(node, StreamJoinNode):
                assert node.left is not None and node.right is not None and join_step is not None
                left, right = collect_all([build(node.left), build(node.right)])
                eager[node.name] = join_step(node, left, right)
                lazy[node.name] = eager[node.name].lazy()
            elif isinstance(node, JoinNode):
                assert node.parent is not None and node.table is not None and node.join is not None
                lazy[node.name] = node.join.apply(build(node.parent), (tables or {})[node.table.name].lazy())
            else:
                raise AssertionError(f"cannot build {node!r}")
        return lazy[node.name]

    for node in plan.nodes:
        if isinstance(node, (WindowNode, StreamJoinNode)):
            build(node)

    sinks = plan.sinks
    if not sinks:
        return {}
    parents = [s.parent for s in sinks if s.parent is not None]
    for parent in parents:
        build(parent)
    if all(p.name in eager for p in parents):  # every sink reads a materialized frame (a window's output): no query
        frames = [eager[p.name] for p in parents]
    else:
        frames = collect_all([lazy[p.name] for p in parents])
    return {s.name: f for s, f in zip(sinks, frames, strict=True)}


def operate(
    plan: Plan, batch: DecodedBatch, tables: Mapping[str, pl.DataFrame], windows: WindowRuntime | None, now: float,
    watermark: int | None = None, closing: Collection[str] | None = None,
) -> dict[str, pl.DataFrame]:
    """Every operator over one decoded batch; windows fold into ``windows``' hot state (``windows.take()`` collects their deltas).

    The watermarks first move on with the batch's event times (``now`` is the
    processing time, for idle partitions); ``watermark`` overrides the watermark of
    the windows named in ``closing`` (every window when None): ``run_plan``'s end of input.
    """
    if windows is None or not windows.active:
        return execute(plan, batch.inputs, dead_letters=lambda: batch.dead, tables=tables)
    windows.observe(batch.event_times, now, batch.marks)
    outputs = execute(
        plan, batch.inputs,
        lambda node, frame: windows.step(node, frame, now, batch.event_times, watermark if closing is None or node.name in closing else None),
        lambda: pl.concat([batch.dead, *windows.late], how="vertical_relaxed"),  # windows ran first
        tables,
        lambda node, left, right: windows.join(node, left, right, now, watermark if closing is None or node.name in closing else None),
    )
    windows.take_marks(now)
    return outputs


def run_plan(
    plan: Plan,
    batches: Mapping[str, pl.DataFrame] | Iterable[Mapping[str, pl.DataFrame]],
    *,
    tables: Mapping[str, pl.DataFrame] | None = None,
    end_of_input: bool = True,
) -> dict[str, pl.DataFrame]:
    """Run ``plan`` over dataframes, with no broker; returns each sink's rows, by topic or table name.

    ``batches`` is one micro-batch, or a sequence of them, each mapping a source topic
    to a frame of its value columns (the Kafka columns ``_partition``, ``_offset``,
    ``_timestamp``, ``_key`` may be given; missing ones are filled: partition 0,
    offsets counting up, null timestamp and key).  ``tables`` maps each table's topic
    to its current rows, for ``join``.  Watermarks follow the event times as on
    Kafka (no partition counts as idle); with ``end_of_input`` the input ends with a
    watermark past every window, so final-mode windows and sessions emit, as a
    bounded input does in Flink.  Late and undecodable rows go to
    ``stream.dead_letters()`` if the plan reads it.  Nothing is written: window state
    lives in a temporary directory for the call.
    """
    from lockgate.engine.stateful import (
        WindowRuntime,  # the engine's window runtime, over a throwaway state
    )

    steps = [batches] if isinstance(batches, Mapping) else list(batches)
    by_topic = {node.topic: node for node in plan.sources}
    for step in steps:
        unknown = set(step) - set(by_topic)
        if unknown:
            raise PipelineDefinitionError(f"run_plan: {sorted(unknown)} are not source topics of the plan; its sources read {sorted(by_topic)}")
    internal = {n.topic for n in plan.sources if n.repartitioned_by is not None}
    if any(set(step) & internal for step in steps):
        raise PipelineDefinitionError(f"run_plan: {sorted(internal)} are the plan's repartition topics; give frames of its sources only")
    table_rows = {t.name: _table_rows(t.name, t.topic, t.schema, tables) for t in plan.tables}
    offsets: dict[tuple[str, int], int] = {}
    framed = [{topic: _with_kafka_columns(by_topic[topic], frame, offsets) for topic, frame in step.items()} for step in steps]
    sinks = [s for s in plan.sinks if not isinstance(s, RepartitionNode)]
    outputs: dict[str, list[pl.DataFrame]] = {s.name: [] for s in sinks}
    owned = {tp for step in framed for frame in step.values() for tp in _partitions(frame)}
    counts = hop_counts(plan, {t: len({p for tt, p in owned if tt == t}) or 1 for t in by_topic})
    owned |= {(n.target, p) for n in plan.repartitions for p in range(counts[n.target])}
    with tempfile.TemporaryDirectory(prefix="lockgate-run-plan-") as state:
        windows = WindowRuntime("run_plan", state, plan, CommitLog(state))
        if windows.active:
            windows.set_counts(counts)
            windows.assign(owned, 0.0)
            windows.load(0.0)
        stages = plan.stages()

        def run(batch: DecodedBatch, closing: set[str] | None = None) -> DecodedBatch | None:
            out = operate(plan, batch, table_rows, windows, 0.0, watermark=None if closing is None else END_OF_INPUT, closing=closing)
            if windows.active:
                windows.take()  # the deltas an epoch would append: nothing is written here
            for s in sinks:
                outputs[s.name].append(out[s.name])
            return hop(plan, out, windows, batch.records_in, counts, offsets, 0.0)

        for step in framed:
            batch: DecodedBatch | None = _decoded(plan, step)
            while batch is not None:  # the step, then what its repartition topics carry to the next stage
                batch = run(batch)
        if end_of_input and windows.active:
            # the end of the input reaches the stages one after the other: a window closes once what the
            # windows before its repartition topic emitted at the end has reached it
            for stage in range(1, max(stages[w.name] for w in windows.operators) + 1):
                closing = {w.name for w in windows.operators if stages[w.name] <= stage}
                batch = _decoded(plan, {})
                while batch is not None:
                    batch = run(batch, closing)
    return {s.target: _concat(outputs[s.name], s) for s in sinks}


def hop_counts(plan: Plan, counts: Mapping[str, int]) -> dict[str, int]:
    """``counts`` (partitions per source topic) with each repartition topic's: its own setting, else its upstream topic's.

    A stream join's topic has two upstream topics: it takes the larger count.
    """
    out = dict(counts)
    hops: dict[str, int] = {}
    for node in plan.repartitions:
        assert node.upstream is not None
        hops[node.target] = max(hops.get(node.target, 0), node.partitions or out.get(node.upstream.topic, 1))
    return out | hops


def hop(
    plan: Plan, out: Mapping[str, pl.DataFrame], windows: WindowRuntime, records_in: Mapping[str, int],
    counts: Mapping[str, int], offsets: dict[tuple[str, int], int], now: float,
) -> DecodedBatch | None:
    """In memory, the batch the repartition topics would carry to the next stage (``run_plan``, ``pipe.preview``); None if nothing.

    Each repartition node's rows go through :func:`~lockgate.engine.encode.encode_repartition`
    and its topic's format, as on Kafka, marks included: the next stage sees what it
    would read from the topic.
    """
    from lockgate.engine.encode import encode_repartition

    inputs: dict[str, list[pl.DataFrame]] = {}
    marks: dict[str, list[tuple[tuple[str, int], int, bytes]]] = {}
    records: dict[str, int] = {}
    for node in plan.repartitions:
        assert node.upstream is not None
        mark = windows.mark(node, bool(records_in.get(node.upstream.topic)), now) if windows.active else None
        outgoing = encode_repartition(node, out[node.name], counts[node.target], mark)
        if not outgoing.values:
            continue
        if mark is not None:
            windows.sent(node, mark)
        assert outgoing.partitions is not None
        source = next(s for s in plan.sources if any(w is node for w in s.writers))
        decoded = source.format.decode(outgoing.values, event_time=source.value_time_column)
        message_offsets = []
        for p in outgoing.partitions:  # a few record batches per partition, not rows
            message_offsets.append(offsets.get((node.target, p), 0))
            offsets[(node.target, p)] = message_offsets[-1] + 1
        rows = pl.Series(list(decoded.rows), dtype=pl.Int64)
        meta = pl.DataFrame({
            TOPIC: pl.Series([node.target] * len(rows), dtype=pl.String),
            PARTITION: pl.Series(outgoing.partitions, dtype=pl.Int32).gather(rows),
            OFFSET: pl.Series(message_offsets, dtype=pl.Int64).gather(rows),
            TIMESTAMP: pl.Series([None] * len(rows), dtype=pl.Datetime("ms")),
            KEY: pl.Series([None] * len(rows), dtype=pl.Binary),
        })
        frame = pl.concat([meta, decoded.frame], how="horizontal").select(source.schema.names()).cast(dict(source.schema))  # type: ignore[arg-type]
        inputs.setdefault(source.name, []).append(frame)
        marks.setdefault(source.name, []).extend(
            ((node.target, outgoing.partitions[i]), message_offsets[i], mark) for i, mark in decoded.marks
        )
        records[node.target] = records.get(node.target, 0) + len(outgoing.values)
    if not records:
        return None
    inputs = {n.name: pl.concat(inputs[n.name]) if n.name in inputs else pl.DataFrame(schema=n.schema) for n in plan.sources}
    times = {n.name: t for n in plan.sources if (t := source_event_times(n, inputs[n.name])) is not None}
    meta = pl.concat([f.select(list(KAFKA_COLUMNS)) for f in inputs.values() if f.height] or [pl.DataFrame(schema=KAFKA_COLUMNS)])
    return DecodedBatch(meta, inputs, pl.DataFrame(schema=DEAD_LETTER_SCHEMA), times, records, marks)


def _table_rows(name: str, topic: str, schema: pl.Schema, tables: Mapping[str, pl.DataFrame] | None) -> pl.DataFrame:
    rows = (tables or {}).get(topic, (tables or {}).get(name))
    if rows is None:
        raise PipelineDefinitionError(f"run_plan: the plan joins table {name!r} (topic {topic!r}); pass its rows as tables={{{topic!r}: frame}}")
    return rows


def _with_kafka_columns(node: SourceNode, frame: pl.DataFrame, offsets: dict[tuple[str, int], int]) -> pl.DataFrame:
    """``frame`` as the source node's decoded frame: the Kafka columns first (filled where missing), then the value columns."""
    missing = [c for c in node.schema.names() if c not in KAFKA_COLUMNS and c not in frame.columns]
    if missing:
        raise PipelineDefinitionError(
            f"run_plan: the frame for source {node.name!r} lacks the value columns {missing}; it has {frame.columns}"
        )
    fill: dict[str, pl.Expr | pl.Series] = {TOPIC: pl.lit(node.topic, pl.String)}
    if PARTITION not in frame.columns:
        fill[PARTITION] = pl.lit(0, pl.Int32)
    if TIMESTAMP not in frame.columns:
        fill[TIMESTAMP] = pl.lit(None, pl.Datetime("ms"))
    if KEY not in frame.columns:
        fill[KEY] = pl.lit(None, pl.Binary)
    out = frame.with_columns(**fill)
    if OFFSET not in frame.columns:  # counting up on each partition, from where the step before left it
        starts = {p: offsets.get((node.topic, p), 0) for p in out[PARTITION].unique().to_list()}
        base = pl.col(PARTITION).replace_strict(starts, default=0, return_dtype=pl.Int64)
        out = out.with_columns((base + pl.int_range(pl.len(), dtype=pl.Int64).over(PARTITION)).alias(OFFSET))
    for (p,), part in out.group_by(PARTITION):
        offsets[(node.topic, int(p))] = int(part[OFFSET].max()) + 1  # type: ignore[arg-type]
    return out.select(node.schema.names()).cast(dict(node.schema))  # type: ignore[arg-type]


def _partitions(frame: pl.DataFrame) -> set[tuple[str, int]]:
    return set(frame.select(TOPIC, PARTITION).unique().iter_rows())


def _decoded(plan: Plan, step: Mapping[str, pl.DataFrame]) -> DecodedBatch:
    """One ``run_plan`` step as a decoded batch: every source node of a topic reads its frame (an empty one if the step has none)."""
    inputs = {n.name: step.get(n.topic, pl.DataFrame(schema=n.schema)) for n in plan.sources}
    times = {n.name: t for n in plan.sources if (t := source_event_times(n, inputs[n.name])) is not None}
    dead = pl.DataFrame(schema=DEAD_LETTER_SCHEMA)
    meta = pl.concat([f.select(list(KAFKA_COLUMNS)) for f in step.values()]) if step else pl.DataFrame(schema=KAFKA_COLUMNS)
    return DecodedBatch(meta, inputs, dead, times, {t: f.height for t, f in step.items()})


def _concat(frames: list[pl.DataFrame], sink: SinkNode) -> pl.DataFrame:
    frames = [f for f in frames if f.height] or frames[:1]
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame(schema=sink.schema)
