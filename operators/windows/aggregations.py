"""Aggregation plans: which aggregations decompose into partials, and how partials merge and finish.

Decomposable aggregations (len/count, sum, min, max, mean, var, std, first, last)
keep partial aggregates per (key, window) and merge them batch by batch; any other
expression (``kind == "rows"``) makes the window keep its rows until it closes.
Either way the result equals a Polars ``group_by`` over the same records.  The
functions below apply an operator's plans to frames; every window kind uses them.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.windows.aggregations import classify
>>> mean = classify("avg", pl.col("x").mean())
>>> mean.kind, list(mean.partials()), list(mean.merges())
('mean', ['__avg_s', '__avg_n'], ['__avg_s', '__avg_n'])
>>> two_batches = pl.DataFrame({"__avg_s": [3.0, 4.0], "__avg_n": [2, 1]})   # partials of x = 1, 2 and x = 4
>>> two_batches.select(**mean.merges()).select(mean.final()).item()
2.3333333333333335
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl
from lockgate.operators.windows.index import Merge

if TYPE_CHECKING:
    from lockgate.operators.windows.specs import WindowSpec

__all__ = [
    "Agg", "aggregate_rows", "batch_partials", "classify", "close_partials", "elementwise_merges", "finalize_partials", "merge_partials",
]

_DECOMPOSABLE = ("len", "count", "sum", "min", "max", "mean", "var", "std", "first", "last")


@dataclass(frozen=True, eq=False)
class Agg:
    """One named aggregation: ``kind`` is a decomposable kind or ``"rows"``."""

    name: str
    expr: pl.Expr
    kind: str
    column: str | None = None

    def partials(self) -> dict[str, pl.Expr]:
        """Partial aggregates of raw rows."""
        c = pl.col(self.column) if self.column else None
        p = f"__{self.name}"
        if self.kind == "len":
            return {f"{p}_n": pl.len().cast(pl.Int64)}
        assert c is not None
        if self.kind == "count":
            return {f"{p}_n": c.count().cast(pl.Int64)}
        if self.kind == "sum":
            return {f"{p}_s": c.sum()}
        if self.kind in ("min", "max"):
            return {f"{p}_v": getattr(c, self.kind)()}
        if self.kind in ("first", "last"):  # with the arrival order of that row, to merge in any order
            pick = "min" if self.kind == "first" else "max"
            return {f"{p}_v": c.sort_by("__seq").first() if self.kind == "first" else c.sort_by("__seq").last(),
                    f"{p}_o": getattr(pl.col("__seq"), pick)()}
        if self.kind == "mean":
            return {f"{p}_s": c.cast(pl.Float64).sum(), f"{p}_n": c.count().cast(pl.Int64)}
        if self.kind in ("var", "std"):
            x = c.cast(pl.Float64)
            return {f"{p}_n": c.count().cast(pl.Int64), f"{p}_m": x.mean(), f"{p}_q": ((x - x.mean()) ** 2).sum()}
        raise AssertionError(self.kind)

    def merges(self) -> dict[str, pl.Expr]:
        """How partial aggregates of one (key, window) combine."""
        p = f"__{self.name}"
        if self.kind in ("len", "count"):
            return {f"{p}_n": pl.col(f"{p}_n").sum()}
        if self.kind == "sum":
            return {f"{p}_s": pl.col(f"{p}_s").sum()}
        if self.kind in ("min", "max"):
            return {f"{p}_v": getattr(pl.col(f"{p}_v"), self.kind)()}
        if self.kind == "first":
            return {f"{p}_v": pl.col(f"{p}_v").sort_by(f"{p}_o").first(), f"{p}_o": pl.col(f"{p}_o").min()}
        if self.kind == "last":
            return {f"{p}_v": pl.col(f"{p}_v").sort_by(f"{p}_o").last(), f"{p}_o": pl.col(f"{p}_o").max()}
        if self.kind == "mean":
            return {f"{p}_s": pl.col(f"{p}_s").sum(), f"{p}_n": pl.col(f"{p}_n").sum()}
        n, m, q = pl.col(f"{p}_n"), pl.col(f"{p}_m"), pl.col(f"{p}_q")
        total = n.sum()
        mean = pl.when(total > 0).then(pl.when(n > 0).then(n * m).sum() / total)
        # Chan et al.: M2 = sum(M2_i + n_i * (mean_i - mean)^2), evaluated per group; empty partials count nothing
        return {f"{p}_n": total, f"{p}_m": mean, f"{p}_q": pl.when(n > 0).then(q + n * (m - mean) ** 2).sum()}

    def horizontal(self, schema: pl.Schema) -> dict[str, Merge] | None:
        """The element-wise form of :meth:`merges` (see :data:`~lockgate.operators.windows.index.Merge`), or None where there is none.

        Sums are element-wise only in 64 bits (Polars adds narrower integers and
        Float32 in their own width); var and std merge with Chan's formula, kept in Polars.
        """
        p = f"__{self.name}"
        wide = (pl.Int64, pl.UInt64, pl.Float64)
        if self.kind in ("len", "count"):
            return {f"{p}_n": ("add", None)}
        if self.kind == "sum":
            return {f"{p}_s": ("add", None)} if isinstance(schema[f"{p}_s"], wide) else None
        if self.kind in ("min", "max"):
            return {f"{p}_v": (self.kind, None)}
        if self.kind in ("first", "last"):
            return {f"{p}_v": (self.kind, f"{p}_o"), f"{p}_o": ("min" if self.kind == "first" else "max", None)}
        if self.kind == "mean":
            return {f"{p}_s": ("add", None), f"{p}_n": ("add", None)}
        return None

    def final(self) -> pl.Expr:
        """The aggregate from merged partials."""
        p = f"__{self.name}"
        if self.kind in ("len", "count"):
            out = pl.col(f"{p}_n")
        elif self.kind == "sum":
            out = pl.col(f"{p}_s")
        elif self.kind in ("min", "max", "first", "last"):
            out = pl.col(f"{p}_v")
        elif self.kind == "mean":
            out = pl.when(pl.col(f"{p}_n") > 0).then(pl.col(f"{p}_s") / pl.col(f"{p}_n"))
        else:
            var = pl.when(pl.col(f"{p}_n") > 1).then(pl.col(f"{p}_q") / (pl.col(f"{p}_n") - 1))
            out = var.sqrt() if self.kind == "std" else var
        return out.alias(self.name)


def classify(name: str, expr: pl.Expr) -> Agg:
    """Recognise a decomposable aggregation; anything else keeps rows.

    >>> classify("n", pl.len()).kind, classify("s", pl.col("x").sum()).kind, classify("u", pl.col("x").n_unique()).kind
    ('len', 'sum', 'rows')
    """
    bare = expr.meta.undo_aliases()
    if bare.meta.eq(pl.len()):
        return Agg(name, expr, "len")
    roots = bare.meta.root_names()
    if len(roots) == 1:
        col = pl.col(roots[0])
        for kind in _DECOMPOSABLE:
            if bare.meta.eq(getattr(col, kind)()):
                return Agg(name, expr, kind, roots[0])
    return Agg(name, expr, "rows")


def batch_partials(spec: WindowSpec, pairs: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Partial aggregates of raw rows already labelled with their windows, one row per ``keys``."""
    exprs = {k: v for a in spec.aggs for k, v in a.partials().items()}
    return pairs.group_by(keys, maintain_order=True).agg(**exprs)


