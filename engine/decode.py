"""Step 2 of an epoch: a polled :class:`~lockgate.engine.source.RawBatch` becomes the plan's inputs.

Each source node's format decodes the values of its topic into a frame beside the
Kafka metadata columns; values that do not decode, or whose event time is missing
or not a time, become dead letters (reason ``decode`` or ``event_time``) and the
batch goes on.  The event time of every decoded record is computed here, once per
batch, as Int64 epoch milliseconds: the watermarks, the windows fed straight by a
source and the end-to-end latency metric all read it from the
:class:`DecodedBatch`.

With one source topic, a :class:`BatchDecoder` can decode each consume call's
chunk on its own thread while the poll reads the next one (Polars parses without
the GIL, so the parse overlaps the read).

Examples
--------
>>> import polars as pl
>>> import lockgate as lg
>>> from lockgate.engine.decode import BatchDecoder
>>> from lockgate.engine.source import RawBatch
>>> pipe = lg.Pipeline("doc-decode", brokers="127.0.0.1:9092", state="/tmp/lockgate-doc")
>>> pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "t": pl.Int64}), event_time="t").to_table("all")
>>> raw = RawBatch(topic="clicks", topics=None, partitions=[0, 0], offsets=[7, 8], timestamps=[0, 0], keys=[None, None],
...                values=[b'{"user": "a", "t": 1000}', b'not json'])
>>> batch = BatchDecoder(pipe.plan()).decode(raw)
>>> batch.inputs["clicks"].select("_offset", "user", "t").rows(), batch.dead["reason"].to_list()
([(7, 'a', 1000)], ['decode'])
>>> batch.event_times["clicks"]["__lg_t"].to_list(), batch.records_in
([1000], {'clicks': 2})
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from lockgate.engine.columns import PARTITION, TOPIC
from lockgate.engine.formats import Decoded, concat_decoded
from lockgate.engine.plan import (
    DEAD_LETTER_SCHEMA,
    Plan,
    SourceNode,
    event_time_ms,
)
from lockgate.engine.source import RawBatch

__all__ = ["BatchDecoder", "DecodedBatch", "source_event_times"]


@dataclass(frozen=True)
class DecodedBatch:
    """One polled batch, decoded: what the operators read, and what could not be decoded.

    ``meta`` holds the Kafka columns of every record; ``inputs`` one frame per source
    node (metadata + value columns of the records that decoded), and the dead-letter
    node's frame when the plan reads ``stream.dead_letters()``; ``dead`` the records
    that failed (``DEAD_LETTER_SCHEMA``); ``event_times`` per source node with an event
    time, ``_topic``, ``_partition`` and ``__lg_t`` (epoch ms), row for row with its
    input frame; ``records_in`` the records read per topic; ``marks`` per repartition
    source node, the watermark marks its records carried, with their partitions and offsets
    (:mod:`lockgate.engine.repartition`).
    """

    meta: pl.DataFrame
    inputs: dict[str, pl.DataFrame]
    dead: pl.DataFrame
    event_times: dict[str, pl.DataFrame]
    records_in: dict[str, int]
    marks: dict[str, list[tuple[tuple[str, int], int, bytes]]] = field(default_factory=dict)

    def event_times_ms(self, sources: Collection[str] | None = None) -> np.ndarray | None:
        """Every decoded record's event time (epoch ms, nulls dropped), from every source that has one (of ``sources`` if given); None if none has."""
        columns = [t.get_column("__lg_t") for name, t in self.event_times.items() if t.height and (sources is None or name in sources)]
        parts = [(c.drop_nulls() if c.null_count() else c).to_numpy() for c in columns]
        return np.concatenate(parts) if parts else None


