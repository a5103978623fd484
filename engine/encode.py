"""Step 4 of an epoch: the sinks' frames and the dead letters become Kafka records.

A ``to_kafka`` sink's frame is encoded with its format (values, and keys from its
``key`` column); dead letters keep their original value and key, with headers
naming the error, the reason, the operator and where the record came from.

Examples
--------
>>> import polars as pl
>>> from lockgate.engine.encode import dead_letter_topic
>>> dead = pl.DataFrame({"_topic": ["clicks"], "_partition": [0], "_offset": [7], "_key": [b"u1"], "value": [b"x"],
...                      "reason": ["decode"], "error": ["not JSON"], "operator": ["clicks"]})
>>> out = dead_letter_topic(dead, "pipe-dlq")
>>> out.topic, out.values, dict(out.headers[0])["lockgate.reason"]
('pipe-dlq', [b'x'], b'decode')
"""

from __future__ import annotations

from typing import Any

import polars as pl
from lockgate.engine.columns import KEY, OFFSET, PARTITION, TIMESTAMP, TOPIC
from lockgate.engine.formats import ArrowIPC
from lockgate.engine.plan import RepartitionNode, SinkNode, event_time_ms
from lockgate.engine.repartition import EVENT_TIME, SOURCE_COLUMNS, RepartitionFormat, route
from lockgate.engine.transaction import OutgoingTopic

__all__ = ["dead_letter_topic", "encode_repartition", "encode_sink"]


def _keys(frame: pl.DataFrame, key: str | None) -> list[Any] | None:
    if key is None:
        return None
    col = frame[key]
    if col.dtype not in (pl.String, pl.Binary):
        col = col.cast(pl.String)
    return col.to_list()


def encode_sink(sink: SinkNode, frame: pl.DataFrame) -> OutgoingTopic:
    """Encode a to_kafka sink's frame into values (and keys)."""
    values_frame = pl.DataFrame([frame.get_column(c) for c in sink.value_columns])  # the columns picked, no query
    if isinstance(sink.format, ArrowIPC) and sink.key is not None:
        values: list[bytes | None] = []
        keys: list[Any] = []
        for (key,), part in frame.partition_by(sink.key, as_dict=True, maintain_order=True).items():
            encoded = sink.format.encode(part.select(sink.value_columns))
            values.extend(encoded)
            keys.extend([None if key is None else str(key) if not isinstance(key, bytes) else key] * len(encoded))
        return OutgoingTopic(sink.target, values, keys)
    if isinstance(sink.format, ArrowIPC):
        return OutgoingTopic(sink.target, sink.format.encode(values_frame))
    return OutgoingTopic(sink.target, sink.format.encode(values_frame), _keys(frame, sink.key))


def encode_repartition(node: RepartitionNode, frame: pl.DataFrame, partitions: int, mark: bytes | None) -> OutgoingTopic:
    """A repartition node's rows as record batches, one (or more, if large) per partition of its topic.

    Each row goes to the partition of its ``by`` key (:func:`lockgate.engine.repartition.route`),
    with its event time as ``EVENT_TIME`` and its input record's partition, offset
    and timestamp (``SOURCE_COLUMNS``: those of the first hop's input after two hops;
    null where a ``select`` dropped the Kafka columns).  With a ``mark``, every
    partition gets one, on its last record batch, also a partition that gets no rows.
    """
    assert isinstance(node.format, RepartitionFormat)
    rows = frame.select(
        *[c for c in node.value_columns if c != EVENT_TIME and c not in SOURCE_COLUMNS],
        event_time_ms(node.time_column_of_parent, frame.schema[node.time_column_of_parent]).alias(EVENT_TIME),
        *_provenance(frame),
    )
    values: list[bytes | None] = []
    targets: list[int] = []
    split = (
        rows.with_columns(route(rows, node.by, partitions)).partition_by("__lg_partition", as_dict=True, include_key=False)
        if rows.height else {}
    )
    for p in range(partitions):  # a loop per partition, not per row
        part = split.get((p,))
        encoded = node.format.encode_partition(rows.clear() if part is None else part, mark)
        values.extend(encoded)
        targets.extend([p] * len(encoded))
    return OutgoingTopic(node.target, values, partitions=targets)


def _provenance(frame: pl.DataFrame) -> list[pl.Expr]:
    """The ``SOURCE_COLUMNS`` of each row: carried over from an earlier hop, else from its Kafka columns (null if dropped)."""
    out = []
    for (name, dtype), kafka in zip(SOURCE_COLUMNS.items(), (PARTITION, OFFSET, TIMESTAMP), strict=True):
        if name in frame.columns:
            column = pl.col(name)
        elif kafka in frame.columns:
            column = pl.col(kafka).dt.epoch("ms") if kafka == TIMESTAMP else pl.col(kafka)
        else:
            column = pl.lit(None)
        out.append(column.cast(dtype).alias(name))
    return out


def _schema_id_header(reason: str, value: bytes | None) -> list[tuple[str, bytes]]:
    """``lockgate.schema_id``: the schema id a value in the Confluent wire format names, when it failed to decode or to resolve."""
    if reason in ("schema", "decode") and value is not None and len(value) >= 5 and value[0] == 0:
        return [("lockgate.schema_id", str(int.from_bytes(value[1:5], "big")).encode())]
    return []


def dead_letter_topic(frame: pl.DataFrame, topic: str) -> OutgoingTopic:
    """The dead-letter records, with headers naming the error, reason, source topic, partition and offset."""
    headers = [
        [
            ("lockgate.error", (error or "").encode()),
            ("lockgate.reason", reason.encode()),
            ("lockgate.topic", src.encode()),
            ("lockgate.partition", str(part).encode()),
            ("lockgate.offset", str(off).encode()),
            ("lockgate.operator", op.encode()),
            *_schema_id_header(reason, value),
        ]
        for src, part, off, reason, error, op, value in frame.select(
            TOPIC, PARTITION, OFFSET, "reason", "error", "operator", "value"
        ).iter_rows()  # dead letters are the rare case; each needs its own headers
    ]
    return OutgoingTopic(topic, frame["value"].to_list(), frame[KEY].to_list(), headers)
