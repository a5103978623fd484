"""Interval joins of two topics on the real broker: exact against a Polars join, state across restarts, late rows to the DLQ, windows after a join."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

import lockgate as lg
from tests.conftest import json_frame, ordered_producer, read_committed, same_rows

pytestmark = pytest.mark.kafka

VIEWS = {"ad": pl.String, "viewer": pl.Int64, "t": pl.Int64}
CLICKS = {"ad": pl.String, "clicker": pl.Int64, "t": pl.Int64}
BASE = 1_767_225_600_000  # 2026-01-01 in epoch ms
#: a pair matches when the click comes at most 1 s before to 3 s after the view
BEFORE_MS, AFTER_MS = 1_000, 3_000
#: the sources' watermark delay; the generated disorder stays within it, so no generated row is late
DELAY = "1s"
#: the window join's tumbling windows
WINDOW_MS = 2_000
#: the windows that count the inner join's pairs
COUNT_MS = 1_000


def make_side(count: int, column: str, seed: int, spacing_ms: int, start_ms: int = 0) -> list[dict]:
    """``count`` rows of 40 ads, ``spacing_ms`` apart from ``start_ms`` on (after BASE), out of order by up to 400 ms."""
    rng = random.Random(seed)
    return [
        {"ad": f"ad{rng.randrange(40)}", column: i, "t": BASE + start_ms + i * spacing_ms + rng.randrange(-400, 401)}
        for i in range(count)
    ]


def flush_rows(column: str, t_ms: int, partitions: int) -> list[tuple[int, dict]]:
    """One row per partition far after the data: the watermark passes every generated row (an unmatched view is emitted)."""
    return [(p, {"ad": f"__flush{p}", column: -1, "t": BASE + t_ms}) for p in range(partitions)]


def produce_rows(brokers: str, topic: str, rows: list[dict], partitions: int, flush: list[tuple[int, dict]] = ()) -> None:
    """Rows round-robin over the partitions (in order within each), then the flush rows on their partitions."""
    producer = ordered_producer(brokers)
    for i, row in enumerate(rows):
        producer.produce(topic, json.dumps(row).encode(), partition=i % partitions)
    for partition, row in flush:
        producer.produce(topic, json.dumps(row).encode(), partition=partition)
    assert producer.flush(60) == 0


def oracle(views: list[dict], clicks: list[dict], how: str) -> pl.DataFrame:
    """The Polars batch join of the same rows: every pair, and (left) every view without one; ``window``: pairs in one window."""
    v, c = pl.DataFrame(views, schema=VIEWS), pl.DataFrame(clicks, schema=CLICKS)
    if how == "window":
        start = (pl.col("t") // WINDOW_MS) * WINDOW_MS
        return v.with_columns(start.alias("w")).join(c.with_columns(start.alias("w")), on=["ad", "w"], suffix="_right").select(
            "ad", "viewer", "t", "clicker", "t_right"
        )
    pairs = v.join(c, on="ad", suffix="_right").filter(
        (pl.col("t_right") >= pl.col("t") - BEFORE_MS) & (pl.col("t_right") <= pl.col("t") + AFTER_MS)
    )
    if how == "left":
        pairs = pl.concat([pairs, v.join(pairs.select("viewer"), on="viewer", how="anti")], how="diagonal_relaxed")
    return pairs.select("ad", "viewer", "t", "clicker", "t_right")


def join_pipeline(
    name: str, brokers: str, state: str, views_topic: str, clicks_topic: str, *, batch: int = 2_000, compact_every: int = 100,
    repartition: bool = True,
) -> lg.Pipeline:
    """Views joined with clicks (interval joins inner and left, a tumbling window join) into topics and tables; late rows into a table."""
    pipe = lg.Pipeline(
        name, brokers=brokers, state=state, batch=lg.BatchPolicy(max_records=batch, max_wait="50ms"), compact_every=compact_every,
        kafka={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )
    views = pipe.source(views_topic, format=lg.JSON(schema=VIEWS), event_time="t", watermark=DELAY)
    clicks = pipe.source(clicks_topic, format=lg.JSON(schema=CLICKS), event_time="t", watermark=DELAY)
    for how in ("inner", "left", "window"):
        if how == "window":
            joined = views.join(clicks, on="ad", window=lg.Tumbling(f"{WINDOW_MS}ms"), name="views_window", repartition=repartition)
        else:
            joined = views.join(
                clicks, on="ad", within=(f"{BEFORE_MS}ms", f"{AFTER_MS}ms"), how=how, name=f"views_{how}", repartition=repartition
            )
        out = joined.select("ad", "viewer", "t", "clicker", "t_right")
        out.to_kafka(f"{name}-{how}", key="ad")
        out.to_table(how)
        if how == "inner" and repartition:  # windows after the join: keyed by its key (same epoch), and by another column (a second hop)
            joined.window(lg.Tumbling(f"{COUNT_MS}ms"), by="ad", name="pairs_per_ad").agg(n=pl.len()).to_table("per_ad")
            joined.with_columns(bucket=pl.col("viewer") % 3).window(lg.Tumbling(f"{COUNT_MS}ms"), by="bucket", name="pairs_per_bucket").agg(
                n=pl.len()
            ).to_table("per_bucket")
    views.dead_letters().select(
        "reason", "operator", "error", topic=pl.col("_topic"), partition=pl.col("_partition"), offset=pl.col("_offset")
    ).to_table("dead")
    return pipe


def from_topic(brokers: str, topic: str) -> pl.DataFrame:
    return json_frame(read_committed(brokers, topic), {"ad": pl.String, "viewer": pl.Int64, "t": pl.Int64, "clicker": pl.Int64, "t_right": pl.Int64})


def test_an_interval_join_of_two_topics_is_exact_across_a_restart_and_late_rows_go_to_the_dead_letters(
    brokers, make_topic, state_dir, unique
):
    views_topic, clicks_topic = make_topic(f"views-{unique}", partitions=2), make_topic(f"clicks-{unique}", partitions=2)
    views, clicks = make_side(6_000, "viewer", 1, 20), make_side(4_000, "clicker", 2, 30)
    first_v, first_c = [r for r in views if r["t"] < BASE + 60_000], [r for r in clicks if r["t"] < BASE + 60_000]
    produce_rows(brokers, views_topic, first_v, 2)
    produce_rows(brokers, clicks_topic, first_c, 2)
    name = f"ijoin-{unique}"
    join_pipeline(name, brokers, state_dir, views_topic, clicks_topic, batch=500).run(until="caught_up", timeout=300)
    buffered = lg.read_state(state_dir, name, "views_left.left").collect()
    assert buffered.height > 0, "views near the end wait in the state for clicks still to come"

    # the second run: the rest (clicks that pair with views the first run left in the state), rows far too late, the flush
    late_v = [{"ad": "ad1", "viewer": 90_000 + i, "t": BASE + 1_000 + i} for i in range(3)]
    late_c = [{"ad": "ad1", "clicker": 90_000 + i, "t": BASE + 2_000 + i} for i in range(2)]
    produce_rows(brokers, views_topic, late_v + [r for r in views if r not in first_v], 2, flush_rows("viewer", 10**6, 2))
    produce_rows(brokers, clicks_topic, late_c + [r for r in clicks if r not in first_c], 2, flush_rows("clicker", 10**6, 2))
    join_pipeline(name, brokers, state_dir, views_topic, clicks_topic, batch=500).run(until="caught_up", timeout=300)

    for how in ("inner", "left", "window"):
        expected = oracle(views, clicks, how)
        got = from_topic(brokers, f"{name}-{how}").filter(~pl.col("ad").str.starts_with("__flush"))
        table = lg.read_table(state_dir, how).collect().filter(~pl.col("ad").str.starts_with("__flush"))
        assert got.height == expected.height and same_rows(got, expected), f"{how}: {got.height} rows, oracle {expected.height}"
        assert same_rows(table, expected), how
    pairs = oracle(views, clicks, "inner").with_columns(window_start=pl.col("t") // COUNT_MS * COUNT_MS)
    for table, by in (("per_ad", "ad"), ("per_bucket", "bucket")):
        counted = lg.read_table(state_dir, table).collect().select(by, pl.col("window_start").cast(pl.Int64), "n")
        if by == "bucket":
            expected = pairs.group_by(pl.col("viewer") % 3, "window_start").agg(n=pl.len()).rename({"viewer": "bucket"})
        else:
            expected = pairs.group_by("ad", "window_start").agg(n=pl.len())
        counted = counted.filter(~pl.col(by).cast(pl.String).str.starts_with("__flush"))  # the flush pairs' windows stay open
        assert same_rows(counted, expected.cast(dict(counted.schema))), table  # type: ignore[arg-type]
    pairs_across_runs = oracle(views, clicks, "inner").filter((pl.col("t") < BASE + 60_000) & (pl.col("t_right") >= BASE + 60_000))
    assert pairs_across_runs.height > 0, "the test needs pairs of a view of the first run and a click of the second"

    dead = lg.read_table(state_dir, "dead").collect()
    by_operator = [("views_inner", 3), ("views_left", 3), ("views_window", 3)]
    assert sorted(dead.filter(pl.col("topic") == views_topic).group_by("operator").len().rows()) == by_operator
    assert sorted(dead.filter(pl.col("topic") == clicks_topic).group_by("operator").len().rows()) == [(o, 2) for o, _ in by_operator]
    assert set(dead["reason"]) == {"late"}
    interval = dead.filter(pl.col("operator") != "views_window")
    assert interval["error"].str.contains("below the join's watermark").all()
    assert dead.filter(pl.col("operator") == "views_window")["error"].str.contains("windows that had closed").all()
    # each names its input record: late view i went to partition i % 2, after the first run's rows there
    firsts = [len(first_v[p::2]) for p in range(2)]
    named = dead.filter((pl.col("topic") == views_topic) & (pl.col("operator") == "views_inner")).select("partition", "offset")
    assert sorted(named.rows()) == sorted((i % 2, firsts[i % 2] + i // 2) for i in range(3))
    # what the state keeps at the end: the flush rows only (the watermark passed every generated row)
    for side in ("left", "right"):
        assert set(lg.read_state(state_dir, name, f"views_left.{side}").collect()["ad"]) <= {"__flush0", "__flush1"}


def test_a_left_join_emits_a_view_without_a_click_only_once_the_watermark_has_passed_its_interval(brokers, make_topic, state_dir, unique):
    views_topic, clicks_topic = make_topic(f"views-{unique}", partitions=1), make_topic(f"clicks-{unique}", partitions=1)
    name = f"ijoin-left-{unique}"
    produce_rows(brokers, views_topic, [{"ad": "a", "viewer": 1, "t": BASE}], 1)
    # the clicks' watermark reaches BASE + 4 s - 1 s delay: the view's interval ends at BASE + 3 s, not passed yet
    produce_rows(brokers, clicks_topic, [{"ad": "b", "clicker": 1, "t": BASE + AFTER_MS + 1_000}], 1)
    produce_rows(brokers, views_topic, [{"ad": "z", "viewer": 2, "t": BASE + 10_000}], 1)
    join_pipeline(name, brokers, state_dir, views_topic, clicks_topic).run(until="caught_up", timeout=120)
    with pytest.raises(lg.StorageError, match="no table 'left'"):  # nothing written yet: watermark BASE + 3 s, the view could still match
        lg.read_table(state_dir, "left").collect()
    produce_rows(brokers, clicks_topic, [{"ad": "b", "clicker": 2, "t": BASE + AFTER_MS + 1_001}], 1)
    join_pipeline(name, brokers, state_dir, views_topic, clicks_topic).run(until="caught_up", timeout=120)
    rows = lg.read_table(state_dir, "left").collect()
    assert rows.select("viewer", "clicker").rows() == [(1, None)], rows
    join_pipeline(name, brokers, state_dir, views_topic, clicks_topic).run(until="caught_up", timeout=120)
    assert lg.read_table(state_dir, "left").collect().height == 1, "emitted once"
