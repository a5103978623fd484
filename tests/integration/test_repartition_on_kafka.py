"""A window behind a repartition topic, on the real broker: run(until="caught_up") reads what the hop wrote last."""

from __future__ import annotations

import polars as pl

import lockgate as lg
from tests.conftest import same_rows
from tests.integration.test_windows_on_kafka import MINUTE, SCHEMA, make_events, produce_events


def test_caught_up_waits_for_the_rows_the_last_epochs_wrote_to_the_repartition_topic(brokers, make_topic, state_dir, unique):
    # emit="update" into a table: every row must have reached the window when the run says it caught up, also the
    # rows of the very last epochs, which the consumer's last fetch did not know of yet (the table fell short without)
    events = make_events(6_000, seed=4)
    topic = make_topic(f"hop-{unique}", partitions=3)
    produce_events(brokers, topic, events, partitions=3, flush_at=None)
    pipe = lg.Pipeline(f"hop-{unique}", brokers=brokers, state=state_dir, batch=lg.BatchPolicy(max_records=500, max_wait="50ms"))
    clicks = pipe.source(topic, format=lg.JSON(schema=SCHEMA), event_time="ts", watermark="5s", key="user")
    clicks.window(lg.Tumbling("1m"), by="url", emit="update", name="per_page", repartition=True).agg(
        n=pl.len(), total=pl.col("amount").sum()
    ).to_table("per_page")
    summary = pipe.run(until="caught_up", timeout=300)
    assert summary.records == 6_000
    oracle = (
        pl.DataFrame(events, schema={**SCHEMA, "ts": pl.Int64})
        .group_by("url", window_start=pl.col("ts") // MINUTE * MINUTE)
        .agg(n=pl.len(), total=pl.col("amount").sum())
    )
    table = lg.read_table(state_dir, "per_page").collect()
    got = table.select("url", pl.col("window_start").dt.epoch("ms"), "n", "total")
    assert same_rows(got, oracle.with_columns(pl.col("n").cast(got.schema["n"])))
    assert pipe.metrics()["late"] == {}
