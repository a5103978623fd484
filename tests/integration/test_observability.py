"""``lockgate run --metrics-port``: Prometheus metrics that move as records flow; ``--log-format json``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from lockgate.engine import broker as local_broker

from tests.conftest import json_values, produce
from tests.integration.test_service import PIPELINE_FILE

pytestmark = pytest.mark.kafka


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _total(sample: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in sample.items() if k.startswith(prefix))


def test_the_metrics_endpoint_names_the_metrics_and_they_move_as_records_flow(brokers, make_topic, tmp_path, unique):
    source = make_topic(f"obs-in-{unique}", partitions=2)
    produce(brokers, source, json_values([{"n": i} for i in range(30_000)]))
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE_FILE)
    port = local_broker.free_port()
    env = {**os.environ, "T_NAME": f"obs-{unique}", "T_BROKERS": brokers, "T_STATE": str(tmp_path / "state"),
           "T_SOURCE": source, "T_OUT": f"obs-out-{unique}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockgate.cli", "--log-level", "INFO", "--log-format", "json", "run", str(path), "--metrics-port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        first: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                first = _scrape(port)
            except OSError:
                time.sleep(0.2)
                continue
            if _total(first, "lockgate_records_in_total") > 0:
                break
            time.sleep(0.2)
        time.sleep(2)
        second = _scrape(port)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    label = f'pipeline="obs-{unique}"'
    assert first[f'lockgate_records_in_total{{{label},topic="{source}"}}'] > 0
    for name in ("lockgate_records_in_total", "lockgate_records_out_total", "lockgate_table_rows_total",
                 "lockgate_batch_duration_seconds_count", "lockgate_commit_duration_seconds_count",
                 "lockgate_end_to_end_latency_seconds_count", "lockgate_batches_total", "lockgate_stage_duration_seconds_count"):
        assert _total(second, name) > _total(first, name), f"{name} did not move: {_total(first, name)} -> {_total(second, name)}"
    stages = {m.group(1) for k in second if (m := re.match(rf'lockgate_stage_duration_seconds_count{{{label},stage="(\w+)"}}', k))}
    assert stages == {"wait", "wait_first", "wait_fill", "decode", "operators", "settle_wait", "prepare", "produce", "commit", "mark",
                      "materialized"}, stages
    lags = {k: v for k, v in second.items() if k.startswith("lockgate_consumer_lag{")}
    assert len(lags) == 2 and all(re.search(r'partition="[01]"', k) for k in lags), lags
    assert f"lockgate_transaction_aborts_total{{{label}}}" in second
    # structured logs: every log line lockgate wrote is one JSON object
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e["logger"] == "lockgate.service" and "received SIGTERM" in e["message"] for e in events), err[-2000:]
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in events)
    assert not [line for line in err.splitlines() if re.match(r"\d{4}-\d\d-\d\d .* (INFO|WARNING) lockgate", line)], "no plain-text lockgate lines"
