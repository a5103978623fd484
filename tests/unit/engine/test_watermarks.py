"""Per-partition watermarks with an idle timeout, with no broker."""

from __future__ import annotations

import polars as pl

from lockgate.engine.watermarks import SourceWatermark


def _times(rows: list[tuple[int, int | None]]) -> pl.DataFrame:
    return pl.DataFrame({"_topic": ["t"] * len(rows), "_partition": [p for p, _ in rows], "__lg_t": [v for _, v in rows]},
                        schema={"_topic": pl.String, "_partition": pl.Int32, "__lg_t": pl.Int64})


def test_the_watermark_is_the_slowest_live_partition_minus_the_delay_and_never_goes_back():
    wm = SourceWatermark(delay_ms=1_000, idle_ms=10_000)
    wm.assign([("t", 0), ("t", 1)], now=0.0)
    assert wm.current(0.0) is None, "a live partition without an event time holds the watermark back"
    assert wm.observe(_times([(0, 5_000), (0, 9_000), (1, 4_000), (1, None)]), now=1.0) == {("t", 0): 9_000, ("t", 1): 4_000}
    assert wm.current(1.0) == 3_000
    wm.observe(_times([(1, 2_000)]), now=2.0)  # out of order on partition 1: its maximum stays
    assert wm.current(2.0) == 3_000
    wm.revoke([("t", 1)])
    assert wm.current(2.0) == 8_000
    wm.assign([("t", 1)], now=3.0, restored={("t", 1): 1_000})
    assert wm.current(3.0) == 8_000, "a partition that comes back with an older time does not move the watermark back"


def test_an_idle_partition_stops_holding_the_watermark_unless_it_has_records_to_read():
    wm = SourceWatermark(delay_ms=0, idle_ms=5_000)
    wm.assign([("t", 0), ("t", 1)], now=0.0)
    wm.observe(_times([(0, 50_000), (1, 10_000)]), now=0.0)
    wm.observe(_times([(0, 60_000)]), now=6.0)
    wm.backlog = {("t", 1)}
    assert wm.current(6.0) == 10_000, "partition 1 waits in the fetch queue: not idle"
    wm.backlog = set()
    assert wm.current(6.0) == 60_000, "partition 1 silent for 6 s > idle_timeout 5 s"
    assert wm.current(20.0) == 60_000, "every partition idle: the maximum"


def test_restored_event_times_start_the_watermark_after_a_restart():
    wm = SourceWatermark(delay_ms=500, idle_ms=5_000)
    wm.assign([("t", 0)], now=0.0, restored={("t", 0): 42_000})
    assert wm.current(0.0) == 41_500
