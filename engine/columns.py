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

__all__ = ["KAFKA_COLUMNS", "KEY", "OFFSET", "PARTITION", "TIMESTAMP", "TOPIC"]

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
