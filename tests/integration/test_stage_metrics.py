"""Per-stage latency: every stage of an epoch has a histogram in ``pipe.metrics()`` and on the Prometheus endpoint."""

from __future__ import annotations

import json
import math
import re

import confluent_kafka as ck
import polars as pl
import pytest
from lockgate.engine.metrics import STAGES
from lockgate.engine.prometheus import exposition

import lockgate as lg
from tests.conftest import produce

pytestmark = pytest.mark.kafka

RUNNER_THREAD = ("stage_wait_seconds", "stage_decode_seconds", "stage_operators_seconds", "stage_settle_wait_seconds")
# the commit protocol: the epoch's commit thread produces, then commits; the materializer writes LanceDB after the commit
COMMIT_THREADS = (("stage_produce_seconds", "stage_commit_seconds"), ("stage_prepare_seconds",))


def test_every_stage_of_an_epoch_has_one_value_per_committed_batch_and_the_stages_fit_in_the_run(
    brokers, make_topic, tmp_path, unique
):
    source = make_topic(f"stages-in-{unique}", partitions=2)
    base = 1_700_000_000_000
    rows = [{"k": f"k{i % 50}", "v": i, "ts": base + i * 10} for i in range(20_000)]
    produce(brokers, source, [json.dumps(r).encode() for r in rows], [r["k"] for r in rows])
    name = f"stages-{unique}"
    pipe = lg.Pipeline(name, brokers=brokers, state=str(tmp_path / "state"), batch=lg.BatchPolicy(max_records=2_000, max_wait="30ms"))
    events = pipe.source(source, format=lg.JSON(schema={"k": pl.String, "v": pl.Int64, "ts": pl.Int64}), event_time="ts", watermark="1s")
    counts = events.window(lg.Tumbling("10s"), by="k", emit="update").agg(n=pl.len(), total=pl.col("v").sum())
    counts.to_kafka(f"{name}-out", key="k")
    counts.to_table("counts")

    summary = pipe.run(until="caught_up", timeout=120)

    snap = pipe.metrics()
    hist = snap["histograms"]
    batches = snap["batches"]
    assert summary.records == 20_000 and batches == summary.batches >= 5, (summary, batches)
    assert set(STAGES) <= set(hist), sorted(set(STAGES) - set(hist))
    for stage in STAGES:
        h = hist[stage]
        assert h["count"] == batches, f"{stage}: {h['count']} values for {batches} committed batches"
        assert h["min"] > 0 and h["p50"] > 0 and h["p99"] >= h["p50"], (stage, h)
        if stage != "stage_materialized_seconds":  # a delay, not a thread's time: the others add up within the run
            assert h["sum"] <= summary.seconds, f"{stage}: {h['sum']:.3f} s in a run of {summary.seconds:.3f} s"
    # an epoch's rows reach LanceDB after its Kafka commit: the delay holds its LanceDB writes
    assert hist["stage_materialized_seconds"]["sum"] >= hist["stage_prepare_seconds"]["sum"]
    # one runner thread, and one epoch's commit at a time: each thread's stages add up to less than the run
    assert sum(hist[s]["sum"] for s in RUNNER_THREAD) <= summary.seconds
    for thread in COMMIT_THREADS:
        assert sum(hist[s]["sum"] for s in thread) <= summary.seconds
    # waiting for records = waiting for the first of them + filling the batch; the commit stage is the commit histogram
    assert math.isclose(hist["stage_wait_first_seconds"]["sum"] + hist["stage_wait_fill_seconds"]["sum"], hist["stage_wait_seconds"]["sum"])
    assert math.isclose(hist["stage_commit_seconds"]["sum"], hist["commit_seconds"]["sum"])
    assert hist["latency_seconds"]["count"] == 20_000  # end to end: one value per record

    text = exposition(name, pipe._metrics)  # what lockgate run --metrics-port serves
    exposed = {
        m.group(1): float(m.group(2))
        for m in re.finditer(rf'lockgate_stage_duration_seconds_count{{pipeline="{name}",stage="(\w+)"}} (\S+)', text)
    }
    assert exposed == {s.removeprefix("stage_").removesuffix("_seconds"): float(batches) for s in STAGES}, exposed


def test_the_commit_logger_at_debug_tells_each_epochs_records_age_and_stages_so_a_slow_epoch_can_be_found(
    brokers, make_topic, tmp_path, unique, caplog
):
    source = make_topic(f"epochlog-in-{unique}", partitions=2)
    rows = [{"k": f"k{i % 20}", "v": i, "ts": 1_700_000_000_000 + i} for i in range(5_000)]
    produce(brokers, source, [json.dumps(r).encode() for r in rows], [r["k"] for r in rows])
    pipe = lg.Pipeline(f"epochlog-{unique}", brokers=brokers, state=str(tmp_path / "state"), batch=lg.BatchPolicy(max_records=1_000))
    events = pipe.source(source, format=lg.JSON(schema={"k": pl.String, "v": pl.Int64, "ts": pl.Int64}), event_time="ts")
    # repartition=False: no repartition topic, so every epoch reads only the source and the offsets add up to its end
    events.window(lg.Tumbling("10s"), by="k", emit="update", repartition=False).agg(n=pl.len()).to_kafka(f"epochlog-{unique}-out", key="k")

    with caplog.at_level("DEBUG", logger="lockgate.commit"):
        summary = pipe.run(until="caught_up", timeout=120)

    lines = [r.getMessage() for r in caplog.records if r.name == "lockgate.commit" and " committed at " in r.getMessage()]
    parsed = [re.fullmatch(r"epoch (\d+) committed at [\d.]+: (\d+) offsets read, the oldest record (\d+) ms old; ms: (.*)", line) for line in lines]
    assert all(parsed) and len(parsed) == summary.batches >= 5, lines[:3]
    ends = ck.Consumer({"bootstrap.servers": brokers, "group.id": unique})
    offsets = sum(ends.get_watermark_offsets(ck.TopicPartition(source, p), timeout=10)[1] for p in (0, 1))
    ends.close()
    assert sum(int(m.group(2)) for m in parsed) == offsets >= 5_000  # each epoch's own offsets, every one once
    assert all(int(m.group(3)) > 0 for m in parsed)  # the records were produced before their commit
    numbers = [int(m.group(1)) for m in parsed]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    for m in parsed:  # every stage of the epoch up to its commit, in ms
        stages = dict(zip(*[iter(m.group(4).split())] * 2, strict=True))
        assert {"decode", "operators", "produce", "commit", "settle_wait"} <= set(stages), stages
        assert all(float(v) >= 0 for v in stages.values())
    # and one line per epoch when its rows reached LanceDB, after its commit
    written = [r.getMessage() for r in caplog.records if r.name == "lockgate.commit" and " written to LanceDB " in r.getMessage()]
    parsed_written = [re.fullmatch(r"epoch (\d+) written to LanceDB ([\d.]+) ms after its commit, with \d+ epochs in all; ms: prepare ([\d.]+) mark ([\d.]+)", w)
                      for w in written]
    assert all(parsed_written) and sorted(int(w.group(1)) for w in parsed_written) == numbers, written[:3]
    assert all(float(w.group(2)) >= float(w.group(3)) >= float(w.group(4)) for w in parsed_written)
