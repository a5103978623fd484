"""Write Nexmark events to three Kafka topics as JSON: ``<prefix>-person``, ``<prefix>-auction``, ``<prefix>-bid``.

Keys: a person's id, an auction's id, a bid's auction (so a topic is keyed by what q3,
q4 and q8 join on), in partition ``key % partitions`` (so an oracle knows each
partition's records, and with them the watermark).  As fast as possible, or at ``rate`` events per second of wall
time, in event order across the three topics (the generator's event time says when
each is due).  Idempotent producer: a retried request never lands after later ones.

Usage::

    python bench/nexmark/produce.py --brokers HOST:PORT --events 1000000 [--rate 50000] [--seed 1] [--prefix nexmark]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import _common as common  # noqa: E402
from bench.nexmark.generator import Events, generate  # noqa: E402

KINDS = ("person", "auction", "bid")


def topics(prefix: str) -> dict[str, str]:
    """The topic of each kind."""
    return {kind: f"{prefix}-{kind}" for kind in KINDS}


def _lines(frame: pl.DataFrame) -> list[bytes]:
    """Each row as one JSON value (one Polars NDJSON write, split; no Python loop building values)."""
    if frame.height == 0:
        return []
    return frame.write_ndjson().encode().splitlines()


def write(brokers: str, events: Events, prefix: str, partitions: int = 8, rate: float | None = None) -> dict[str, Any]:
    """Create the three topics and write ``events`` to them; returns counts and seconds."""
    names = topics(prefix)
    for topic in names.values():
        common.create_topic(brokers, topic, partitions)
    producer = ck.Producer({
        "bootstrap.servers": brokers, "linger.ms": 20, "batch.size": 1_000_000, "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
        "enable.idempotence": True, "acks": "all",
    })
    frames = {"person": (events.persons, "id"), "auction": (events.auctions, "id"), "bid": (events.bids, "auction")}
    order = pl.concat([
        frame.select(pl.lit(kind).alias("kind"), pl.col(key).cast(pl.String).alias("key"), (pl.col(key) % partitions).alias("partition"),
                     "date_time", pl.int_range(pl.len()).alias("row"))
        for kind, (frame, key) in frames.items()
    ]).sort("date_time", maintain_order=True)
    values = {kind: _lines(frame) for kind, (frame, _) in frames.items()}
    errors: list[str] = []

    def on_delivery(err: ck.KafkaError | None, _msg: ck.Message) -> None:
        if err is not None:
            errors.append(err.str())

    started = time.perf_counter()
    for i, (kind, key, partition, _, row) in enumerate(order.iter_rows()):  # the producer side of the bench, not timed by it
        if rate is not None and i % 1_000 == 0:
            due = started + i / rate
            if due > time.perf_counter():
                time.sleep(due - time.perf_counter())
        common.produce_waiting(producer, names[kind], values[kind][row], key.encode(), partition=partition, on_delivery=on_delivery)
        if i % 20_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or errors:
        raise RuntimeError(f"nexmark: {left} records not delivered, {len(errors)} errors (first: {errors[:1]})")
    seconds = time.perf_counter() - started
    return {"topics": names, "partitions": partitions, "persons": events.persons.height, "auctions": events.auctions.height, "bids": events.bids.height,
            "seconds": round(seconds, 2), "events_per_s": round(order.height / seconds) if seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, help="events per second of wall time (default: as fast as possible)")
    parser.add_argument("--event-rate", type=int, default=10_000, help="events per second of event time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prefix", default="nexmark")
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    events = generate(args.events, seed=args.seed, rate=args.event_rate)
    print(write(common.resolve_brokers(args.brokers), events, args.prefix, args.partitions, args.rate))


if __name__ == "__main__":
    main()
