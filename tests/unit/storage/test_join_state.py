"""A stream join's side store: committed rows only, tombstones per shard, snapshots that let the history go."""

from __future__ import annotations

import polars as pl

from lockgate.operators.interval_join import IntervalJoinLogic
from lockgate.operators.join_rows import StreamJoinSpec
from lockgate.storage.commit_log import CommitLog
from lockgate.storage.join_state import JoinSideStore

SCHEMA = pl.Schema({"_partition": pl.Int32, "k": pl.String, "t": pl.Int64})


def _spec(shard: str | None) -> StreamJoinSpec:
    return StreamJoinSpec.build("j", on="k", lower_ms=0, upper_ms=1_000, how="left", left_schema=SCHEMA, right_schema=SCHEMA,
                                  left_time="t", right_time="t", shard=shard)


def _fold(logic: IntervalJoinLogic, partition: int, ts: list[int], watermark: int) -> None:
    rows = pl.DataFrame({"_partition": [partition] * len(ts), "k": ["a"] * len(ts), "t": ts}, schema=SCHEMA)
    logic.on_batch(rows, rows.clear(), watermark_before=None, watermark_after=watermark)


def test_shards_written_by_two_instances_with_the_same_row_ids_load_apart_and_their_tombstones_stay_in_their_shard(tmp_path):
    state, log = str(tmp_path), CommitLog(str(tmp_path))
    store, _ = JoinSideStore.pair(state, "p", _spec("_partition"))
    one, two = IntervalJoinLogic(_spec("_partition")), IntervalJoinLogic(_spec("_partition"))  # two instances: ids 1, 2 each
    _fold(one, 0, [10, 5_000], 0)
    _fold(two, 1, [20, 6_000], 0)
    for batch, logic in ((1, one), (2, two)):
        store.append(logic.take_delta()[0], batch_id=batch, epoch=batch)
        log.mark("p", epoch=batch, batch_id=batch)
    _fold(one, 0, [], 4_000)  # shard 0 drops its row at 10 ms (id 1); shard 1 keeps its id 1
    store.append(one.take_delta()[0], batch_id=3, epoch=3)
    log.mark("p", epoch=3, batch_id=3)
    assert sorted(store.load([0])["t"].to_list()) == [5_000]
    assert sorted(store.load([1])["t"].to_list()) == [20, 6_000]
    assert sorted(store.load()["t"].to_list()) == [20, 5_000, 6_000]


def test_rows_of_a_batch_without_a_commit_mark_are_not_loaded_and_a_snapshot_lets_the_history_go(tmp_path):
    state, log = str(tmp_path), CommitLog(str(tmp_path))
    store, _ = JoinSideStore.pair(state, "p", _spec(None))
    logic = IntervalJoinLogic(_spec(None))
    _fold(logic, 0, [10, 20], 0)
    store.append(logic.take_delta()[0], batch_id=1, epoch=1)
    log.mark("p", epoch=1, batch_id=1)
    _fold(logic, 0, [30], 0)
    store.append(logic.take_delta()[0], batch_id=2, epoch=2)  # never committed
    assert sorted(store.load()["t"].to_list()) == [10, 20]
    _fold(logic, 0, [], 1_015)  # the row at 10 ms goes
    store.append(logic.take_delta(snapshot=True)[0], batch_id=3, epoch=3)
    log.mark("p", epoch=3, batch_id=3)
    assert sorted(store.load()["t"].to_list()) == [20, 30]
    assert store.forget_before(3, None) > 0
    assert sorted(store.load()["t"].to_list()) == [20, 30]
