"""Changelog tables: the latest value per record key of a topic, kept in memory as one frame.

Each instance reads every partition of the table's topic (no consumer group), to
the end before the first batch, then whatever is new before each batch.  Values
are decoded a poll at a time with the table's format; a null value deletes its key.
"""

from __future__ import annotations

import logging
import time

import confluent_kafka as ck
import polars as pl
from lockgate.engine import kafka_clients
from lockgate.engine.plan import TableNode
from lockgate.errors import BrokerError

__all__ = ["ChangelogTable"]

log = logging.getLogger("lockgate.table")
_M = ck.Message


class ChangelogTable:
    """The current rows of one changelog table."""

    def __init__(self, node: TableNode, options: dict) -> None:
        self.node = node
        self.consumer = kafka_clients.consumer(
            {**options, "group.id": f"lockgate-table-{node.topic}", "enable.auto.commit": False}, partition_eof=True
        )
        md = self.consumer.list_topics(node.topic, timeout=30)
        meta = md.topics.get(node.topic)
        if meta is None or meta.error is not None:
            raise BrokerError(f"table {node.name!r}: the topic {node.topic!r} does not exist; create it (compacted) first")
        self.partitions = sorted(meta.partitions)
        self.consumer.assign([ck.TopicPartition(node.topic, p, ck.OFFSET_BEGINNING) for p in self.partitions])
        self.rows = pl.DataFrame(schema={"__key": pl.Binary, **dict(node.schema)})

    def bootstrap(self, timeout: float = 120.0) -> None:
        """Read every partition to its end."""
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(self.partitions):
            if time.monotonic() > deadline:
                raise BrokerError(f"table {self.node.name!r}: could not read {self.node.topic!r} to its end in {timeout}s")
            at_end |= self._poll(0.5)
        log.info("table %s: %d rows", self.node.name, self.rows.height)

    def refresh(self) -> None:
        """Apply the records that arrived since the last call (does not wait)."""
        self._poll(0.0)

    def _poll(self, timeout: float) -> set[int]:
        msgs = self.consumer.consume(100_000, timeout)
        ends = set()
        if any(map(_M.error, msgs)):
            ends = {m.partition() for m in msgs if m.error() is not None and m.error().code() == ck.KafkaError._PARTITION_EOF}
            msgs = [m for m in msgs if m.error() is None]
        if msgs:
            self._apply(list(map(_M.key, msgs)), list(map(_M.value, msgs)))
        return ends

    def _apply(self, keys: list[bytes | None], values: list[bytes | None]) -> None:
        """Upsert the last value of each record key in this poll; a tombstone deletes the key."""
        batch = pl.DataFrame(
            {"__key": pl.Series(keys, dtype=pl.Binary), "__tomb": pl.Series(values, dtype=pl.Binary).is_null()}
        ).with_row_index("__i")
        last = batch.unique("__key", keep="last", maintain_order=True)
        upserted = last.filter(~pl.col("__tomb"))
        decoded = self.node.format.decode(pl.Series(values, dtype=pl.Binary).gather(upserted["__i"]).to_list())
        upserted_keys = upserted["__key"]
        failed = {upserted_keys[i] for i, _ in decoded.errors}
        for _, error in decoded.errors:
            log.warning("table %s: a record does not decode (%s); its key keeps the previous value", self.node.name, error)
        new_rows = pl.DataFrame({"__key": upserted_keys.gather(decoded.rows)}).hstack(decoded.frame)
        replaced = last.filter(~pl.col("__key").is_in(pl.Series(list(failed), dtype=pl.Binary).implode())).select("__key")
        kept = self.rows.join(replaced, on="__key", how="anti")
        self.rows = pl.concat([kept, new_rows.select(self.rows.columns)], how="vertical_relaxed")

    def frame(self) -> pl.DataFrame:
        """The current rows (without the record key)."""
        return self.rows.drop("__key")

    def close(self) -> None:
        """Stop reading."""
        self.consumer.close()
