"""A window that keeps its state per partition trusts the source's declared key, and checks it (no broker)."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest
from lockgate.engine.plan import WindowNode
from lockgate.engine.stateful import WindowRuntime
from lockgate.storage.commit_log import CommitLog

import lockgate as lg


def _runtime(state: str) -> tuple[WindowRuntime, WindowNode]:
    pipe = lg.Pipeline("keyed", brokers="127.0.0.1:1", state=state)
    events = pipe.source("clicks", format=lg.JSON(schema={"user": pl.String, "ts": pl.Datetime("ms")}), event_time="ts",
                         watermark="1s", key="user")
    events.window(lg.Tumbling("1m"), by="user", name="w").agg(n=pl.len()).to_table("w")
    plan = pipe.plan()
    runtime = WindowRuntime("keyed", state, plan, CommitLog(state))
    runtime.assign({("clicks", 0), ("clicks", 1)}, 0.0)
    runtime.load(0.0)
    node = next(n for n in plan.nodes if isinstance(n, WindowNode))
    assert node.sharded
    return runtime, node


def _batch(users: list[str], partitions: list[int]) -> pl.DataFrame:
    n = len(users)
    return pl.DataFrame({
        "_topic": ["clicks"] * n, "_partition": partitions, "_offset": list(range(n)), "_timestamp": [datetime(2026, 1, 1)] * n,
        "_key": [u.encode() for u in users], "user": users, "ts": [datetime(2026, 1, 1, 0, 0, i) for i in range(n)],
    }, schema_overrides={"_partition": pl.Int32, "_timestamp": pl.Datetime("ms"), "ts": pl.Datetime("ms")})


def test_a_key_on_two_partitions_stops_a_window_that_keeps_state_per_partition(tmp_path):
    runtime, node = _runtime(str(tmp_path))
    runtime.step(node, _batch(["a", "b", "a"], [0, 1, 0]), 0.0)  # keyed as declared
    runtime.take()
    with pytest.raises(lg.AssignmentError, match=r"keyed by \['user'\], but \{'user': 'a'\} came from partitions \[0, 1\]"):
        runtime.step(node, _batch(["a", "b", "a"], [0, 1, 1]), 0.0)
