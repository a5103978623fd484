"""Exactly once for a stream join under crashes: one join pipeline SIGKILLed at every step of the commit, then restarted.

The pipeline (views joined with clicks, inner and left, into topics and tables) runs
as ``lockgate run`` in a subprocess; each run arms ``LOCKGATE_CRASH_AT`` at the next
commit step, so one input sees a kill at every step, each from the state the kills
before left; then a clean run ends it.  The outputs must equal the Polars join of
the input: no pair lost, none twice, every unmatched view once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from lockgate.engine import faults

import lockgate as lg
from tests.conftest import same_rows
from tests.integration.test_stream_join_on_kafka import flush_rows, from_topic, make_side, oracle, produce_rows

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PIPELINE_FILE = textwrap.dedent(
    """
    import os
    import lockgate as lg
    from tests.integration.test_stream_join_on_kafka import join_pipeline

    pipe = join_pipeline(os.environ["T_NAME"], os.environ["T_BROKERS"], os.environ["T_STATE"], os.environ["T_VIEWS"],
                         os.environ["T_CLICKS"], batch=1_500, compact_every=2, repartition=os.environ.get("T_REPARTITION", "1") == "1")
    """
)
KILLED = -9


def _service(tmp_path: Path, brokers: str, name: str, views_topic: str, clicks_topic: str, batch: int = 1_500, **env: str) -> tuple[Path, dict[str, str]]:
    """The join pipeline's file and the environment of ``lockgate run`` for it (no crash armed)."""
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE_FILE.replace("batch=1_500", f"batch={batch}"))
    out = {
        **os.environ, "T_NAME": name, "T_BROKERS": brokers, "T_STATE": str(tmp_path / "state"), "T_VIEWS": views_topic,
        "T_CLICKS": clicks_topic, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]), **env,
    }
    out.pop("LOCKGATE_CRASH_AT", None)
    return path, out


def _instances(path: Path, env: dict[str, str], logs: list[Path], *args: str) -> list[subprocess.Popen[bytes]]:
    """One ``lockgate run`` per log, as instances 0, 1, ...; stderr to its log."""
    procs = []
    for instance, log in enumerate(logs):
        with log.open("w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "lockgate.cli", "--log-level", "INFO", "run", str(path), *args],
                env={**env, "LOCKGATE_INSTANCE": str(instance)}, stdout=subprocess.DEVNULL, stderr=err,
            ))
    return procs


def test_a_join_killed_at_every_commit_step_in_turn_then_restarted_is_exactly_the_oracle(brokers, make_topic, tmp_path: Path, unique):
    views_topic, clicks_topic = make_topic(f"cviews-{unique}", partitions=2), make_topic(f"cclicks-{unique}", partitions=2)
    views, clicks = make_side(8_000, "viewer", 5, 10), make_side(6_000, "clicker", 6, 13)
    produce_rows(brokers, views_topic, views, 2, flush_rows("viewer", 10**6, 2))
    produce_rows(brokers, clicks_topic, clicks, 2, flush_rows("clicker", 10**6, 2))
    name, state = f"cjoin-{unique}", str(tmp_path / "state")
    path, env = _service(tmp_path, brokers, name, views_topic, clicks_topic)
    log = []
    for point in [*faults.POINTS, None]:
        run_env = dict(env)
        if point is not None:
            run_env["LOCKGATE_CRASH_AT"] = f"{point}:{1 if point == 'during_compaction' else 2}"
        done = subprocess.run(
            [sys.executable, "-m", "lockgate.cli", "run", str(path), "--until", "caught_up"],
            env=run_env, capture_output=True, text=True, timeout=300, check=False,
        )
        log.append((point, done.returncode))
        expected = KILLED if point is not None else 0
        assert done.returncode == expected, f"{log}:\n{done.stderr[-3000:]}"

    for how in ("inner", "left", "window"):
        want = oracle(views, clicks, how)
        got = from_topic(brokers, f"{name}-{how}").filter(~pl.col("ad").str.starts_with("__flush"))
        assert got.height == want.height and same_rows(got, want), f"{how} topic: {got.height} rows, oracle {want.height}"
        table = lg.read_table(state, how).collect().filter(~pl.col("ad").str.starts_with("__flush"))
        assert same_rows(table, want), f"{how} table: {table.height} rows, oracle {want.height}"
    for side in ("left", "right"):
        assert set(lg.read_state(state, name, f"views_left.{side}").collect()["ad"]) <= {"__flush0", "__flush1"}


def test_two_instances_share_the_join_repartition_partitions_and_the_result_is_exact(brokers, make_topic, tmp_path: Path, unique):
    views_topic, clicks_topic = make_topic(f"sviews-{unique}", partitions=4), make_topic(f"sclicks-{unique}", partitions=2)
    views, clicks = make_side(12_000, "viewer", 7, 10), make_side(9_000, "clicker", 8, 13)
    produce_rows(brokers, views_topic, views, 4, flush_rows("viewer", 10**6, 4))
    produce_rows(brokers, clicks_topic, clicks, 2, flush_rows("clicker", 10**6, 2))
    name = f"sjoin-{unique}"
    path, env = _service(tmp_path, brokers, name, views_topic, clicks_topic, batch=500)
    logs = [tmp_path / f"instance-{i}.log" for i in range(2)]
    procs = []
    try:
        procs = _instances(path, env, logs, "--until", "caught_up")
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    # the union topic has 4 partitions (the larger input's); each instance held some of them
    held = [
        {p for line in log.read_text().splitlines() if "join views_inner: loaded" in line
         for p in re.findall(r"\d+", line.split("of partitions")[1].split("]")[0])}
        for log in logs
    ]
    assert all(held) and held[0] | held[1] == {"0", "1", "2", "3"}, held
    for how in ("inner", "left", "window"):
        want = oracle(views, clicks, how)
        got = from_topic(brokers, f"{name}-{how}").filter(~pl.col("ad").str.starts_with("__flush"))
        assert got.height == want.height and same_rows(got, want), f"{how} topic: {got.height} rows, oracle {want.height}"


def test_joins_that_keep_one_state_stop_an_instance_that_shares_their_topics_with_another(brokers, make_topic, tmp_path: Path, unique):
    views_topic, clicks_topic = make_topic(f"wviews-{unique}", partitions=2), make_topic(f"wclicks-{unique}", partitions=2)
    produce_rows(brokers, views_topic, make_side(2_000, "viewer", 9, 10), 2)
    produce_rows(brokers, clicks_topic, make_side(2_000, "clicker", 10, 10), 2)
    path, env = _service(tmp_path, brokers, f"wjoin-{unique}", views_topic, clicks_topic, T_REPARTITION="0")
    logs = [tmp_path / f"instance-{i}.log" for i in range(2)]
    procs = []
    try:
        procs = _instances(path, env, logs)  # no --until: both stay (one would be done before the other joined)
        deadline = time.monotonic() + 120  # 2 x the 6 s session timeout of waiting, then the error
        while time.monotonic() < deadline and all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        codes = [proc.poll() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    texts = [log.read_text() for log in logs]
    assert 2 in codes, (codes, [t[-2000:] for t in texts])
    stopped = next(t for code, t in zip(codes, texts, strict=True) if code == 2)
    assert "stream joins ['views_inner', 'views_left', 'views_window'] keep one state for all partitions of both" in stopped, stopped[-2000:]
    assert "leave out repartition=False" in stopped
