"""Sink tables append tagged rows; readers see committed batches only, consistent as of one log version."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lance
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lockgate.errors import StorageError
from lockgate.storage.commit_log import CommitLog, PartitionRange
from lockgate.storage.sink_tables import SinkTable, read_table, table_horizon

import lockgate as lg
from tests.unit.storage.conftest import write_batch as _write


def test_prepared_but_unmarked_batches_are_invisible(state_dir):
    _write(state_dir, 1, 1, [1, 2], first=0, commit=True)
    _write(state_dir, 2, 2, [3], first=2, commit=False)
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == [1, 2]


def test_as_of_an_epoch_or_a_time_reads_an_earlier_committed_state(state_dir):
    _write(state_dir, 10, 1, [1], first=0, commit=True)
    between = datetime.now(UTC)
    _write(state_dir, 11, 2, [2], first=1, commit=True)
    assert read_table(state_dir, "t", as_of=1).collect()["x"].to_list() == [1]
    assert read_table(state_dir, "t", as_of=between).collect()["x"].to_list() == [1]
    assert sorted(read_table(state_dir, "t").collect()["x"].to_list()) == [1, 2]
    assert read_table(state_dir, "t", as_of=between - timedelta(hours=1)).collect().height == 0


def test_reading_a_missing_table_names_the_tables_that_exist(state_dir):
    _write(state_dir, 1, 1, [1], first=0, commit=True)
    with pytest.raises(lg.StorageError, match=r"no table 'nope'.*\['t'\]"):
        read_table(state_dir, "nope")


def test_internal_columns_are_not_shown_and_filters_push_down(state_dir):
    _write(state_dir, 1, 1, [1, 2, 3], first=0, commit=True)
    lazy = read_table(state_dir, "t")
    assert lazy.collect_schema().names() == ["x"]
    assert lazy.filter(pl.col("x") > 1).collect()["x"].to_list() == [2, 3]


def test_a_failing_write_names_the_table_and_the_path(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")  # fails even for root, unlike chmod
    with pytest.raises(lg.StorageError, match=r"to_table 't'.*not-a-dir/t.lance"):
        SinkTable(str(blocker), "t").append(pl.DataFrame({"x": [1]}), batch_id=1, epoch=1)


def _upsert_history(state: str, data: st.DataObject) -> tuple[SinkTable, list[int], dict[int, int]]:
    """Random epochs of an update-mode table (keys k, w; a value; some retractions), some never committed."""
    table = SinkTable(state, "live", upsert_keys=["k", "w"])
    log = CommitLog(state)
    epochs = data.draw(st.integers(2, 7), label="epochs")
    committed, sizes = [], {}
    for epoch in range(1, epochs + 1):
        n = data.draw(st.integers(1, 12), label="rows")
        rows = pl.DataFrame(
            {
                "k": data.draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n), label="k"),
                "w": data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n), label="w"),
                "v": list(range(epoch * 100, epoch * 100 + n)),
                "retracted": data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="retracted"),
            }
        )
        version = table.append(rows, batch_id=epoch, epoch=epoch)
        sizes[epoch] = n
        log.prepare("p", epoch=epoch, batch_id=epoch, ranges=[PartitionRange("in", 0, epoch, epoch + 1)], tables={"live": version})
        if epoch == 1 or data.draw(st.booleans(), label="commit"):  # an unmarked batch: aborted, or a zombie's
            log.mark("p", epoch=epoch, batch_id=epoch)
            committed.append(epoch)
    return table, committed, sizes


def _sorted(frame: pl.DataFrame) -> list[tuple]:
    return sorted(frame.rows())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_pruning_an_update_mode_table_deletes_superseded_rows_and_every_read_from_its_horizon_on_stays_the_same(state_dir, data):
    state = tempfile.mkdtemp(prefix="state-", dir=Path(state_dir).parent)  # one per example
    table, committed, sizes = _upsert_history(state, data)
    horizon = data.draw(st.sampled_from(committed), label="horizon")
    log = CommitLog(state)
    epochs = range(horizon, max(committed) + 1)
    before = {e: _sorted(read_table(state, "live", as_of=e).collect()) for e in epochs}
    latest = _sorted(read_table(state, "live").collect())
    rows_before = lance.dataset(table.uri).count_rows()

    settled = log.settled("p", horizon)
    assert settled is not None
    ids, moment = settled
    log.horizon("p", table_horizon("live"), horizon, moment)
    deleted = table.prune(ids)

    raw = pl.from_arrow(lance.dataset(table.uri).to_table())
    assert raw.height == rows_before - deleted == table.rows == table.live
    assert {e: _sorted(read_table(state, "live", as_of=e).collect()) for e in epochs} == before
    assert _sorted(read_table(state, "live").collect()) == latest
    assert _sorted(read_table(state, "live", as_of=moment).collect()) == before[horizon]
    # what is left of the horizon's batches is one live row per key: nothing it supersedes, no retraction
    old = raw.filter(pl.col("_lg_batch").is_in(ids.implode()))
    assert not old["retracted"].any()
    assert old.select(pl.struct("k", "w").is_unique().all()).item()
    # every batch that never committed keeps all its rows
    unmarked = {e: n for e, n in sizes.items() if e not in committed}
    assert dict(raw.filter(~pl.col("_lg_batch").is_in(committed)).group_by("_lg_batch").len().iter_rows()) == unmarked
    if horizon > 1:
        with pytest.raises(StorageError, match=rf"table 'live': as_of={horizon - 1} is before epoch {horizon} .*keep_history"):
            read_table(state, "live", as_of=horizon - 1)
