"""The window runtime's watermarks across a reload (an aborted epoch, a rebalance), with no broker."""

from __future__ import annotations

import polars as pl

import lockgate as lg
from lockgate.engine.stateful import WindowRuntime
from lockgate.storage.commit_log import CommitLog, PartitionRange


def test_a_reload_never_starts_a_watermark_below_the_last_committed_one(tmp_path):
    state = str(tmp_path)
    pipe = lg.Pipeline("floor", brokers="127.0.0.1:1", state=state)
    src = pipe.source("t", format=lg.JSON(schema={"k": pl.String, "ts": pl.Int64}), event_time="ts", watermark="0s", idle_timeout="1s")
    src.window(lg.Tumbling("10s"), by="k").agg(n=pl.len()).to_table("counts")
    log = CommitLog(state)
    runtime = WindowRuntime("floor", state, pipe.plan(), log)
    runtime.assign({("t", 0), ("t", 1)}, now=0.0)
    runtime.load(0.0)

    def times(partition: int, ts: int) -> dict[str, pl.DataFrame]:
        return {"t": pl.DataFrame({"_topic": ["t"], "_partition": [partition], "__lg_t": [ts]},
                                  schema={"_topic": pl.String, "_partition": pl.Int32, "__lg_t": pl.Int64})}

    runtime.observe(times(1, 5_000), now=0.0)
    runtime.observe(times(0, 100_000), now=2.0)  # partition 1 silent for 2 s > idle_timeout: it no longer holds the watermark
    assert runtime.trackers["t"].current(2.0) == 100_000
    # the epoch commits, with the partitions' maximum event times in its prepare records
    log.prepare("floor", epoch=1, batch_id=1, ranges=[PartitionRange("t", 0, 0, 1), PartitionRange("t", 1, 0, 1)],
                tables={}, event_times=runtime.event_times())
    log.mark("floor", epoch=1, batch_id=1)
    runtime.committed(runtime.watermarks())

    runtime.reload(now=2.5)  # the next epoch aborted: back to the committed state
    # rebuilt from the event times alone, both partitions are live again: min(100 s, 5 s) = 5 s, a watermark gone back
    assert runtime.trackers["t"].current(2.5) == 100_000


def test_after_partitions_move_a_reload_starts_from_the_owned_partitions_event_times_alone(tmp_path):
    # the floor was the watermark of other partitions: a partition that comes back is judged by its own
    state = str(tmp_path)
    pipe = lg.Pipeline("moved", brokers="127.0.0.1:1", state=state)
    src = pipe.source("t", format=lg.JSON(schema={"k": pl.String, "ts": pl.Int64}), event_time="ts", watermark="0s")
    src.window(lg.Tumbling("10s"), by="k").agg(n=pl.len()).to_table("counts")
    log = CommitLog(state)
    runtime = WindowRuntime("moved", state, pipe.plan(), log)
    runtime.assign({("t", 0)}, now=0.0)
    runtime.load(0.0)
    runtime.observe({"t": pl.DataFrame({"_topic": ["t"], "_partition": [0], "__lg_t": [100_000]},
                                       schema={"_topic": pl.String, "_partition": pl.Int32, "__lg_t": pl.Int64})}, now=0.0)
    assert runtime.trackers["t"].current(0.0) == 100_000
    log.prepare("moved", epoch=1, batch_id=1, ranges=[PartitionRange("t", 0, 0, 1)], tables={}, event_times=runtime.event_times())
    log.mark("moved", epoch=1, batch_id=1)
    runtime.committed(runtime.watermarks())
    log.prepare("moved", epoch=2, batch_id=2, ranges=[PartitionRange("t", 1, 0, 1)], tables={}, event_times={("t", 1): 5_000})
    log.mark("moved", epoch=2, batch_id=2)  # another instance's epoch on partition 1
    runtime.assign({("t", 1)}, now=1.0)  # partition 1 comes back to this instance
    runtime.reload(now=1.0)
    assert runtime.trackers["t"].current(1.0) == 5_000
