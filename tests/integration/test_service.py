"""``lockgate run pipeline.py`` runs the file's pipeline as a service until SIGTERM, then stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import polars as pl
import pytest

import lockgate as lg
from tests.conftest import (
    json_frame,
    json_values,
    produce,
    read_committed,
    wait_for_rows,
)

pytestmark = pytest.mark.kafka

PIPELINE_FILE = textwrap.dedent(
    """
    import os, time
    import polars as pl
    import lockgate as lg

    pipe = lg.Pipeline(os.environ["T_NAME"], brokers=os.environ["T_BROKERS"], state=os.environ["T_STATE"],
                       batch=lg.BatchPolicy(max_records=1_000, max_wait="20ms"))

    def slowly(df: pl.DataFrame) -> pl.DataFrame:
        time.sleep(0.05)   # make the run long enough to be stopped in the middle
        return df

    odd = pipe.source(os.environ["T_SOURCE"], format=lg.JSON(schema={"n": pl.Int64})).filter(pl.col("n") % 2 == 1)
    odd.map_batches(slowly).to_kafka(os.environ["T_OUT"])
    odd.to_table("odd")

    if __name__ == "__main__":
        raise SystemExit("lockgate run must not execute the __main__ block")
    """
)


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lockgate.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_sigterm_stops_after_the_open_batch_and_a_restart_completes_exactly_once(brokers, make_topic, tmp_path, unique):
    source = make_topic(f"svc-in-{unique}", partitions=2)
    produce(brokers, source, json_values([{"n": i} for i in range(40_000)]))
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE_FILE)
    state = str(tmp_path / "state")
    env = {**os.environ, "T_NAME": f"svc-{unique}", "T_BROKERS": brokers, "T_STATE": state, "T_SOURCE": source, "T_OUT": f"svc-out-{unique}"}

    proc = _cli("--log-level", "INFO", "run", str(path), env=env)
    wait_for_rows(state, "odd", 2_000)
    assert proc.poll() is None, "the service stopped by itself: " + (proc.stderr.read() if proc.stderr else "")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "received SIGTERM: finishing the open micro-batch" in err
    assert "stopped (stop requested)" in out
    partial = lg.read_table(state, "odd").collect().height
    assert 0 < partial < 20_000, "stopped in the middle"

    again = _cli("run", str(path), "--until", "caught_up", env=env)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    expected = sorted(i for i in range(40_000) if i % 2 == 1)
    assert sorted(lg.read_table(state, "odd").collect()["n"].to_list()) == expected
    got = sorted(json_frame(read_committed(brokers, f"svc-out-{unique}"), {"n": pl.Int64})["n"].to_list())
    assert got == expected


def test_run_refuses_a_file_without_a_pipeline_with_a_clear_message(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    proc = _cli("run", str(path), env=dict(os.environ))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "empty.py defines no lg.Pipeline" in err


def test_demo_produces_runs_and_prints_the_committed_table(brokers, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lockgate.cli", "demo", "--brokers", brokers, "--state", str(tmp_path / "demo"), "--records", "5000"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "committed rows of table 'product_views'" in proc.stdout
    table = lg.read_table(str(tmp_path / "demo"), "product_views").collect()
    assert table.height > 0
    assert table.columns == ["user", "product", "seconds", "ts"]
