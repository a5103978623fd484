"""``lockgate demo`` and ``lockgate sample clicks``: sample clickstreams and a pipeline over them.

``lockgate demo`` starts the local broker unless ``brokers`` is given, produces a sample
clickstream, runs a filter/project pipeline into a topic and a table until it has caught up,
prints the committed output and ends with a short summary (:func:`summarize`).
``lockgate sample clicks`` only creates and fills a topic (``clicks`` by default: the input
of the README's example).  From Python, ``lg.sample_clicks()`` and ``lg.sample_users()``
create a new topic of sample records and return its name (the docstring examples of
``lg.Pipeline`` and ``lg.Stream`` start from them).

Examples
--------
>>> from lockgate.engine.demo import summarize
>>> from lockgate.engine.runner import RunSummary
>>> metrics = {"records_in": {"clicks": 5000}, "records_out": {"views": 4625}, "table_rows": {"views": 4625},
...            "dlq": {}, "late": {}, "batches": 2, "aborts": 0,
...            "histograms": {"commit_seconds": {"p50": 0.012, "p99": 0.0405},
...                           "latency_seconds": {"p50": 0.35, "p99": 1.2}}}
>>> print(summarize("demo", RunSummary(2, 5000, 1.93, "caught_up"), metrics))
demo: caught up in 1.9 s
  records in     5,000 from clicks
  records out    4,625 to topic views; 4,625 rows to table views
  batches        2 committed, 0 aborted
  dead letters   0
  commit         p50 12 ms, p99 40 ms
  end to end     p50 350 ms, p99 1.20 s (from a record's Kafka timestamp to its batch's commit)
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import polars as pl
from lockgate.engine import kafka_clients
from lockgate.engine.admin import create_topic
from lockgate.engine.config import BatchPolicy, PipelineConfig, overrides
from lockgate.engine.formats import JSON
from lockgate.engine.pipeline import Pipeline
from lockgate.engine.runner import RunSummary
from lockgate.errors import BrokerError
from lockgate.storage.sink_tables import read_table

__all__ = ["build_demo_pipeline", "produce_clicks", "run_demo", "sample_clicks", "sample_users", "summarize"]

CLICKS = "lockgate-demo-clicks"
PAGES = "lockgate-demo-pages"
SCHEMA = {"user": pl.String, "url": pl.String, "ms_on_page": pl.Int64, "ts": pl.Datetime("ms")}
#: the topic ``lockgate sample clicks`` fills by default: the source of the README's example
SAMPLE_TOPIC = "clicks"
#: the sample users' countries and plans (``sample_users``): user-i is in COUNTRIES[i % 4], on PLANS[i % 3]
COUNTRIES = ("DE", "FR", "NL", "US")
PLANS = ("free", "free", "pro")


def produce_clicks(
    brokers: str, count: int, topic: str = CLICKS, *, partitions: int = 4, seed: int | None = None, start: datetime | str | None = None
) -> None:
    """Create ``topic`` if it does not exist and produce ``count`` sample clicks to it, keyed by user.

    Each value is a JSON object with ``user`` (``user-0`` ... ``user-199``), ``url`` (``/``,
    ``/search``, ``/cart`` or a product page ``/p/0`` ... ``/p/39``), ``ms_on_page`` and ``ts``
    (epoch milliseconds, 10 ms apart, ending now, or from ``start``): the columns of
    :data:`SCHEMA`, and of the README's example (which reads ``user``, ``url`` and ``ts``).
    The same ``seed`` gives the same users, urls and times on page.
    """
    create_topic({"bootstrap.servers": brokers}, topic, partitions)
    rng = random.Random(seed)
    first = int(time.time() * 1000) - count * 10 if start is None else _epoch_ms(start)
    urls = ["/", "/search", "/cart"] + [f"/p/{i}" for i in range(40)]

    def clicks() -> Iterator[tuple[str, dict[str, Any]]]:
        for i in range(count):  # sample data, not the engine's hot path
            user = f"user-{rng.randrange(200)}"
            yield user, {"user": user, "url": rng.choice(urls), "ms_on_page": rng.randrange(100, 60_000), "ts": first + i * 10}

    _produce_json(brokers, topic, clicks(), "sample clicks")


def _epoch_ms(start: datetime | str) -> int:
    """``start`` (a datetime or an ISO string; naive ones are UTC) as epoch milliseconds."""
    when = datetime.fromisoformat(start) if isinstance(start, str) else start
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


def _produce_json(brokers: str, topic: str, records: Iterable[tuple[str, dict[str, Any]]], what: str) -> None:
    """Produce (key, JSON value) records to ``topic`` in order, and wait until every one is delivered."""
    # Idempotent, so each partition keeps the order it was written in: librdkafka's default is
    # off, and a plain producer's retried request (e.g. "Not leader for partition" on a topic just
    # made) lands after the ones behind it, which a windowed reader rightly counts late.
    producer = kafka_clients.producer({"bootstrap.servers": brokers, "linger.ms": 20, "enable.idempotence": True})
    count = 0
    for count, (key, value) in enumerate(records, 1):
        while True:
            try:
                producer.produce(topic, json.dumps(value).encode(), key.encode())
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        if count % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    if left:
        raise BrokerError(f"{left:,} of {count:,} {what} to {topic!r} were not delivered in 60 s; is the broker at {brokers} up?")


def _brokers(given: str | None) -> str:
    """``given``, else the brokers an ``lg.Pipeline`` without ``brokers=`` uses: ``$LOCKGATE_BROKERS``, else ``localhost:9092``."""
    if given is not None:
        return given
    return overrides().get("brokers") or PipelineConfig.model_fields["brokers"].default


def sample_clicks(
    topic: str | None = None,
    *,
    records: int = 1_000,
    seed: int | None = None,
    start: datetime | str | None = None,
    brokers: str | None = None,
    partitions: int = 4,
) -> str:
    """Create a topic of ``records`` sample clicks (JSON, keyed by user) and return its name.

    The clicks of ``lockgate sample clicks``: ``user`` (``user-0`` ... ``user-199``),
    ``url`` (``/``, ``/search``, ``/cart`` or ``/p/0`` ... ``/p/39``), ``ms_on_page`` and
    ``ts`` (epoch milliseconds, 10 ms apart).

    Parameters
    ----------
    topic
        The topic to create and fill (records are added if it exists).  By default a
        new one, ``clicks-<8 hex digits>``, so that each call starts from an empty topic.
    records
        How many clicks.
    seed
        The same seed gives the same users, urls and times on page.
    start
        The first click's ``ts`` (a datetime or an ISO string; naive is UTC).  By default the
        clicks end now.
    brokers
        Kafka bootstrap servers; by default those of an ``lg.Pipeline`` without ``brokers=``:
        ``$LOCKGATE_BROKERS``, else ``localhost:9092`` (``lockgate broker start`` runs a broker).
    partitions
        Partitions of the topic, if this call creates it.

    Examples
    --------
    >>> import lockgate as lg
    >>> lg.sample_clicks(records=100, seed=1, start="2026-01-01")
    'clicks-...'
    """
    topic = topic or f"clicks-{uuid.uuid4().hex[:8]}"
    produce_clicks(_brokers(brokers), records, topic, partitions=partitions, seed=seed, start=start)
    return topic


def sample_users(topic: str | None = None, *, brokers: str | None = None, partitions: int = 4) -> str:
    """Create a compacted topic of the 200 sample users (JSON, keyed by user) and return its name.

    One record per user of :func:`sample_clicks`: ``user`` (``user-0`` ... ``user-199``),
    ``country`` (``user-i`` is in ``("DE", "FR", "NL", "US")[i % 4]``) and ``plan``
    (``"pro"`` for every third user, ``user-2``, ``user-5``, ...; ``"free"`` otherwise): a
    table to join clicks with (``pipe.table(topic, key="user", ...)``).  ``topic``,
    ``brokers`` and ``partitions`` as in :func:`sample_clicks` (the default topic is
    ``users-<8 hex digits>``).

    Examples
    --------
    >>> import lockgate as lg
    >>> lg.sample_users()
    'users-...'
    """
    topic = topic or f"users-{uuid.uuid4().hex[:8]}"
    brokers = _brokers(brokers)
    create_topic({"bootstrap.servers": brokers}, topic, partitions, {"cleanup.policy": "compact"})
    users = [(f"user-{i}", {"user": f"user-{i}", "country": COUNTRIES[i % 4], "plan": PLANS[i % 3]}) for i in range(200)]
    _produce_json(brokers, topic, users, "sample users")
    return topic


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def _percentiles(metrics: dict[str, Any], name: str) -> str:
    hist = metrics.get("histograms", {}).get(name) or {}
    if hist.get("p50") is None:
        return "no commits yet"
    return f"p50 {_duration(hist['p50'])}, p99 {_duration(hist['p99'])}"


def summarize(pipeline: str, summary: RunSummary, metrics: dict[str, Any]) -> str:
    """A few lines a person reads after a run: records, batches, dead letters, latency percentiles.

    ``metrics`` is ``pipe.metrics()`` after ``summary = pipe.run(...)``.
    """

    def per(counts: dict[str, int], what: str) -> str:
        return "; ".join(f"{n:,} {what} {label}" for label, n in sorted(counts.items())) or "0"

    dlq, late = sum(metrics.get("dlq", {}).values()), sum(metrics.get("late", {}).values())
    records_out = {t: n for t, n in metrics.get("records_out", {}).items() if t not in metrics.get("dlq", {})}
    outputs = "; ".join(x for x in (per(records_out, "to topic"), per(metrics.get("table_rows", {}), "rows to table")) if x != "0")
    lines = [
        f"{pipeline}: {summary.stopped_because.replace('_', ' ')} in {summary.seconds:.1f} s",
        f"  records in     {per(metrics.get('records_in', {}), 'from')}",
        f"  records out    {outputs or '0'}",
        f"  batches        {int(metrics.get('batches', 0)):,} committed, {int(metrics.get('aborts', 0)):,} aborted",
        f"  dead letters   {dlq:,}" + (f" ({late:,} of them late)" if late else ""),
        f"  commit         {_percentiles(metrics, 'commit_seconds')}",
        f"  end to end     {_percentiles(metrics, 'latency_seconds')} (from a record's Kafka timestamp to its batch's commit)",
    ]
    return "\n".join(lines)


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
    """Produce ``records`` clicks, process them exactly once, print the output and a summary; return the table."""
    print(f"producing {records:,} sample clicks to {CLICKS!r} on {brokers} ...")
    produce_clicks(brokers, records)
    pipe = build_demo_pipeline(brokers, state)
    print(pipe.plan().explain())
    summary = pipe.run(until="caught_up", timeout=600)
    table = read_table(state, "product_views").collect()
    print(f"\ncommitted rows of table 'product_views' under {state} (lg.read_table):")
    print(table.sort("ts", descending=True).head(10))
    print("\ntop products by views:")
    print(table.group_by("product").agg(views=pl.len(), avg_seconds=pl.col("seconds").mean().round(1)).sort("views", descending=True).head(5))
    print()
    print(summarize(pipe.name, summary, pipe.metrics()))
    return table
