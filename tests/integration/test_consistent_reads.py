"""Readers in another process never see a half-written epoch while the pipeline commits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import polars as pl
import pytest
from lockgate.storage.commit_log import CommitLog

import lockgate as lg
from tests.conftest import json_values, produce

pytestmark = pytest.mark.kafka

PIPELINE = textwrap.dedent(
    """
    import os
    import polars as pl
    import lockgate as lg

    pipe = lg.Pipeline(os.environ["T_NAME"], brokers=os.environ["T_BROKERS"], state=os.environ["T_STATE"],
                       batch=lg.BatchPolicy(max_records=500, max_wait="10ms"))
    events = pipe.source(os.environ["T_SOURCE"], format=lg.JSON(schema={"k": pl.String, "n": pl.Int64, "ts": pl.Int64}),
                         event_time="ts", watermark="1s")
    events.select("k", "n").to_table("a")
    events.select("k", "n").to_table("b")
    # no hop: the counts must be of the very rows of the same epoch
    events.window(lg.Tumbling("1m"), by="k", emit="update", name="counts", repartition=False).agg(c=pl.len()).to_table("counts")
    """
)


def test_tables_and_state_read_during_commits_are_each_one_committed_epoch(brokers, make_topic, tmp_path, unique):
    source = make_topic(f"reads-{unique}", partitions=2)
    produce(brokers, source, json_values([{"k": f"k{i % 7}", "n": i, "ts": 1_700_000_000_000 + i} for i in range(30_000)]))
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE)
    state = str(tmp_path / "state")
    name = f"reads-{unique}"
    env = {**os.environ, "T_NAME": name, "T_BROKERS": brokers, "T_STATE": state, "T_SOURCE": source}
    proc = subprocess.Popen([sys.executable, "-m", "lockgate.cli", "run", str(path), "--until", "caught_up"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads = 0
    epochs_seen = set()
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                log = CommitLog(state).frame().filter(pl.col("kind") == "commit")
            except lg.StorageError:
                continue
            if log.height == 0:
                continue
            epoch = int(log["epoch"].max())
            try:
                a = lg.read_table(state, "a", as_of=epoch).collect()
                b = lg.read_table(state, "b", as_of=epoch).collect()
                counts = lg.read_table(state, "counts", as_of=epoch).collect()
                open_windows = lg.read_state(state, name, "counts", as_of=epoch).collect()
            except lg.StorageError:
                continue  # a table not created yet
            assert a.sort("n").equals(b.sort("n")), f"epoch {epoch}: tables a and b differ: a torn read"
            assert a["n"].n_unique() == a.height, "no duplicates"
            assert int(counts["c"].sum()) == a.height, f"epoch {epoch}: window counts disagree with the rows read"
            assert int(open_windows["c"].sum()) <= a.height
            reads += 1
            epochs_seen.add(epoch)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert reads >= 5 and len(epochs_seen) >= 3, f"the reader must overlap the commits ({reads} reads, {len(epochs_seen)} epochs)"
    final = lg.read_table(state, "a").collect()
    assert final.height == 30_000
