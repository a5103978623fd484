"""The Kafka metadata columns every source frame carries, named once.

The source adds them to each decoded record (docs/architecture.md, "One epoch, poll to commit"); the plan,
the transaction's partition ranges, watermarks and dead letters read them by
these names.  Only the engine handles Kafka records, so they live in the engine.

Examples
--------
>>> from lockgate.engine.columns import KAFKA_COLUMNS, PARTITION
>>> list(KAFKA_COLUMNS)
['_topic', '_partition', '_offset', '_timestamp', '_key']
>>> KAFKA_COLUMNS[PARTITION]
Int32
"""

from __future__ import annotations

import polars as pl

__all__ = ["KAFKA_COLUMNS", "KEY", "OFFSET", "PARTITION", "TIMESTAMP", "TOPIC", "one_topic"]

TOPIC = "_topic"
PARTITION = "_partition"
OFFSET = "_offset"
TIMESTAMP = "_timestamp"  # the record's timestamp (event_time="kafka" reads it)
KEY = "_key"  # the record's key, as bytes

#: Columns every source frame carries, taken from the Kafka record, with their types.
KAFKA_COLUMNS: dict[str, pl.DataType] = {
    TOPIC: pl.String(),
    PARTITION: pl.Int32(),
    OFFSET: pl.Int64(),
    TIMESTAMP: pl.Datetime("ms"),
    KEY: pl.Binary(),
}


def one_topic(frame: pl.DataFrame) -> str | None:
    """The topic every row of ``frame`` came from; None when rows of several topics (or none named) are in it.

    A comparison of the column, no query: the usual batch reads one topic, and its
    per-partition figures can then be taken in NumPy.

    >>> one_topic(pl.DataFrame({TOPIC: ["a", "a"]})), one_topic(pl.DataFrame({TOPIC: ["a", "b"]}))
    ('a', None)
    """
    topics = frame.get_column(TOPIC)
    first = topics[0] if len(topics) else None
    if first is None or topics.null_count() or not (topics == first).all():
        return None
    return first
