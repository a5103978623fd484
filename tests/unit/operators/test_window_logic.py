"""The window logic's contract: it owns and updates the state it is given, a batch folded twice counts twice,
each delta holds exactly what changed since the last take, and a logic resumed from the deltas continues the first.

No broker and no LanceDB: a delta is applied to a plain Polars frame here (upserts, then deletes, by
``spec.state_ids``), the way storage applies it per committed batch.
"""

from __future__ import annotations

import itertools

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lockgate.operators.windows import Hopping, Session, Sliding, Tumbling, WindowDelta, WindowLogic, WindowSpec, WindowState
from polars.testing import assert_frame_equal

from tests.unit.operators.window_oracle import AGGREGATIONS, FAR, SCHEMA, SETTINGS, make_spec, scenarios, with_partition

KINDS = {"tumbling": Tumbling("10s"), "hopping": Hopping("10s", "4s"), "sliding": Sliding("7s"), "session": Session("3s")}
CASES = [
    pytest.param(kind, aggs, id=f"{kind}-{name}")
    for kind in KINDS
    for name, aggs in AGGREGATIONS.items()
    if name != "element-wise" or kind in ("tumbling", "hopping")
]


def _batch(keys: list[str], times: list[int], xs: list[int] | None = None) -> pl.DataFrame:
    xs = xs if xs is not None else list(range(len(keys)))
    return pl.DataFrame({"k": keys, "x": xs, "y": [1.0] * len(keys), "t": times, "z": [f"z{x}" for x in xs]}, schema=SCHEMA)


def _stored(spec: WindowSpec, state: WindowState) -> pl.DataFrame:
    """The state as storage holds it: kept rows, or one partial row per open pair."""
    return state.rows if spec.keeps_rows else state.partial_frame()


def _apply(spec: WindowSpec, table: pl.DataFrame, delta: WindowDelta) -> pl.DataFrame:
    """A delta applied as storage applies it: upserts replace rows of the same ids, then deletes remove rows."""
    ids = spec.state_ids
    assert delta.upserts.select(ids).is_unique().all(), "one row per id in a delta"
    kept = table.join(delta.upserts.select(ids), on=ids, how="anti")
    table = pl.concat([kept, delta.upserts.select(table.columns)], how="vertical_relaxed")
    return table.join(delta.deletes.select(ids), on=ids, how="anti")


