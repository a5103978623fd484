"""The retention rule: history goes once a table holds more than max(snapshot_rows, 4 x live) rows."""

from __future__ import annotations

import polars as pl
import pytest
from lockgate.storage.retention import HISTORY_FACTOR, history_due
from lockgate.storage.sink_tables import SinkTable


@pytest.mark.parametrize(
    ("history", "live", "floor", "due"),
    [
        (4_000, 1_000, 100, False),  # exactly 4 x live: not more
        (4_001, 1_000, 100, True),
        (1_000, 10, 1_000, False),  # the floor holds a small table back
        (1_001, 10, 1_000, True),
        (0, 0, 0, False),  # an empty table is never due
        (1, 0, 0, True),  # nothing live: any history is due once past the floor
    ],
)
def test_history_is_due_past_the_larger_of_the_floor_and_four_rows_per_live_one(history, live, floor, due):
    assert HISTORY_FACTOR == 4
    assert history_due(history, live, floor) is due


def test_an_update_mode_table_is_due_a_prune_by_the_rule_and_only_one_at_a_time(state_dir):
    table = SinkTable(state_dir, "live", upsert_keys=["k"])
    table.append(pl.DataFrame({"k": list("abcdefgh"), "v": range(8)}), batch_id=1, epoch=1)
    table.live = 2  # as if its last prune had left two rows
    assert not table.prune_due(floor=1), "8 rows: not more than 4 x 2"
    table.append(pl.DataFrame({"k": ["a"], "v": [9]}), batch_id=2, epoch=2)
    assert table.prune_due(floor=1)
    assert not table.prune_due(floor=9), "the floor holds it back"
    table.prune_pending = True
    assert not table.prune_due(floor=1), "one prune at a time"
    assert not SinkTable(state_dir, "plain").prune_due(floor=0), "an append-only table is never pruned"
