"""Repartition topics: how a keyed operator's rows move to the partition of their key.

When a window groups by columns the source's records are not keyed by, the plan
splits into two stages joined by an internal topic
``<pipeline>-<operator>-repartition`` (:class:`~lockgate.engine.plan.RepartitionNode`
writes it, a source node reads it).  The upstream stage routes each row to the
partition of a hash of the grouping columns and produces, inside the epoch's
Kafka transaction, one Arrow IPC record batch per repartition partition (not a
record per row: the hop stays columnar); the downstream stage reads the topic
``read_committed`` like any source, its offsets commit in the same group's
transactions, and the window keeps its state per repartition partition.

**Watermarks cross the hop as in Flink.**  A repartition partition mixes the rows
of every upstream partition, so its own event times say nothing about how far
each upstream partition has got.  The last record batch an epoch writes to each
repartition partition therefore carries, in its schema metadata, a *mark*: for
each upstream partition the epoch's instance owns, its maximum event time and
whether it is live (see :meth:`lockgate.engine.watermarks.SourceWatermark.report`).
Downstream, :class:`lockgate.engine.watermarks.ShuffledWatermark` takes a
repartition partition's watermark from the marks read in it.  An epoch writes
marks when its upstream source had records, or when its mark changed (a partition
went idle); an epoch that only read the repartition topic writes none, so marks
never feed themselves.

Examples
--------
>>> import polars as pl
>>> from lockgate.engine.repartition import RepartitionFormat, route
>>> frame = pl.DataFrame({"country": ["DE", "FR", "DE"], "n": [1, 2, 3]})
>>> parts = route(frame, ("country",), 4)
>>> parts[0] == parts[2]                     # one key, one partition
True
>>> fmt = RepartitionFormat(schema={"country": pl.String, "n": pl.Int64})
>>> values = fmt.encode_partition(frame, mark=b'{"p": {}}')
>>> decoded = fmt.decode(values)
>>> decoded.frame["n"].to_list(), decoded.marks
([1, 2, 3], [(0, b'{"p": {}}')])
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import ClassVar

import polars as pl
import pyarrow as pa
from lockgate.engine.formats import ArrowIPC, Decoded

__all__ = [
    "EVENT_TIME", "MARK_KEY", "SOURCE_COLUMNS", "SOURCE_OFFSET", "SOURCE_PARTITION", "SOURCE_TIMESTAMP", "RepartitionFormat",
    "repartition_topic", "route",
]

#: the event time (Int64 epoch ms) the upstream stage computes and the downstream window reads
EVENT_TIME = "__lg_event_time"
#: the input record each row came from (its partition, offset and timestamp as Int64 epoch ms): dead letters
#: after the hop name it, and the end-to-end latency is measured from its timestamp (the topic is the
#: upstream source's, one per hop)
SOURCE_PARTITION = "__lg_source_partition"
SOURCE_OFFSET = "__lg_source_offset"
SOURCE_TIMESTAMP = "__lg_source_ts"
#: those columns with their types, in the order a repartition topic carries them
SOURCE_COLUMNS: dict[str, pl.DataType] = {SOURCE_PARTITION: pl.Int32(), SOURCE_OFFSET: pl.Int64(), SOURCE_TIMESTAMP: pl.Int64()}
#: the schema metadata key of a record batch's watermark mark
MARK_KEY = b"lockgate.watermark_mark"
#: fixed seeds: every instance must route a key to the same partition
_SEED = 0x6C6B67617465


def repartition_topic(pipeline: str, operator: str) -> str:
    """The internal topic of ``operator``'s repartition: ``<pipeline>-<operator>-repartition`` (as Kafka Streams names them).

    >>> repartition_topic("orders", "per_country")
    'orders-per_country-repartition'
    """
    return f"{pipeline}-{operator}-repartition"


def route(frame: pl.DataFrame, by: Sequence[str], partitions: int) -> pl.Series:
    """The repartition partition of each row: a hash of the ``by`` columns modulo ``partitions`` (all 0 without ``by``).

    One hash over whole columns (Polars' row hash with a fixed seed).  Polars says
    its hash may change between its versions, so every instance of a pipeline must
    run the same Polars: a downstream window checks the routing after each load
    (``WindowRuntime``) and stops with an error naming this if it does not hold.
    """
    if not by or partitions == 1:
        return pl.Series("__lg_partition", [0] * frame.height, dtype=pl.Int32)
    hashed = frame.select(list(by)).hash_rows(seed=_SEED)
    return (hashed % partitions).cast(pl.Int32).alias("__lg_partition")


class RepartitionFormat(ArrowIPC):
    """The records of a repartition topic: Arrow IPC record batches, the last of an epoch's per partition with a mark.

    A value that carries no rows but a mark is the mark alone (an epoch whose rows
    went to other partitions still tells this one how far it got).
    """

    name: ClassVar[str] = "repartition"

    def encode_partition(self, frame: pl.DataFrame, mark: bytes | None) -> list[bytes]:
        """One partition's rows of one epoch as IPC streams; the last one carries ``mark`` (if any) in its schema metadata."""
        slices = self.encode_slices(frame) if frame.height else []
        values = [value for _, _, value in slices]
        if mark is None:
            return values
        table = (frame.slice(slices[-1][0], slices[-1][1]) if slices else frame).to_arrow()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), MARK_KEY: mark})
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return [*values[:-1], sink.getvalue()]

    def _decode(self, values: Sequence[bytes | None]) -> Decoded:
        decoded = super()._decode(values)
        marks = []
        for index, value in enumerate(values):  # a few records per epoch and partition: one schema read each
            if not value:
                continue
            try:
                metadata = pa.ipc.open_stream(pa.py_buffer(value)).schema.metadata or {}
            except pa.ArrowException:
                continue  # already a dead letter of the decode
            if MARK_KEY in metadata:
                marks.append((index, metadata[MARK_KEY]))
        return Decoded(decoded.frame, decoded.rows, decoded.errors, decoded.bad_times, marks, decoded.schema_errors)
