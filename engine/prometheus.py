"""A pipeline's metrics in the Prometheus text format (``lockgate run --metrics-port 9464``).

The collector reads ``pipe.metrics()`` at each scrape: nothing is kept twice.

Examples
--------
>>> from lockgate.engine.metrics import Metrics
>>> from lockgate.engine.prometheus import exposition
>>> m = Metrics()
>>> m.add("records_in", 5, topic="clicks")
>>> m.observe("batch_seconds", 0.02)
>>> text = exposition("demo", m)
>>> 'lockgate_records_in_total{pipeline="demo",topic="clicks"} 5.0' in text
True
>>> 'lockgate_batch_duration_seconds_count{pipeline="demo"} 1.0' in text
True

Each stage of an epoch is one series of ``lockgate_stage_duration_seconds``:

>>> m.observe("stage_prepare_seconds", 0.004)
>>> 'lockgate_stage_duration_seconds_count{pipeline="demo",stage="prepare"} 1.0' in exposition("demo", m)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lockgate.engine.metrics import STAGES, Metrics
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

__all__ = ["PipelineCollector", "exposition", "serve_metrics"]

#: per-label counters: metrics() name -> (Prometheus name, label name, help)
_LABELLED = {
    "records_in": ("lockgate_records_in", "topic", "Records read, per source topic."),
    "records_out": ("lockgate_records_out", "topic", "Records committed to Kafka, per output topic (dead letters included)."),
    "dlq": ("lockgate_dead_letters", "topic", "Records sent to the dead-letter topic."),
    "late": ("lockgate_late_records", "operator", "Records refused by a window operator because their windows had closed."),
    "table_rows": ("lockgate_table_rows", "table", "Rows committed to table sinks."),
}
_TOTALS = {
    "batches": ("lockgate_batches", "Micro-batches committed."),
    "commits": ("lockgate_commits", "Kafka transactions committed."),
    "aborts": ("lockgate_transaction_aborts", "Kafka transactions aborted (the batch was redone)."),
    "fenced": ("lockgate_fenced", "Times the consumer group fenced this instance."),
    "producer_replacements": ("lockgate_producer_replacements", "Transactional producers replaced after a hung call."),
}
_HISTOGRAMS = {
    "batch_seconds": ("lockgate_batch_duration_seconds", "Poll end to outputs produced, per micro-batch."),
    "commit_seconds": ("lockgate_commit_duration_seconds", "Kafka commit (offsets + commit_transaction), per micro-batch."),
    "latency_seconds": ("lockgate_end_to_end_latency_seconds", "Kafka timestamp of each record to the Kafka commit of its batch."),
    "event_latency_seconds": ("lockgate_event_time_latency_seconds", "Event time of each record to the commit of its batch."),
}


class PipelineCollector(Collector):
    """Prometheus families from one pipeline's :class:`Metrics`, labelled with the pipeline's name."""

    def __init__(self, pipeline: str, metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        snap = self.metrics.snapshot()
        p = self.pipeline
        for key, (name, label, doc) in _LABELLED.items():
            family = CounterMetricFamily(name, doc, labels=["pipeline", label])
            for value_label, value in sorted(snap.get(key, {}).items()):
                family.add_metric([p, value_label], value)
            yield family
        for key, (name, doc) in _TOTALS.items():
            family = CounterMetricFamily(name, doc, labels=["pipeline"])
            family.add_metric([p], snap.get(key, 0))
            yield family
        histograms = snap.get("histograms", {})
        for key, (name, doc) in _HISTOGRAMS.items():
            family = HistogramMetricFamily(name, doc, labels=["pipeline"])
            if key in histograms:
                family.add_metric([p], *_cumulative(histograms[key]))
            yield family
        stages = HistogramMetricFamily(
            "lockgate_stage_duration_seconds",
            "Time of each stage of an epoch (stage label: wait, wait_first, wait_fill, decode, operators, settle_wait, "
            "prepare, produce, commit, mark), per committed micro-batch.",
            labels=["pipeline", "stage"],
        )
        for key in STAGES:
            if key in histograms:
                stages.add_metric([p, key.removeprefix("stage_").removesuffix("_seconds")], *_cumulative(histograms[key]))
        yield stages
        lag = GaugeMetricFamily("lockgate_consumer_lag", "Records not yet read, per assigned input partition.", labels=["pipeline", "topic", "partition"])
        for (topic, partition), value in sorted(snap.get("lag", {}).items()):
            lag.add_metric([p, topic, str(partition)], value)
        yield lag
        rows = GaugeMetricFamily("lockgate_state_rows", "Open (key, window) pairs or kept rows, per window operator.", labels=["pipeline", "operator"])
        for operator, value in sorted(snap.get("state_rows", {}).items()):
            rows.add_metric([p, operator], value)
        yield rows
        size = GaugeMetricFamily("lockgate_state_bytes", "Bytes of hot state, per window operator.", labels=["pipeline", "operator"])
        for operator, value in sorted(snap.get("state_bytes", {}).items()):
            size.add_metric([p, operator], value)
        yield size


def _cumulative(hist: dict[str, Any]) -> tuple[list[tuple[str, float]], float]:
    """A metrics() histogram as Prometheus wants it: cumulative bucket counts, and the sum."""
    cumulative, running = [], 0
    for bound, count in hist["buckets"]:
        running += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return cumulative, hist["sum"]


def _registry(pipeline: str, metrics: Metrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(pipeline, metrics))
    return registry


def exposition(pipeline: str, metrics: Metrics) -> str:
    """The Prometheus text exposition of ``metrics`` now."""
    return generate_latest(_registry(pipeline, metrics)).decode()


def serve_metrics(pipeline: str, metrics: Metrics, port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port`` from a daemon thread."""
    start_http_server(port, addr=addr, registry=_registry(pipeline, metrics))
