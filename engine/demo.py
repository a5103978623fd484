"""``lockgate demo``: a clickstream through a filter/project pipeline into a topic and a table.

Starts the local broker unless ``brokers`` is given, produces a sample clickstream,
runs the pipeline until it has caught up, and prints the committed output.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

import confluent_kafka as ck
import polars as pl
from confluent_kafka.admin import AdminClient, NewTopic
from lockgate.engine.config import BatchPolicy
from lockgate.engine.formats import JSON
from lockgate.engine.pipeline import Pipeline
from lockgate.storage.tables import read_table

__all__ = ["run_demo"]

CLICKS = "lockgate-demo-clicks"
PAGES = "lockgate-demo-pages"
SCHEMA = {"user": pl.String, "url": pl.String, "ms_on_page": pl.Int64, "ts": pl.Datetime("ms")}


def _produce_clicks(brokers: str, count: int) -> None:
    admin = AdminClient({"bootstrap.servers": brokers})
    if CLICKS not in admin.list_topics(timeout=30).topics:
        admin.create_topics([NewTopic(CLICKS, num_partitions=4, replication_factor=1)])[CLICKS].result(30)
    producer = ck.Producer({"bootstrap.servers": brokers, "linger.ms": 20})
    rng = random.Random()
    now = int(time.time() * 1000)
    urls = ["/", "/search", "/cart"] + [f"/p/{i}" for i in range(40)]
    for i in range(count):  # sample data for the demo, not the engine's hot path
        user = f"user-{rng.randrange(200)}"
        click = {"user": user, "url": rng.choice(urls), "ms_on_page": rng.randrange(100, 60_000), "ts": now - (count - i) * 10}
        producer.produce(CLICKS, json.dumps(click).encode(), user.encode())
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(60)


def build_demo_pipeline(brokers: str, state: str) -> Pipeline:
    """The demo's pipeline: product-page views with seconds on page, to a topic and a table."""
    pipe = Pipeline("lockgate-demo", brokers=brokers, state=state, batch=BatchPolicy(max_records=20_000, max_wait="100ms"))
    clicks = pipe.source(CLICKS, format=JSON(schema=SCHEMA), event_time="ts")
    views = (
        clicks.filter(pl.col("url").str.starts_with("/p/"))
        .with_columns(product=pl.col("url").str.slice(3).cast(pl.Int32), seconds=pl.col("ms_on_page") / 1000)
        .select("user", "product", "seconds", "ts")
    )
    views.to_kafka(PAGES, key="user")
    views.to_table("product_views")
    return pipe


def run_demo(brokers: str, state: str, records: int = 50_000) -> pl.DataFrame:
    """Produce ``records`` clicks, process them exactly once, return the committed table."""
    print(f"producing {records:,} sample clicks to {CLICKS!r} on {brokers} ...")
    _produce_clicks(brokers, records)
    pipe = build_demo_pipeline(brokers, state)
    print(pipe.plan().explain())
    summary = pipe.run(until="caught_up", timeout=600)
    print(
        f"\ncommitted {summary.batches} micro-batches, {summary.records:,} records in {summary.seconds:.1f}s "
        f"at {datetime.now(UTC):%H:%M:%S} UTC; metrics: {pipe.metrics()}"
    )
    table = read_table(state, "product_views").collect()
    print(f"\ncommitted rows of table 'product_views' under {state} (lg.read_table):")
    print(table.sort("ts", descending=True).head(10))
    print("\ntop products by views:")
    print(table.group_by("product").agg(views=pl.len(), avg_seconds=pl.col("seconds").mean().round(1)).sort("views", descending=True).head(5))
    return table
