"""Stream-table joins over whole batches, with no broker."""

from __future__ import annotations

import polars as pl
import pytest

from lockgate.errors import PipelineDefinitionError
from lockgate.operators.joins import TableJoin

STREAM = pl.DataFrame({"card": ["b", "a", "b", "c"], "amount": [1, 2, 3, 4]})
TABLE = pl.DataFrame({"card": ["a", "b"], "limit": [10, 20]})


def test_a_left_join_keeps_every_row_of_the_batch_in_order_with_nulls_where_the_table_has_no_row():
    out = TableJoin("j", on="card", how="left").apply(STREAM.lazy(), TABLE.lazy()).collect()
    assert out.rows() == [("b", 1, 20), ("a", 2, 10), ("b", 3, 20), ("c", 4, None)]


def test_an_inner_join_drops_the_rows_the_table_has_no_row_for():
    out = TableJoin("j", on=("card",), how="inner").apply(STREAM.lazy(), TABLE.lazy()).collect()
    assert out["amount"].to_list() == [1, 2, 3]


@pytest.mark.parametrize(
    ("join", "table", "message"),
    [
        (TableJoin("j", on="card", how="outer"), TABLE, r"how='outer'; use how='left' or how='inner'"),
        (TableJoin("j", on="user"), TABLE, r"the stream has no column 'user'"),
        (TableJoin("j", on="amount"), TABLE, r"the table has no column 'amount'"),
        (TableJoin("j", on="card"), TABLE.cast({"card": pl.Categorical}), r"column 'card' is String in the stream but Categorical"),
    ],
)
def test_a_join_that_cannot_run_names_the_join_the_column_and_the_fix(join, table, message):
    with pytest.raises(PipelineDefinitionError, match=message):
        join.resolve(STREAM.schema, table.schema)
