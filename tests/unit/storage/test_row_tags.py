"""The _lg_* tags: every writer adds the same columns the same way; the latest row of a key is by (epoch, order)."""

from __future__ import annotations

import lance
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from lockgate.operators.windows import Tumbling, WindowLogic, WindowSpec
from lockgate.storage.row_tags import BATCH, DELETED, EPOCH, INTERNAL_COLUMNS, ORDER, latest_rows, tag, tag_fields
from lockgate.storage.sink_tables import SinkTable
from lockgate.storage.state import WindowStore


def test_tag_appends_the_batch_the_epoch_and_each_rows_place_as_int64():
    tagged = tag(pl.DataFrame({"x": ["a", "b", "c"]}), batch_id=9, epoch=4)
    assert tagged.columns == ["x", *INTERNAL_COLUMNS] == ["x", "_lg_batch", "_lg_epoch", "_lg_order"]
    assert tagged.schema[BATCH] == tagged.schema[EPOCH] == tagged.schema[ORDER] == pl.Int64
    assert tagged.rows() == [("a", 9, 4, 0), ("b", 9, 4, 1), ("c", 9, 4, 2)]
    assert tag(pl.DataFrame({"x": []}, schema={"x": pl.String}), batch_id=1, epoch=1).height == 0


def test_tag_fields_are_the_arrow_types_tag_writes():
    arrow = tag(pl.DataFrame({"x": [1]}), batch_id=1, epoch=1).to_arrow().schema
    assert [arrow.field(f.name) for f in tag_fields()] == tag_fields()


def _spec() -> WindowSpec:
    return WindowSpec.build("w", Tumbling("1m"), by="user", aggs={"n": pl.len()},
                            schema=pl.Schema({"user": pl.String, "t": pl.Int64}), time_column="t")


def test_sink_tables_and_window_state_write_the_same_tags(state_dir):
    frame = pl.DataFrame({"user": ["a", "b", "a"], "t": [1, 2, 70_000]})
    table = SinkTable(state_dir, "t")
    table.append(frame, batch_id=12, epoch=3)
    spec = _spec()
    store = WindowStore(state_dir, "p", spec)
    logic = WindowLogic(spec)
    logic.on_batch(frame, watermark=0)
    store.append(logic.take_delta(), batch_id=12, epoch=3)
    for uri, extra in [(table.uri, ()), (store.uri, (DELETED,))]:
        raw = pl.from_arrow(lance.dataset(uri).to_table())
        assert raw.columns[-len(INTERNAL_COLUMNS) - len(extra):] == [*INTERNAL_COLUMNS, *extra], uri
        assert raw[BATCH].unique().to_list() == [12] and raw[EPOCH].unique().to_list() == [3]
        assert raw[ORDER].to_list() == list(range(raw.height)), uri


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(1, 4)), max_size=30))
def test_the_latest_row_of_a_key_is_the_one_of_the_highest_epoch_then_the_highest_order(rows):
    # each epoch appends its rows in order, as a writer does: the oracle replays them into a dict
    frame = pl.DataFrame({"k": [k for k, _ in rows], "_lg_epoch": [e for _, e in rows], "v": list(range(len(rows)))},
                         schema={"k": pl.String, "_lg_epoch": pl.Int64, "v": pl.Int64})
    frame = frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("_lg_epoch").alias("_lg_order"))
    expected: dict[str, int] = {}
    for k, _, v, _ in frame.sort("_lg_epoch", "_lg_order").iter_rows():
        expected[k] = v
    got = latest_rows(frame.sample(fraction=1.0, shuffle=True, seed=1).lazy(), ["k"]).collect()
    assert dict(got.select("k", "v").iter_rows()) == expected
    assert got.height == len(expected), "one row per key"