def elementwise_merges(spec: WindowSpec, schema: pl.Schema) -> dict[str, Merge] | None:
    """Every partial column's element-wise merge, or None when one aggregation has none."""
    out: dict[str, Merge] = {}
    for agg in spec.aggs:
        how = agg.horizontal(schema)
        if how is None:
            return None
        out.update(how)
    return out


def merge_partials(spec: WindowSpec, frames: list[pl.DataFrame], keys: list[str]) -> pl.DataFrame:
    """The partials of ``frames`` merged into one row per ``keys`` (in order of first appearance)."""
    exprs = {k: v for a in spec.aggs for k, v in a.merges().items()}
    return pl.concat(frames, how="vertical_relaxed").group_by(keys, maintain_order=True).agg(**exprs)


def close_partials(
    spec: WindowSpec, partials: pl.DataFrame, watermark: int | None, emitted: list[pl.DataFrame]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split the windows that closed at ``watermark`` off ``partials``: returns (still open, closing).

    In final mode the closing windows' output rows are appended to ``emitted``.
    """
    is_closed = spec.closed_windows(watermark)
    closing = partials.filter(is_closed)
    if closing.height:
        partials = partials.filter(~is_closed)
        if spec.emit == "final":
            emitted.append(finalize_partials(spec, closing))
    return partials, closing


def finalize_partials(spec: WindowSpec, partials: pl.DataFrame) -> pl.DataFrame:
    """Output rows (keys, window_start, window_end, aggregates) from merged partials."""
    out = spec.project(partials, [a.final() for a in spec.aggs])
    return out


def aggregate_rows(spec: WindowSpec, pairs: pl.DataFrame) -> pl.DataFrame:
    """Output rows computed from kept rows already labelled with their windows."""
    keys = spec.pair_keys
    out = pairs.sort("__seq").group_by(keys, maintain_order=True).agg(**{a.name: a.expr for a in spec.aggs})
    return spec.project(out, [pl.col(a.name) for a in spec.aggs])
