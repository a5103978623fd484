"""``lockgate run notebook.ipynb`` runs a notebook's pipeline as a service; ``lockgate state`` lists, shows and exports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from lockgate.engine.service import notebook_source

import lockgate as lg
from tests.conftest import (
    json_frame,
    json_values,
    produce,
    read_committed,
    wait_for_rows,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]  # notebooks run as services in subprocesses


def _cell(source: str, tags: list[str] | None = None) -> dict:
    return {"cell_type": "code", "metadata": {"tags": tags or []}, "source": textwrap.dedent(source).strip().splitlines(True),
            "outputs": [], "execution_count": None}


def write_notebook(path: Path) -> None:
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Odd numbers, exactly once"]},
        _cell("""
            %matplotlib inline
            import os, time
            import polars as pl
            import lockgate as lg
        """),
        _cell("""
            pipe = lg.Pipeline(os.environ["T_NAME"], brokers=os.environ["T_BROKERS"], state=os.environ["T_STATE"],
                               batch=lg.BatchPolicy(max_records=1_000, max_wait="20ms"))

            def slowly(df: pl.DataFrame) -> pl.DataFrame:
                time.sleep(0.1)  # 40 batches: the SIGTERM comes while they last, also on a loaded machine
                return df

            numbers = pipe.source(os.environ["T_SOURCE"], format=lg.JSON(schema={"n": pl.Int64}))
            odd = numbers.filter(pl.col("n") % 2 == 1).map_batches(slowly)
            odd.to_kafka(os.environ["T_OUT"])
            odd.to_table("odd")
            per_bucket = numbers.with_columns(t=pl.from_epoch(pl.col("n"), time_unit="ms")).select("n", "t")
        """),
        _cell("""
            raise SystemExit("a cell tagged skip-in-service must not run in the service")
        """, tags=["skip-in-service"]),
        _cell("""
            !echo shell lines are not Python either
        """),
    ]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def test_notebook_source_takes_code_cells_in_order_without_skipped_cells_or_ipython_lines(tmp_path):
    path = tmp_path / "pipe.ipynb"
    write_notebook(path)
    source = notebook_source(path)
    assert "skip-in-service" not in source and "SystemExit" not in source
    assert "pass  # %matplotlib inline" in source and "pass  # !echo" in source
    compile(source, str(path), "exec")


def test_a_notebook_runs_as_a_service_stops_on_sigterm_and_a_restart_is_exact(brokers, make_topic, tmp_path, unique):
    source = make_topic(f"nb-in-{unique}", partitions=2)
    produce(brokers, source, json_values([{"n": i} for i in range(40_000)]))
    path = tmp_path / "pipeline.ipynb"
    write_notebook(path)
    state = str(tmp_path / "state")
    env = {**os.environ, "T_NAME": f"nb-{unique}", "T_BROKERS": brokers, "T_STATE": state, "T_SOURCE": source, "T_OUT": f"nb-out-{unique}"}
    cli = [sys.executable, "-m", "lockgate.cli"]
    proc = subprocess.Popen([*cli, "--log-level", "INFO", "run", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(state, "odd", 2_000)
    assert proc.poll() is None, "the service stopped by itself: " + (proc.stderr.read() if proc.stderr else "")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert 0 < lg.read_table(state, "odd").collect().height < 20_000, "stopped in the middle"

    again = subprocess.run([*cli, "run", str(path), "--until", "caught_up"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    expected = sorted(i for i in range(40_000) if i % 2 == 1)
    assert sorted(lg.read_table(state, "odd").collect()["n"].to_list()) == expected
    assert sorted(json_frame(read_committed(brokers, f"nb-out-{unique}"), {"n": pl.Int64})["n"].to_list()) == expected

    # the state explorer on what the service committed
    listed = subprocess.run([*cli, "state", "list", state], capture_output=True, text=True, check=True).stdout
    assert "table  odd" in listed.splitlines()
    shown = subprocess.run([*cli, "state", "show", state, "odd", "--where", "n < 10", "--limit", "3"], capture_output=True, text=True, check=True).stdout
    values = [int(line.strip("│ ")) for line in shown.splitlines() if line.startswith("│ ") and line.strip("│ ").isdigit()]
    assert "shape: (3, 1)" in shown and len(values) == 3 and set(values) <= {1, 3, 5, 7, 9}, shown
    out = tmp_path / "odd.parquet"
    subprocess.run([*cli, "state", "export", state, "odd", str(out), "--where", "n >= 39990"], capture_output=True, text=True, check=True)
    assert sorted(pl.read_parquet(out)["n"].to_list()) == [39991, 39993, 39995, 39997, 39999]
    bad = subprocess.run([*cli, "state", "show", state, "odd", "--as-of", "yesterday"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--as-of 'yesterday': give an epoch number" in bad.stderr


def test_the_state_explorer_lists_and_shows_window_state(brokers, make_topic, tmp_path, unique):
    topic = make_topic(f"st-in-{unique}", partitions=1)
    base = 1_700_000_000_000
    produce(brokers, topic, json_values([{"user": f"u{i % 3}", "ts": base + i * 1000} for i in range(30)]))
    state = str(tmp_path / "state")
    pipe = lg.Pipeline(f"st-{unique}", brokers=brokers, state=state)
    events = pipe.source(topic, format=lg.JSON(schema={"user": pl.String, "ts": pl.Datetime("ms")}), event_time="ts", watermark="1h")
    events.window(lg.Tumbling("1m"), by="user", name="per_minute").agg(n=pl.len()).to_table("minutes")
    pipe.run(until="caught_up", timeout=120)
    cli = [sys.executable, "-m", "lockgate.cli", "state"]
    listed = subprocess.run([*cli, "list", state], capture_output=True, text=True, check=True).stdout.splitlines()
    assert f"state  st-{unique}/per_minute" in listed
    shown = subprocess.run([*cli, "show", state, f"st-{unique}/per_minute", "--where", "\"user\" = 'u1'"], capture_output=True, text=True, check=True).stdout
    assert "shape: (1, 4)" in shown and "│ u1   ┆" in shown and "┆ 10  │" in shown
    bad = subprocess.run([*cli, "show", state, f"st-{unique}/per_minute", "--where", "user = 'u1'"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "double-quote a column whose name is an SQL word" in bad.stderr
