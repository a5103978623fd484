"""``lockgate demo`` ends with a summary a person reads; ``lockgate sample clicks`` gives the README's example its input.

The README's example is taken from README.md by the test itself and run as a new user
would after the set-up: fill its topic with the documented command, run the file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

import lockgate as lg
from lockgate.engine.metrics import Metrics
from lockgate.engine.runner import RunSummary
from tests.conftest import json_frame, read_committed

README = Path(__file__).resolve().parents[2] / "README.md"
CLI = [sys.executable, "-m", "lockgate.cli"]


def _example_section() -> str:
    text = README.read_text()
    return text[text.index("## Example"):text.index("\n## ", text.index("## Example") + 1)]


def test_the_summary_gives_records_batches_dead_letters_and_latency_percentiles():
    from lockgate.engine.demo import summarize

    metrics = Metrics()
    metrics.add("records_in", 50_000, topic="clicks")
    metrics.add("records_out", 45_000, topic="views")
    metrics.add("records_out", 7, topic="p-dlq")
    metrics.add("dlq", 7, topic="p-dlq")
    metrics.add("late", 2, topic="window_1")
    metrics.add("table_rows", 45_000, topic="views")
    metrics.add("batches", 5)
    for seconds in (0.010, 0.012, 0.014, 0.016, 0.2):
        metrics.observe("commit_seconds", seconds)
    metrics.observe("latency_seconds", np.linspace(0.1, 2.0, 50_000))
    text = summarize("demo", RunSummary(5, 50_000, 3.21, "caught_up"), metrics.snapshot())
    lines = text.splitlines()
    assert lines[0] == "demo: caught up in 3.2 s"
    assert len(lines) <= 8 and "{" not in text and "histograms" not in text, "a summary, not a dump of pipe.metrics()"
    assert "records in     50,000 from clicks" in text
    assert "records out    45,000 to topic views; 45,000 rows to table views" in text, "the dead-letter topic is not an output"
    assert "batches        5 committed, 0 aborted" in text
    assert "dead letters   7 (2 of them late)" in text
    assert "commit         p50 14 ms, p99 200 ms" in text
    assert re.search(r"end to end     p50 1\.0\d s, p99 1\.9\d s \(from a record's Kafka timestamp", text), text


@pytest.mark.kafka
def test_demo_ends_with_the_summary(brokers, tmp_path):
    proc = subprocess.run([*CLI, "demo", "--brokers", brokers, "--state", str(tmp_path / "demo"), "--records", "3000"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tail = proc.stdout.strip().splitlines()[-7:]
    assert tail[0].startswith("lockgate-demo: caught up in "), proc.stdout[-2000:]
    assert tail[1].startswith("  records in     3,000 from lockgate-demo-clicks")
    assert tail[5].startswith("  commit         p50 ") and ", p99 " in tail[5]
    assert tail[6].startswith("  end to end     p50 ")
    assert "metrics: {" not in proc.stdout and "'histograms'" not in proc.stdout


def _forget(brokers: str, topics: list[str], group: str) -> None:
    """Delete the topics and the consumer group the README's example uses, from an earlier run on this broker."""
    admin = AdminClient({"bootstrap.servers": brokers})
    existing = set(admin.list_topics(timeout=30).topics)
    gone = [t for t in topics if t in existing]
    if gone:
        for future in admin.delete_topics(gone, operation_timeout=30).values():
            future.result()
    for future in admin.delete_consumer_groups([group], request_timeout=30).values():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            # no such group; or a static member of the last run is still in it (until its session times
            # out): Kafka drops a deleted topic's committed offsets anyway
            assert any(code in str(exc) for code in ("GROUP_ID_NOT_FOUND", "NON_EMPTY_GROUP")), exc
    deadline = time.monotonic() + 60
    while set(gone) & set(admin.list_topics(timeout=30).topics):
        assert time.monotonic() < deadline, f"topics {gone} still there"
        time.sleep(0.5)


