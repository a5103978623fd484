"""Lance primitives: a missing table opens as None, appends create then append, failures name the path."""

from __future__ import annotations

import lance
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from lockgate.errors import StorageError
from lockgate.storage.lance_io import append_table, open_dataset, sql_list, table_uri


def test_a_table_lives_under_the_state_uri_with_or_without_a_trailing_slash():
    assert table_uri("s3://bucket/state/", "t") == table_uri("s3://bucket/state", "t") == "s3://bucket/state/t.lance"


def test_a_missing_table_opens_as_none(state_dir):
    assert open_dataset(table_uri(state_dir, "nope")) is None


def test_the_first_append_creates_the_table_and_each_append_returns_the_new_version(state_dir):
    uri = table_uri(state_dir, "t")
    first = append_table(uri, pa.table({"x": [1, 2]}))
    assert first == 2, "version 1 is the empty table the first write creates, its rows are an append"
    assert open_dataset(uri, version=1).count_rows() == 0
    assert append_table(uri, pa.table({"x": [3]})) == 3
    assert pl.from_arrow(open_dataset(uri).to_table())["x"].to_list() == [1, 2, 3]
    assert pl.from_arrow(open_dataset(uri, version=first).to_table())["x"].to_list() == [1, 2], "an earlier version reads as it was"


def test_a_table_another_process_created_is_appended_to_not_overwritten(state_dir):
    uri = table_uri(state_dir, "theirs")
    lance.write_dataset(pa.table({"x": [1]}), uri)  # not through append_table: this process has not seen it
    append_table(uri, pa.table({"x": [2]}))
    assert open_dataset(uri).count_rows() == 2


def test_a_failing_write_or_open_is_a_storage_error_that_names_the_path(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(StorageError, match=r"cannot write the LanceDB table at .*not-a-dir/t.lance"):
        append_table(table_uri(str(blocker), "t"), pa.table({"x": [1]}))


def test_sql_list_writes_plain_integers_whatever_their_type():
    assert sql_list([np.int64(3), 1, True]) == "3, 1, 1"
    assert sql_list(pl.Series([5, 6], dtype=pl.Int32)) == "5, 6"
    assert sql_list([]) == ""