def _canon(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


def _same(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert_frame_equal(_canon(got), _canon(expected.select(got.columns)), check_exact=False, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("keeps_rows", [False, True], ids=["partials", "rows"])
def test_a_batch_folded_twice_counts_twice(kind, keeps_rows):
    aggs = {"n": pl.len(), "u": pl.col("x").n_unique()} if keeps_rows else {"n": pl.len(), "s": pl.col("x").sum()}
    spec = make_spec(KINDS[kind], aggs, "update")
    assert spec.keeps_rows is (keeps_rows or kind == "sliding")
    logic = WindowLogic(spec)
    batch = _batch(["a", "a", "b"], [1_000, 2_000, 1_500], [1, 2, 3])
    logic.on_batch(batch, None)
    once = logic.current_values()
    logic.on_batch(batch, None)
    twice = logic.current_values()
    keys = ["k", "window_start", "window_end"]
    both = once.join(twice, on=keys, suffix="_2")
    assert both.height == once.height == twice.height > 0
    assert (both["n_2"] == 2 * both["n"]).all(), "the same batch again is more records, not the same state"
    if keeps_rows:
        assert (both["u_2"] == both["u"]).all()
    else:
        assert (both["s_2"] == 2 * both["s"]).all()


def test_fixed_windows_update_the_state_in_place_so_a_state_given_to_a_logic_is_no_value_any_more():
    """Why the contract says the logic owns its state: copying the hot index per batch would cost O(state)."""
    spec = make_spec(Tumbling("10s"), {"n": pl.len()}, "update")
    logic = WindowLogic(spec)
    logic.on_batch(_batch(["a"], [1_000]), None)
    earlier = logic.state
    assert earlier.index is not None and earlier.open_windows == 1
    logic.on_batch(_batch(["b"], [1_000]), None)
    assert logic.state.index is earlier.index
    assert earlier.open_windows == 2, "the earlier view sees the later batch: the index changed in place"


def test_a_delta_holds_the_pairs_a_batch_touched_and_the_windows_that_closed():
    spec = make_spec(Tumbling("10s"), {"n": pl.len()}, "final")
    logic = WindowLogic(spec)
    empty = logic.take_delta()
    assert (empty.rows, empty.batches, empty.snapshot) == (0, 0, False)
    assert empty.upserts.schema == spec.partial_schema()
    assert empty.deletes.columns == spec.state_ids
    logic.on_batch(_batch(["a", "b", "a"], [1_000, 2_000, 12_000]), None)
    first = logic.take_delta()
    assert sorted(first.upserts.select("k", "window_start", "__n_n").rows()) == [("a", 0, 1), ("a", 10_000, 1), ("b", 0, 1)]
    assert (first.deletes.height, first.batches, first.open_windows) == (0, 1, 3)
    assert logic.take_delta().rows == 0, "a take right after a take has nothing"
    logic.on_batch(_batch(["b"], [3_000]), 10_000)  # touches (b, 0), then the watermark closes [0, 10 s)
    second = logic.take_delta()
    assert second.upserts.select("k", "window_start", "__n_n").rows() == [("b", 0, 2)]
    assert sorted(second.deletes.select("k", "window_start").rows()) == [("a", 0), ("b", 0)]
    assert second.open_windows == 1


@pytest.mark.parametrize(("kind", "aggs"), CASES)
@pytest.mark.slow  # ~60 s: three logics per example
@settings(SETTINGS, max_examples=30)  # three logics per example: half the examples of the oracle tests
@given(data=st.data())
def test_deltas_taken_at_any_points_rebuild_the_state_and_a_logic_resumed_from_them_continues_it(kind, aggs, data):
    """Two logics fold the same batches: one hands out a delta after every batch, the other at random points
    (sometimes a snapshot).  Applied in order, either's deltas hold its state at every take.  A third logic,
    resumed at a random point from the deltas alone, emits what the first emits from there on."""
    records, cuts = data.draw(scenarios(disorder_ms=2_000))
    emit = data.draw(st.sampled_from(["final", "update"]))
    spec = make_spec(KINDS[kind], aggs, emit)
    if data.draw(st.booleans(), label="state keyed by input partition"):
        records = with_partition(records)
        spec = make_spec(KINDS[kind], aggs, emit, schema=records.schema, shard="p")
    bounds = [0, *cuts, records.height]
    batches = [records.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)] + [records.clear()]
    takes = data.draw(st.sets(st.integers(0, len(batches) - 1)), label="batches after which the second logic takes")
    snapshots = data.draw(st.sets(st.sampled_from(sorted(takes))) if takes else st.just(set()), label="snapshot takes")
    resume_at = data.draw(st.integers(0, len(batches) - 1), label="batch before which the third logic starts")
    empty = _stored(spec, WindowState.empty(spec))
    every, some = WindowLogic(spec), WindowLogic(spec)
    every_table, some_table = empty, empty
    resumed, got, expected, top = None, [], [], None
    for i, batch in enumerate(batches):
        if i == resume_at:
            resumed = WindowLogic(spec, WindowState.resume(spec, every_table, every.state.watermark))
        top = FAR if batch.height == 0 else (batch["t"].max() if top is None else max(top, batch["t"].max()))
        watermark = top - 2_000
        out = every.on_batch(batch, watermark)
        _same(some.on_batch(batch, watermark).emitted, out.emitted)  # the same rows (sliding windows come in any order)
        if resumed is not None:
            got.append(resumed.on_batch(batch, watermark).emitted)
            expected.append(out.emitted)
        delta = every.take_delta()
        assert delta.batches == 1 and delta.open_windows == every.state.open_windows
        every_table = _apply(spec, every_table, delta)
        _same(every_table, _stored(spec, every.state))
        if i in takes:
            delta = some.take_delta(snapshot=i in snapshots)
            assert delta.snapshot is (i in snapshots)
            if delta.snapshot:
                _same(delta.upserts, _stored(spec, some.state))
            some_table = _apply(spec, some_table, delta)
            _same(some_table, _stored(spec, some.state))
    assert resumed is not None
    _same(pl.concat(got, how="vertical_relaxed"), pl.concat(expected, how="vertical_relaxed"))


@pytest.mark.parametrize(
    ("aggs", "next_seq"),
    # kept rows 0, 1, 2; first's order is the earliest per pair (a: 0, b: 1), and new rows need only come after it
    [({"n": pl.len(), "u": pl.col("x").n_unique()}, 3), ({"n": pl.len(), "f": pl.col("x").first()}, 2), ({"n": pl.len()}, 0)],
    ids=["kept-rows", "first-partial", "no-order-needed"],
)
def test_a_resumed_state_numbers_new_rows_after_the_newest_stored_one(aggs, next_seq):
    """Arrival numbers order kept rows and first/last partials: a resumed state continues after the newest stored."""
    spec = make_spec(Tumbling("10s"), aggs, "final")
    logic = WindowLogic(spec)
    logic.on_batch(_batch(["a", "b", "a"], [1_000, 2_000, 3_000]), None)
    resumed = WindowState.resume(spec, logic.take_delta().upserts, 500)
    assert (resumed.seq, resumed.watermark, resumed.open_windows) == (next_seq, 500, 3 if spec.keeps_rows else 2)
    assert WindowState.resume(spec, _stored(spec, WindowState.empty(spec)), None).seq == 0