@pytest.mark.kafka
@pytest.mark.slow
def test_the_readme_example_runs_as_written_after_the_documented_sample_command(brokers, tmp_path):
    section = _example_section()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()]
    (fill,) = [c for c in commands if c.startswith("lockgate sample")]
    assert 'pipe.source("clicks"' in code and 'brokers="localhost:9092"' in code
    _forget(brokers, ["clicks", "product-views", "clicks-dlq"], "clicks")

    # the example before it has input: what a new user hits first, and what it tells them
    (tmp_path / "pipeline.py").write_text(code)
    env = {**os.environ, "LOCKGATE_BROKERS": brokers}  # the test broker instead of localhost:9092 (the code stays as written)
    before = subprocess.run([sys.executable, "pipeline.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert before.returncode != 0
    assert "source topic 'clicks' does not exist" in before.stderr and f"lockgate sample clicks --brokers {brokers}" in before.stderr
    assert "refused their options" not in before.stderr, before.stderr[-2000:]

    filled = subprocess.run([*CLI, *fill.split()[1:], "--records", "20000", "--brokers", brokers], capture_output=True, text=True, timeout=300)
    assert filled.returncode == 0, filled.stderr
    assert f"produced 20,000 sample clicks to 'clicks' on {brokers}" in filled.stdout

    ran = subprocess.run([sys.executable, "pipeline.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    clicks = json_frame(read_committed(brokers, "clicks"), {"user": pl.String, "url": pl.String, "ts": pl.Int64})
    views = clicks.filter(pl.col("url").str.starts_with("/p/")).height
    assert 0 < views < 20_000
    printed = re.search(r"shape: \((\d[\d_,]*), \d+\)", ran.stdout)  # it printed the committed rows
    assert printed and int(re.sub("[_,]", "", printed.group(1))) == views, ran.stdout[-2000:]
    table = lg.read_table(str(tmp_path / "lockgate-state"), "product_views").collect()
    assert table.height == views and set(table["url"].str.slice(0, 3)) == {"/p/"}


@pytest.mark.kafka
def test_a_pipeline_on_a_missing_topic_names_it_and_the_command_that_fills_it(brokers, tmp_path, unique):
    pipe = lg.Pipeline(f"missing-{unique}", brokers=brokers, state=str(tmp_path / "state"))
    pipe.source(f"nothing-{unique}", format=lg.JSON(schema={"n": pl.Int64})).to_table("n")
    with pytest.raises(lg.PipelineDefinitionError) as caught:
        pipe.run(until="caught_up")
    message = str(caught.value)
    assert f"source topic 'nothing-{unique}' does not exist on {brokers}" in message
    assert f"lockgate sample clicks --topic nothing-{unique} --brokers {brokers}" in message
    assert "refused their options" not in message


def test_sample_clicks_with_a_seed_and_a_start_are_the_same_clicks_in_each_new_topic(brokers):
    schema = {"user": pl.String, "url": pl.String, "ms_on_page": pl.Int64, "ts": pl.Int64}
    frames = []
    for _ in range(2):
        topic = lg.sample_clicks(records=300, seed=7, start="2026-01-01T00:00:00", brokers=brokers)
        frames.append(json_frame(read_committed(brokers, topic), schema).sort("ts"))
    first = 1_767_225_600_000  # 2026-01-01 00:00 UTC in epoch ms
    assert frames[0]["ts"].to_list() == [first + 10 * i for i in range(300)]
    assert frames[0].equals(frames[1])


def test_sample_users_are_one_record_per_user_of_the_clicks_in_a_compacted_topic(brokers):
    topic = lg.sample_users(brokers=brokers)
    users = json_frame(read_committed(brokers, topic), {"user": pl.String, "country": pl.String, "plan": pl.String})
    assert sorted(users["user"]) == sorted(f"user-{i}" for i in range(200))
    assert users.filter(pl.col("user") == "user-5").row(0) == ("user-5", "FR", "pro")
    admin = AdminClient({"bootstrap.servers": brokers})
    (future,) = admin.describe_configs([ConfigResource("topic", topic)]).values()
    assert future.result(30)["cleanup.policy"].value == "compact"
