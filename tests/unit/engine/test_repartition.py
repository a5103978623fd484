"""Repartition topics without a broker: the plan's stages, routing, the record batches and their marks, run_plan through the hop."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest
from lockgate.engine.encode import encode_repartition
from lockgate.engine.execution import run_plan
from lockgate.engine.plan import RepartitionNode
from lockgate.engine.repartition import EVENT_TIME, route
from lockgate.engine.stateful import WindowRuntime
from lockgate.engine.watermarks import ShuffledWatermark
from lockgate.storage.commit_log import CommitLog

import lockgate as lg

SCHEMA = {"user": pl.String, "country": pl.String, "amount": pl.Int64, "t": pl.Int64}
MINUTE = 60_000


def _pipe(tmp_path, key: str | None = "user") -> tuple[lg.Pipeline, lg.Stream]:
    pipe = lg.Pipeline("shop", brokers="127.0.0.1:1", state=str(tmp_path))
    return pipe, pipe.source("orders", format=lg.JSON(schema=SCHEMA), event_time="t", watermark="2s", key=key)


def _events(n: int, seed: int, partitions: int = 4) -> pl.DataFrame:
    """Orders keyed by user over ``partitions`` partitions, up to 1.5 s out of order (under the 2 s watermark delay)."""
    rng = random.Random(seed)
    rows = [
        {"user": f"u{rng.randrange(200)}", "country": rng.choice(["DE", "FR", "NL", "US", "IT"]), "amount": rng.randrange(1, 100),
         "t": i * 40 + rng.randrange(0, 1_500)}
        for i in range(n)
    ]
    frame = pl.DataFrame(rows, schema=SCHEMA)
    users = sorted(set(frame["user"]))
    owner = {u: i % partitions for i, u in enumerate(users)}
    return frame.with_columns(_partition=pl.col("user").replace_strict(owner, return_dtype=pl.Int32))


def _oracle(events: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return (
        events.with_columns(window_start=(pl.col("t") // MINUTE * MINUTE).cast(pl.Datetime("ms")))
        .group_by(*by, "window_start").agg(n=pl.len().cast(pl.UInt32), total=pl.col("amount").sum())
        .sort(*by, "window_start")
    )


def test_a_window_grouped_by_another_column_reads_a_repartition_topic_in_a_second_stage(tmp_path):
    pipe, orders = _pipe(tmp_path)
    orders.window(lg.Tumbling("1m"), by="country", name="per_country").agg(n=pl.len()).to_table("per_country")
    orders.window(lg.Tumbling("1m"), by="user", name="per_user").agg(n=pl.len()).to_table("per_user")
    plan = pipe.plan()
    (hop,) = plan.repartitions
    assert hop.target == "shop-per_country-repartition" and hop.by == ("country",)
    stages = plan.stages()
    assert stages["per_user"] == 1 and stages["per_country"] == 2  # keyed like the source: no hop
    text = plan.explain()
    assert "stage 1 (reads orders)" in text and "stage 2 (reads shop-per_country-repartition)" in text
    assert "[state per repartition partition]" in text and "[state per partition]" in text
    assert "<th>stage</th>" in plan._repr_html_()
    window = next(n for n in plan.nodes if n.name == "per_country")
    assert window.sharded and window.source.repartitioned_by is hop


def test_a_window_grouped_by_a_column_the_source_is_not_keyed_by_goes_through_a_repartition_topic_by_default(tmp_path):
    pipe, orders = _pipe(tmp_path, key=None)
    orders.window(lg.Tumbling("1m"), by="country", name="per_country").agg(n=pl.len()).to_table("per_country")
    (hop,) = pipe.plan().repartitions
    assert hop.by == ("country",) and "state needs all partitions in one instance" not in pipe.plan().explain()


def test_with_repartition_false_a_window_keeps_one_state_for_the_topic_and_no_hop(tmp_path):
    pipe, orders = _pipe(tmp_path, key=None)
    orders.window(lg.Tumbling("1m"), by="country", repartition=False).agg(n=pl.len()).to_table("per_country")
    plan = pipe.plan()
    assert plan.repartitions == () and "state needs all partitions in one instance" in plan.explain()


def test_grouping_by_a_kafka_column_other_than_the_key_cannot_cross_a_hop(tmp_path):
    pipe, orders = _pipe(tmp_path)
    with pytest.raises(lg.PipelineDefinitionError, match=r"includes the Kafka column\(s\) \['_partition'\].*repartition=False"):
        orders.window(lg.Tumbling("1m"), by=["country", "_partition"]).agg(n=pl.len())


def test_a_key_always_goes_to_one_partition_and_keys_spread_over_all():
    frame = pl.DataFrame({"country": [f"c{i % 50}" for i in range(5_000)], "n": range(5_000)})
    parts = frame.with_columns(route(frame, ("country",), 8))
    assert parts.group_by("country").agg(pl.col("__lg_partition").n_unique())["__lg_partition"].max() == 1
    assert parts["__lg_partition"].n_unique() == 8
    assert route(frame, (), 8).unique().to_list() == [0]


def test_each_partition_gets_its_rows_and_a_mark_on_its_last_record_batch(tmp_path):
    pipe, orders = _pipe(tmp_path)
    orders.window(lg.Tumbling("1m"), by="country").agg(n=pl.len()).to_table("per_country")
    (hop,) = pipe.plan().repartitions
    hop = RepartitionNode(**{**hop.__dict__, "format": type(hop.format)(schema=hop.format.schema, rows_per_message=100)})
    events = _events(1_000, seed=1)
    out = encode_repartition(hop, events, 4, b'{"p":{}}')
    assert sorted(set(out.partitions)) == [0, 1, 2, 3]
    decoded = hop.format.decode(out.values)
    rows = decoded.frame.with_columns(_partition=pl.Series([out.partitions[i] for i in decoded.rows], dtype=pl.Int32))
    assert rows.height == 1_000 and rows[EVENT_TIME].to_list() == rows["t"].to_list()
    assert (route(rows, ("country",), 4) == rows["_partition"]).all()
    marked = [out.partitions[i] for i, _ in decoded.marks]
    assert sorted(marked) == [0, 1, 2, 3]  # one mark per partition ...
    for i, _ in decoded.marks:  # ... on its last record batch
        assert all(out.partitions[j] != out.partitions[i] for j in range(i + 1, len(out.values)))
    assert encode_repartition(hop, events.clear(), 4, None).values == []  # no rows, no mark: nothing
    only_marks = encode_repartition(hop, events.clear(), 4, b'{"p":{}}')
    assert only_marks.partitions == [0, 1, 2, 3] and hop.format.decode(only_marks.values).frame.height == 0


def test_a_mark_is_written_when_the_upstream_had_records_or_what_it_says_changed(tmp_path):
    pipe, orders = _pipe(tmp_path)
    orders.window(lg.Tumbling("1m"), by="country").agg(n=pl.len()).to_table("per_country")
    plan = pipe.plan()
    (hop,) = plan.repartitions
    runtime = WindowRuntime("shop", str(tmp_path), plan, CommitLog(str(tmp_path)))
    runtime.set_counts({"orders": 2, hop.target: 2})
    runtime.assign({("orders", 0), ("orders", 1), (hop.target, 0), (hop.target, 1)}, 0.0)
    times = pl.DataFrame({"_topic": ["orders"], "_partition": [0], "__lg_t": [5_000]}, schema_overrides={"_partition": pl.Int32})
    runtime.observe({"orders": times}, 1.0)
    mark = runtime.mark(hop, True, 1.0)
    assert json.loads(mark) == {"t": "orders", "p": {"0": [5000, True], "1": [None, True]}}
    runtime.sent(hop, mark)
    assert runtime.mark(hop, False, 2.0) is None  # only the repartition topic was read, and nothing changed
    later = runtime.mark(hop, False, 40.0)  # partition 1 has been idle past the 30 s idle timeout
    assert json.loads(later) == {"t": "orders", "p": {"0": [5000, False], "1": [None, False]}}


def test_a_shuffled_watermark_waits_for_every_upstream_partition_then_takes_the_live_ones_minimum():
    wm = ShuffledWatermark(delay_ms=1_000, idle_ms=30_000, upstream=3)
    tp = ("t-repartition", 0)
    wm.assign([tp], 0.0, restored={tp: 20_000})  # a restart: the committed value is where it starts
    assert wm.current(0.0) == 19_000
    wm.take_mark(tp, b'{"p":{"0":[50000,true],"1":[60000,true]}}', 1.0)
    assert wm.current(1.0) == 19_000  # upstream partition 2 not heard of
    wm.take_mark(tp, b'{"p":{"2":[40000,true]}}', 1.0)
    assert wm.current(1.0) == 39_000
    wm.take_mark(tp, b'{"p":{"2":[45000,false]}}', 2.0)  # partition 2 went idle upstream
    assert wm.current(2.0) == 49_000
    wm.take_mark(tp, b'{"p":{"2":[70000,true]}}', 3.0)  # back, and ahead: the minimum never goes back
    assert wm.current(3.0) == 49_000
    assert wm.current(100.0) == 49_000  # silent past the idle timeout: where the marks put it, no jump ahead


@pytest.mark.parametrize("by", [["country"], ["country", "amount"], []])
def test_run_plan_through_the_hop_equals_a_polars_group_by(tmp_path, by):
    pipe, orders = _pipe(tmp_path)
    orders.window(lg.Tumbling("1m"), by=by or None, name="w").agg(n=pl.len(), total=pl.col("amount").sum()).to_table("out")
    assert len(pipe.plan().repartitions) == 1
    events = _events(6_000, seed=7)
    batches = [{"orders": chunk} for chunk in events.iter_slices(650)]
    got = run_plan(pipe.plan(), batches)["out"].select(*by, "window_start", "n", "total").sort(*by, "window_start")
    expected = _oracle(events, by)
    assert got.height == expected.height and got.equals(expected)


def test_a_window_after_a_window_hops_twice_and_stays_exact(tmp_path):
    pipe, orders = _pipe(tmp_path)
    per_country = orders.window(lg.Tumbling("1m"), by="country", name="per_country").agg(n=pl.len())
    per_country.window(lg.Tumbling("5m"), name="all").agg(windows=pl.len(), n=pl.col("n").sum()).to_table("all")
    plan = pipe.plan()
    assert max(plan.stages().values()) == 3
    events = _events(20_000, seed=3)
    out = run_plan(plan, [{"orders": c} for c in events.iter_slices(1_500)])["all"].sort("window_start")
    assert out["n"].sum() == 20_000
    per_window_end = _oracle(events, ["country"]).group_by((pl.col("window_start").dt.epoch("ms") + MINUTE) // (5 * MINUTE))
    assert out["windows"].to_list() == per_window_end.len().sort("window_start")["len"].to_list()  # the 5 min windows go by window_end
