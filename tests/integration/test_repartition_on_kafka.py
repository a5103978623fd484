"""A window behind a repartition topic, on the real broker: run(until="caught_up") reads what the hop wrote last."""

from __future__ import annotations

import threading
import time

import polars as pl

import lockgate as lg
from tests.conftest import same_rows
from tests.integration.test_windows_on_kafka import MINUTE, SCHEMA, make_events, oracle_minutes, produce_events


def run_until_state(pipe: lg.Pipeline, state: str, name: str, window: str) -> lg.RunSummary:
    """Run ``pipe`` until caught up, but stop it as soon as ``window``'s committed state holds open windows."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                if lg.read_state(state, name, window).collect().height:
                    pipe.stop()
                    return
            except lg.StorageError:  # no state yet
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return pipe.run(until="caught_up", timeout=300)
    finally:
        done.set()
        watcher.join()


def test_caught_up_waits_for_the_rows_the_last_epochs_wrote_to_the_repartition_topic(brokers, make_topic, state_dir, unique):
    # emit="update" into a table: every row must have reached the window when the run says it caught up, also the
    # rows of the very last epochs, which the consumer's last fetch did not know of yet (the table fell short without)
    events = make_events(6_000, seed=4)
    topic = make_topic(f"hop-{unique}", partitions=3)
    produce_events(brokers, topic, events, partitions=3, flush_at=None)
    pipe = lg.Pipeline(f"hop-{unique}", brokers=brokers, state=state_dir, batch=lg.BatchPolicy(max_records=500, max_wait="50ms"))
    clicks = pipe.source(topic, format=lg.JSON(schema=SCHEMA), event_time="ts", watermark="5s", key="user")
    clicks.window(lg.Tumbling("1m"), by="url", emit="update", name="per_page").agg(
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


def test_behind_an_input_backlog_the_window_after_the_hop_gets_its_rows_before_the_input_is_drained_and_a_restart_is_exact(
    brokers, make_topic, state_dir, unique
):
    # one consumer reads the input and the repartition topic: without pausing the input while the hop is behind, the
    # hop's records waited behind the input's prefetched backlog, and the window's first state came after the last input
    events = make_events(100_000, seed=8)
    topic = make_topic(f"backlog-hop-{unique}", partitions=4)
    produce_events(brokers, topic, events, partitions=4)
    name = f"backlog-hop-{unique}"

    def build() -> lg.Pipeline:
        pipe = lg.Pipeline(name, brokers=brokers, state=state_dir, batch=lg.BatchPolicy(max_records=2_000, max_wait="50ms"))
        src = pipe.source(topic, format=lg.JSON(schema=SCHEMA), event_time="ts", watermark="5s")
        src.window(lg.Tumbling("1m"), by="user", name="per_minute").agg(
            n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max()
        ).to_table("per_minute")
        return pipe

    first = run_until_state(build(), state_dir, name, "per_minute")
    assert first.stopped_because == "stop requested"
    assert first.records < 60_000, f"the window's first state came after {first.records:,} of 100,004 input records"
    rest = build().run(until="caught_up", timeout=300)
    assert first.records + rest.records == 100_004
    assert same_rows(lg.read_table(state_dir, "per_minute").collect(), oracle_minutes(events))
