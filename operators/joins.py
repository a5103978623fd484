"""Stream-table joins: each batch joined with the current rows of a changelog table.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.joins import TableJoin
>>> join = TableJoin("join_1", on="card", how="left")
>>> stream = pl.DataFrame({"card": ["a", "b"], "amount": [5, 7]})
>>> limits = pl.DataFrame({"card": ["a"], "limit": [6]})
>>> join.apply(stream.lazy(), limits.lazy()).collect().to_dicts()
[{'card': 'a', 'amount': 5, 'limit': 6}, {'card': 'b', 'amount': 7, 'limit': None}]
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from lockgate.errors import PipelineDefinitionError

__all__ = ["TableJoin"]


@dataclass(frozen=True)
class TableJoin:
    """Join each batch (left) with a table's current rows (right) on ``on``."""

    name: str
    on: str | tuple[str, ...]
    how: str = "left"

    def apply(self, batch: pl.LazyFrame, table: pl.LazyFrame) -> pl.LazyFrame:
        """The joined batch (row order of the batch kept)."""
        on = [self.on] if isinstance(self.on, str) else list(self.on)
        return batch.join(table, on=on, how=self.how, maintain_order="left")  # type: ignore[arg-type]

    def resolve(self, stream: pl.Schema, table: pl.Schema) -> pl.Schema:
        """The output schema; raises PipelineDefinitionError naming the join and the column."""
        if self.how not in ("left", "inner"):
            raise PipelineDefinitionError(f"join {self.name!r}: how={self.how!r}; use how='left' or how='inner'")
        on = [self.on] if isinstance(self.on, str) else list(self.on)
        for column in on:
            if column not in stream:
                raise PipelineDefinitionError(f"join {self.name!r}: the stream has no column {column!r}; it has {list(stream.names())}")
            if column not in table:
                raise PipelineDefinitionError(f"join {self.name!r}: the table has no column {column!r}; it has {list(table.names())}")
            if stream[column] != table[column]:
                raise PipelineDefinitionError(
                    f"join {self.name!r}: column {column!r} is {stream[column]} in the stream but {table[column]} in the table; "
                    "cast one side first"
                )
        try:
            return self.apply(pl.LazyFrame(schema=stream), pl.LazyFrame(schema=table)).collect_schema()
        except pl.exceptions.PolarsError as exc:
            raise PipelineDefinitionError(f"join {self.name!r}: {str(exc).splitlines()[0]}") from exc
