"""Window state persisted each epoch, loaded after a "restart", continues exactly as if nothing happened."""

from __future__ import annotations

import itertools
import tempfile
from datetime import UTC, datetime

import lance
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lockgate.errors import StorageError
from lockgate.operators.windows import (
    Hopping,
    Session,
    Sliding,
    Tumbling,
    WindowLogic,
    WindowSpec,
)
from lockgate.storage.commit_log import CommitLog
from lockgate.storage.state import WindowStore, read_state, spec_from_json, spec_to_json
from polars.testing import assert_frame_equal

from tests.unit.operators.window_oracle import (
    BUFFERED,
    DECOMPOSABLE,
    FAR,
    SCHEMA,
    scenarios,
    with_partition,
)

KINDS = {"tumbling": Tumbling("10s"), "hopping": Hopping("10s", "5s"), "sliding": Sliding("6s"), "session": Session("3s")}
_ids = itertools.count(1)


def _canon(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


def _same(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    """Equal rows; floats to 1e-12 relative: Polars may round a derived value (a mean's s / n) one ulp apart
    for equal inputs in frames laid out differently (seen: 17/3 as 5.666666666666666 and 5.666666666666667)."""
    assert_frame_equal(_canon(got), _canon(expected), check_exact=False, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("aggs", [DECOMPOSABLE, BUFFERED], ids=["partials", "rows"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_restart_from_lance_continues_exactly_as_without_one(kind, aggs, data):
    records, cuts = data.draw(scenarios(disorder_ms=2_000))
    spec = WindowSpec.build("w", KINDS[kind], by="k", aggs=aggs, schema=SCHEMA, time_column="t", emit="final")
    _replay_with_a_restart(spec, records, cuts, restart_at=data.draw(st.integers(0, len(cuts))))


def _replay_with_a_restart(spec: WindowSpec, records: pl.DataFrame, cuts: list[int], restart_at: int, snapshots: set[int] = frozenset()) -> None:
    """Fold the batches twice: in memory only, and persisting each epoch (snapshots at ``snapshots``, each then
    deleting the history before it) with a load from LanceDB alone before batch ``restart_at``; both emit the same."""
    bounds = [0, *cuts, records.height]
    batches = [records.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)]
    state_dir = tempfile.mkdtemp()
    log = CommitLog(state_dir)
    store = WindowStore(state_dir, "p", spec)

    def run(persist: bool) -> pl.DataFrame:
        logic, out, top = WindowLogic(spec), [], None
        for i, batch in enumerate(batches):
            if persist and i == restart_at:
                logic = WindowLogic(spec, store.load(logic.state.watermark))  # the durable copy only
            top = batch["t"].max() if top is None else max(top, batch["t"].max())
            result = logic.on_batch(batch, top - 2_000)
            if persist:
                epoch = next(_ids)
                store.append(logic.take_delta(snapshot=i in snapshots), batch_id=epoch, epoch=epoch)
                log.mark("p", epoch=epoch, batch_id=epoch)
                if i in snapshots:
                    store.forget_before(epoch, shards=[0, 1])
                    left = pl.from_arrow(lance.dataset(store.uri).to_table(columns=["_lg_epoch"]))
                    assert left.height == 0 or left["_lg_epoch"].min() == epoch  # nothing older is left
            out.append(result.emitted)
        out.append(logic.on_batch(records.clear(), FAR).emitted)
        return pl.concat(out, how="vertical_relaxed")

    _same(run(True), run(False))


def test_uncommitted_state_deltas_are_never_loaded(tmp_path):
    spec = WindowSpec.build("w", Tumbling("10s"), by="k", aggs={"n": pl.len()}, schema=SCHEMA, time_column="t")
    store = WindowStore(str(tmp_path), "p", spec)
    batch = pl.DataFrame({"k": ["a"], "x": [1], "y": [1.0], "t": [1_000], "z": ["a"]}, schema=SCHEMA)
    logic = WindowLogic(spec)
    logic.on_batch(batch, None)
    store.append(logic.take_delta(), batch_id=1, epoch=1)
    CommitLog(str(tmp_path)).mark("p", epoch=1, batch_id=1)
    logic.on_batch(batch, None)
    store.append(logic.take_delta(), batch_id=2, epoch=2)  # prepared, never committed
    assert store.load(None).partials["__n_n"].to_list() == [1]
    assert read_state(str(tmp_path), "p", "w").collect()["n"].to_list() == [1]


def test_the_spec_round_trips_through_json_for_readers_without_the_code():
    spec = WindowSpec.build("w", Hopping("10s", "5s"), by="k", aggs=BUFFERED, schema=SCHEMA, time_column="t", emit="update")
    back = spec_from_json(spec_to_json(spec))
    assert (back.window, back.by, back.emit, back.output_schema) == (spec.window, spec.by, spec.emit, spec.output_schema)
    assert [a.kind for a in back.aggs] == [a.kind for a in spec.aggs]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("aggs", [DECOMPOSABLE, BUFFERED], ids=["partials", "rows"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_state_keyed_by_partition_splits_between_two_instances_and_joins_again_exactly(kind, aggs, data):
    """One instance owns both partitions, then each partition moves to its own instance, then both come back to one.

    Each instance loads only its partitions' windows from LanceDB, numbers its kept
    rows on its own, and the union of what the three stages emit equals one fold
    over all the records.
    """
    records, cuts = data.draw(scenarios(disorder_ms=2_000))
    records = with_partition(records)
    spec = WindowSpec.build("w", KINDS[kind], by="k", aggs=aggs, schema=records.schema, time_column="t", emit="final", shard="p")
    bounds = [0, *cuts, records.height]
    batches = [records.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)]
    split_at = data.draw(st.integers(0, len(batches)))
    join_at = data.draw(st.integers(split_at, len(batches)))
    state_dir = tempfile.mkdtemp()
    log = CommitLog(state_dir)
    store = WindowStore(state_dir, "p", spec)

    def step(logic: WindowLogic, batch: pl.DataFrame, watermark: int) -> pl.DataFrame:
        result = logic.on_batch(batch, watermark)
        batch_id = next(_ids)
        store.append(logic.take_delta(), batch_id=batch_id, epoch=batch_id)
        log.mark("p", epoch=batch_id, batch_id=batch_id)
        return result.emitted

    out, tops, top = [], [], None
    for batch in batches:  # the pipeline watermark: every instance sees the same here
        top = batch["t"].max() if top is None else max(top, batch["t"].max())
        tops.append(top - 2_000)
    one = WindowLogic(spec)
    for batch, wm in zip(batches[:split_at], tops[:split_at]):
        out.append(step(one, batch, wm))
    halves = {p: WindowLogic(spec, store.load(one.state.watermark, shards=[p])) for p in (0, 1)}
    for batch, wm in zip(batches[split_at:join_at], tops[split_at:join_at]):
        for p in (0, 1):
            out.append(step(halves[p], batch.filter(pl.col("p") == p), wm))
    marks = [h.state.watermark for h in halves.values() if h.state.watermark is not None]
    both = WindowLogic(spec, store.load(max(marks, default=one.state.watermark), shards=[0, 1]))
    for batch, wm in zip(batches[join_at:], tops[join_at:]):
        out.append(step(both, batch, wm))
    out.append(both.on_batch(records.clear(), FAR).emitted)
    got = pl.concat(out, how="vertical_relaxed")

    whole, expected = WindowLogic(spec), []
    for batch, wm in zip(batches, tops):
        expected.append(whole.on_batch(batch, wm).emitted)
    expected.append(whole.on_batch(records.clear(), FAR).emitted)
    assert "p" not in got.columns
    _same(got, pl.concat(expected, how="vertical_relaxed"))


def test_a_load_of_some_partitions_holds_only_their_windows(tmp_path):
    schema = pl.Schema({**SCHEMA, "p": pl.Int32})
    spec = WindowSpec.build("w", Tumbling("10s"), by="k", aggs={"n": pl.len()}, schema=schema, time_column="t", shard="p")
    batch = pl.DataFrame({"k": ["a", "b", "c"], "x": [1, 2, 3], "y": [1.0, 2.0, 3.0], "t": [1_000] * 3, "z": ["a"] * 3, "p": [0, 1, 2]}, schema=schema)
    store = WindowStore(str(tmp_path), "p", spec)
    logic = WindowLogic(spec)
    logic.on_batch(batch, None)
    store.append(logic.take_delta(), batch_id=1, epoch=1)
    CommitLog(str(tmp_path)).mark("p", epoch=1, batch_id=1)
    assert sorted(store.load(None, shards=[0, 2]).partials["k"].to_list()) == ["a", "c"]
    assert sorted(store.load(None).partials["k"].to_list()) == ["a", "b", "c"]
    assert sorted(read_state(str(tmp_path), "p", "w").collect()["k"].to_list()) == ["a", "b", "c"]
    assert spec_from_json(spec_to_json(spec)).shard == "p"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("aggs", [DECOMPOSABLE, BUFFERED], ids=["partials", "rows"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_snapshots_let_the_history_go_and_a_restart_still_continues_exactly(kind, aggs, data):
    """Random epochs write a snapshot and then delete every row before it; a restart after one is still exact."""
    records, cuts = data.draw(scenarios(disorder_ms=2_000))
    records = with_partition(records)
    spec = WindowSpec.build("w", KINDS[kind], by="k", aggs=aggs, schema=records.schema, time_column="t", emit="final", shard="p")
    snapshots = data.draw(st.sets(st.integers(0, len(cuts)), min_size=1))
    restart_at = data.draw(st.integers(min(snapshots) + 1, len(cuts) + 1))  # after a snapshot let history go
    _replay_with_a_restart(spec, records, cuts, restart_at, snapshots)


def test_an_as_of_read_from_before_the_kept_history_is_refused_by_name(tmp_path):
    spec = WindowSpec.build("w", Tumbling("10s"), by="k", aggs={"n": pl.len()}, schema=SCHEMA, time_column="t")
    store = WindowStore(str(tmp_path), "p", spec)
    log = CommitLog(str(tmp_path))
    batch = pl.DataFrame({"k": ["a"], "x": [1], "y": [1.0], "t": [1_000], "z": ["a"]}, schema=SCHEMA)
    logic = WindowLogic(spec)
    logic.on_batch(batch, None)
    store.append(logic.take_delta(), batch_id=1, epoch=1)
    log.mark("p", epoch=1, batch_id=1)
    logic.on_batch(batch, None)
    store.append(logic.take_delta(snapshot=True), batch_id=2, epoch=2)
    log.mark("p", epoch=2, batch_id=2)
    assert read_state(str(tmp_path), "p", "w", as_of=1).collect()["n"].to_list() == [1]
    log.horizon("p", "w", 2, datetime.now(UTC))
    assert store.forget_before(2, None) == 1
    assert read_state(str(tmp_path), "p", "w").collect()["n"].to_list() == [2]
    assert read_state(str(tmp_path), "p", "w", as_of=2).collect()["n"].to_list() == [2]
    with pytest.raises(StorageError, match=r"as_of=1 is before epoch 2 .*keep_history"):
        read_state(str(tmp_path), "p", "w", as_of=1)
