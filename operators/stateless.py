"""Stateless operators: frozen specs that resolve a schema and apply to a whole batch.

Each operator is a pure function of a Polars frame.  ``resolve`` runs the operator on
an empty frame of the input schema, so an unknown column or a wrong type fails when
the pipeline is defined, before any record is read, with the operator's name.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.stateless import Filter, WithColumns
>>> schema = pl.Schema({"url": pl.String, "n": pl.Int64})
>>> op = WithColumns(name="with_columns_1", exprs=(), named={"twice": pl.col("n") * 2})
>>> op.resolve(schema)
Schema([('url', String), ('n', Int64), ('twice', Int64)])
>>> Filter(name="filter_1", predicate=pl.col("nope") > 1).resolve(schema)
Traceback (most recent call last):
...
lockgate.errors.PipelineDefinitionError: filter 'filter_1': unknown column 'nope'; the input has columns ['url', 'n']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from lockgate.errors import PipelineDefinitionError

__all__ = ["ExprsOperator", "Filter", "MapBatches", "Operator", "Select", "WithColumns", "explain_polars_error"]

_COLUMN_NOT_FOUND = re.compile(r'unable to find column "([^"]+)"|column "?([^"\s]+)"? not found', re.IGNORECASE)


def explain_polars_error(kind: str, name: str, exc: Exception, schema: pl.Schema) -> PipelineDefinitionError:
    """Turn a Polars schema error into one that names the operator, the column and the fix."""
    text = str(exc).split("\n")[0]
    missing = _COLUMN_NOT_FOUND.search(str(exc))
    if isinstance(exc, pl.exceptions.ColumnNotFoundError) and missing:
        column = missing.group(1) or missing.group(2)
        return PipelineDefinitionError(
            f"{kind} {name!r}: unknown column {column!r}; the input has columns {list(schema.names())}"
        )
    return PipelineDefinitionError(f"{kind} {name!r}: {text} (input columns: {dict(schema)})")


@dataclass(frozen=True)
class Operator:
    """A stateless operator over one batch."""

    name: str

    kind = "operator"

    def apply(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """The operator over a lazy batch."""
        raise NotImplementedError

    def resolve(self, schema: pl.Schema) -> pl.Schema:
        """The output schema for ``schema``; raises PipelineDefinitionError when it has none."""
        try:
            return self.apply(pl.LazyFrame(schema=schema)).collect_schema()
        except pl.exceptions.PolarsError as exc:
            raise explain_polars_error(self.kind, self.name, exc, schema) from exc


@dataclass(frozen=True)
class Filter(Operator):
    """Keep the rows where ``predicate`` is true."""

    predicate: pl.Expr = field(default_factory=lambda: pl.lit(True))
    kind = "filter"

    def apply(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.filter(self.predicate)

    def resolve(self, schema: pl.Schema) -> pl.Schema:
        out = super().resolve(schema)
        try:
            dtype = pl.LazyFrame(schema=schema).select(self.predicate.alias("__p")).collect_schema()["__p"]
        except pl.exceptions.PolarsError as exc:  # pragma: no cover - super().resolve raised first
            raise explain_polars_error(self.kind, self.name, exc, schema) from exc
        if dtype != pl.Boolean:
            raise PipelineDefinitionError(
                f"filter {self.name!r}: the predicate {self.predicate} is {dtype}, not Boolean; "
                f"compare it, e.g. pl.col(...) > 0"
            )
        return out


@dataclass(frozen=True)
class ExprsOperator(Operator):
    """An operator given Polars expressions, positional and named (``with_columns``, ``select``).

    Hashed by name: a dict of expressions is not hashable.
    """

    exprs: tuple[Any, ...] = ()
    named: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True)
class WithColumns(ExprsOperator):
    """Add or replace columns."""

    kind = "with_columns"

    def apply(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.with_columns(*self.exprs, **self.named)

    __hash__ = ExprsOperator.__hash__  # a frozen dataclass would make its own from the fields


@dataclass(frozen=True)
class Select(ExprsOperator):
    """Keep or compute exactly these columns."""

    kind = "select"

    def apply(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.select(*self.exprs, **self.named)

    __hash__ = ExprsOperator.__hash__


@dataclass(frozen=True)
class MapBatches(Operator):
    """Any function from a batch's ``pl.DataFrame`` to a ``pl.DataFrame``.

    Its output schema is learnt by calling it on an empty frame of the input schema,
    unless ``schema`` is given.
    """

    fn: Callable[[pl.DataFrame], pl.DataFrame] = field(default=lambda df: df)
    schema: Mapping[str, Any] | None = None
    kind = "map_batches"

    def apply(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        fn = self.fn
        out_schema = pl.Schema(self.schema) if self.schema is not None else None
        return frame.map_batches(lambda df: _check_frame(self.name, fn(df)), schema=out_schema, streamable=False)

    def resolve(self, schema: pl.Schema) -> pl.Schema:
        if self.schema is not None:
            return pl.Schema(self.schema)
        try:
            out = _check_frame(self.name, self.fn(pl.DataFrame(schema=schema)))
        except PipelineDefinitionError:
            raise
        except Exception as exc:
            raise PipelineDefinitionError(
                f"map_batches {self.name!r}: the function failed on an empty batch of the input schema "
                f"({type(exc).__name__}: {exc}); make it handle an empty frame, or pass schema={{column: type}}"
            ) from exc
        return out.schema

    def __hash__(self) -> int:
        return hash(self.name)


def _check_frame(name: str, out: object) -> pl.DataFrame:
    if not isinstance(out, pl.DataFrame):
        raise PipelineDefinitionError(
            f"map_batches {name!r}: the function must return a pl.DataFrame, it returned {type(out).__name__}"
        )
    return out