class BatchDecoder:
    """Decodes the polled batches of one plan's sources (optionally a chunk at a time on a thread of its own).

    ``threaded`` applies only to a plan with one source topic: only its polls are a
    plain sequence of chunks that can be decoded ahead (see :meth:`start`).
    """

    def __init__(self, plan: Plan, *, threaded: bool = False, name: str = "lockgate") -> None:
        self.sources_by_topic: dict[str, list[SourceNode]] = {}
        for node in plan.sources:
            self.sources_by_topic.setdefault(node.topic, []).append(node)
        self.pool = (
            ThreadPoolExecutor(1, thread_name_prefix=f"lockgate-decode-{name}")
            if threaded and len(self.sources_by_topic) == 1 else None
        )

    @property
    def threaded(self) -> bool:
        """True when chunks are decoded ahead on a thread of its own (:meth:`start`)."""
        return self.pool is not None

    @property
    def topics(self) -> list[str]:
        """The source topics, in the order of the plan."""
        return list(self.sources_by_topic)

    def start(self, chunk: RawBatch) -> dict[str, Future[Decoded]] | None:
        """Start decoding one consume call's records on the decode thread; None without one (see :attr:`threaded`).

        What it returns rides on the batch (``RawBatch.prepared``) and :meth:`decode`
        joins it instead of decoding the values again.
        """
        if self.pool is None:
            return None
        pool = self.pool
        return {
            node.name: pool.submit(node.format.decode, chunk.values, event_time=node.value_time_column)
            for nodes in self.sources_by_topic.values() for node in nodes
        }

    def close(self) -> None:
        """Stop the decode thread (chunks not started are dropped)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def decode(self, raw: RawBatch) -> DecodedBatch:
        """Decode each source's records; the ones that fail become dead letters (reason ``decode``, ``event_time`` or ``schema``)."""
        meta = raw.metadata()
        inputs: dict[str, pl.DataFrame] = {}
        times: dict[str, pl.DataFrame] = {}
        dead: list[pl.DataFrame] = []
        counts: dict[str, int] = {}
        marks: dict[str, list[tuple[tuple[str, int], int, bytes]]] = {}
        single = len(self.sources_by_topic) == 1
        for topic, nodes in self.sources_by_topic.items():
            if single:
                idx: list[int] | None = None
                values = raw.values
            else:
                idx = (meta[TOPIC] == topic).arg_true().to_list()
                values = [raw.values[i] for i in idx]
            counts[topic] = len(values)
            for node in nodes:
                decoded = _decoded(raw, node, values)
                base = meta if _every_record_one_row(decoded.rows, idx, meta.height) else meta[_record_of_each_row(decoded.rows, idx)]
                frame = pl.concat([base, decoded.frame], how="horizontal")
                inputs[node.name] = frame
                timed = source_event_times(node, frame)
                if timed is not None:
                    times[node.name] = timed
                if decoded.marks:  # a repartition topic's: a few per epoch
                    marks[node.name] = [
                        ((topic, raw.partitions[j]), raw.offsets[j], mark)
                        for j, mark in ((i if idx is None else idx[i], mark) for i, mark in decoded.marks)
                    ]
                for reason, errors in (("decode", decoded.errors), ("event_time", decoded.bad_times), ("schema", decoded.schema_errors)):
                    if errors:
                        dead.append(_dead_letters(raw, meta, idx, errors, reason, node.name))
        dead_frame = pl.concat(dead) if dead else pl.DataFrame(schema=DEAD_LETTER_SCHEMA)
        return DecodedBatch(meta, inputs, dead_frame, times, counts, marks)


def source_event_times(node: SourceNode, frame: pl.DataFrame) -> pl.DataFrame | None:
    """``_topic``, ``_partition`` and the event time (``__lg_t``, epoch ms) of each row of a source's frame; None without an event time."""
    column = node.time_column
    if column is None:
        return None
    return frame.select(TOPIC, PARTITION, event_time_ms(column, frame.schema[column]))


def _every_record_one_row(rows: Sequence[int], idx: list[int] | None, records: int) -> bool:
    """True when row i of a decoded frame is record i of the batch (then the metadata needs no gather).

    Not the same as "as many rows as records": an Arrow IPC value holds many rows
    or none (a repartition topic's mark alone), so with a value that failed to
    decode the counts can agree while the rows sit at other records.
    """
    if idx is not None and len(idx) != records:
        return False
    if isinstance(rows, range):
        return rows == range(records)
    return len(rows) == records and bool((np.asarray(rows, dtype=np.int64) == np.arange(records)).all())


def _record_of_each_row(rows: Sequence[int], idx: list[int] | None) -> pl.Series:
    """The batch's record index of each decoded row (``idx``: the topic's records among the batch's)."""
    at = np.arange(rows.start, rows.stop, dtype=np.int64) if isinstance(rows, range) else np.asarray(rows, dtype=np.int64)
    if idx is not None:
        at = np.asarray(idx, dtype=np.int64)[at]
    return pl.Series(at)


def _decoded(raw: RawBatch, node: SourceNode, values: list[bytes | None]) -> Decoded:
    """``node``'s decoding of ``values``: the chunks decoded during the poll, joined, when the poll prepared them."""
    if raw.prepared is not None:
        return concat_decoded([(start, futures[node.name].result()) for start, futures in raw.prepared])
    return node.format.decode(values, event_time=node.value_time_column)


def _dead_letters(
    raw: RawBatch, meta: pl.DataFrame, idx: list[int] | None, errors: list[tuple[int, str]], reason: str, operator: str
) -> pl.DataFrame:
    """The records of ``errors`` (``(index among the topic's values, message)``) as dead letters of ``operator``."""
    where = [e[0] if idx is None else idx[e[0]] for e in errors]
    return meta[where].with_columns(
        value=pl.Series([raw.values[i] for i in where], dtype=pl.Binary),
        reason=pl.lit(reason),
        error=pl.Series([e[1] for e in errors], dtype=pl.String),
        operator=pl.lit(operator),
    )

