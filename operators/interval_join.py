"""Interval joins of two streams: the logic over Polars frames (no I/O).

A pair (left row, right row) matches when their keys are equal and
``left.t + lower <= right.t <= left.t + upper`` on each side's event time (Flink's
interval join: ``within=("5s", "30s")`` is lower -5 s, upper +30 s; ``within="10s"``
is -10 s .. +10 s).  Each batch joins its new rows with the new and the buffered
rows of the other side (each pair once), buffers its rows, and drops buffered rows
no future row can match once the watermark passed them:

- a left row once ``left.t + upper < watermark`` (a right row still to come has
  ``t >= watermark``);
- a right row once ``right.t - lower < watermark`` (a left row still to come has
  ``t >= watermark`` and needs ``left.t <= right.t - lower``).

With ``how="left"`` a left row that never matched is emitted with nulls when it is
dropped: once the watermark passed ``left.t + upper``, never earlier, never twice.
A row whose event time is below the watermark before its batch is late (as in
Flink: ``t < watermark``): it goes to ``late_left``/``late_right``, never into a pair.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.interval_join import IntervalJoinLogic, IntervalJoinSpec
>>> spec = IntervalJoinSpec.build("j", on="ad", lower_ms=-5_000, upper_ms=30_000, how="left",
...     left_schema=pl.Schema({"ad": pl.String, "t": pl.Int64}), right_schema=pl.Schema({"ad": pl.String, "t": pl.Int64}),
...     left_time="t", right_time="t")
>>> join = IntervalJoinLogic(spec)
>>> views = pl.DataFrame({"ad": ["a", "b"], "t": [1_000, 2_000]})
>>> clicks = pl.DataFrame({"ad": ["a"], "t": [20_000]})
>>> join.on_batch(views, clicks, watermark_before=None, watermark_after=15_000).pairs.to_dicts()
[{'ad': 'a', 't': 1000, 't_right': 20000}]
>>> join.on_batch(views.clear(), clicks.clear(), watermark_before=15_000, watermark_after=40_000).pairs.to_dicts()
[{'ad': 'b', 't': 2000, 't_right': None}]
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from lockgate.errors import PipelineDefinitionError
from lockgate.operators.event_time import epoch_ms

__all__ = ["IntervalJoinLogic", "IntervalJoinOutput", "IntervalJoinSpec"]

#: the buffered rows' event time (Int64 epoch ms) and, on the left, whether the row has matched
_T = "__lg_t"
_MATCHED = "__lg_matched"


@dataclass(frozen=True)
class IntervalJoinSpec:
    """One interval join: key columns, bounds (ms, relative to the left row's time), kind, the sides' schemas and time columns."""

    name: str
    on: tuple[str, ...]
    lower_ms: int
    upper_ms: int
    how: str
    left_schema: pl.Schema
    right_schema: pl.Schema
    left_time: str
    right_time: str

    @staticmethod
    def build(
        name: str, *, on: str | tuple[str, ...] | list[str], lower_ms: int, upper_ms: int, how: str,
        left_schema: pl.Schema, right_schema: pl.Schema, left_time: str, right_time: str,
    ) -> IntervalJoinSpec:
        """A checked spec; raises :class:`PipelineDefinitionError` naming the join, the column and the fix."""
        keys = (on,) if isinstance(on, str) else tuple(on)
        if how not in ("inner", "left"):
            raise PipelineDefinitionError(f"join {name!r}: how={how!r}; an interval join is how='inner' or how='left'")
        if lower_ms > upper_ms:
            raise PipelineDefinitionError(
                f"join {name!r}: within=({-lower_ms} ms before, {upper_ms} ms after) is empty; give within=(before, after) "
                "with -before <= after"
            )
        if not keys:
            raise PipelineDefinitionError(f"join {name!r}: on= names no column; join on the key the two streams share")
        for column in keys:
            for side, schema in (("left", left_schema), ("right", right_schema)):
                if column not in schema:
                    raise PipelineDefinitionError(f"join {name!r}: the {side} stream has no column {column!r}; it has {list(schema.names())}")
            if left_schema[column] != right_schema[column]:
                raise PipelineDefinitionError(
                    f"join {name!r}: column {column!r} is {left_schema[column]} on the left but {right_schema[column]} on the right; cast one side first"
                )
        for side, schema, column in (("left", left_schema, left_time), ("right", right_schema, right_time)):
            if column not in schema:
                raise PipelineDefinitionError(f"join {name!r}: the {side} stream has no event-time column {column!r}")
        return IntervalJoinSpec(name, keys, lower_ms, upper_ms, how, left_schema, right_schema, left_time, right_time)

    def output_schema(self) -> pl.Schema:
        """The left columns, then the right ones but the keys (a clashing name gets ``_right``, as Polars names it)."""
        right = {c if c not in self.left_schema else f"{c}_right": t for c, t in self.right_schema.items() if c not in self.on}
        return pl.Schema({**self.left_schema, **right})


@dataclass(frozen=True)
class IntervalJoinOutput:
    """What one batch emits: the pairs (and, for ``how="left"``, unmatched left rows with nulls), and the late rows of each side."""

    pairs: pl.DataFrame
    late_left: pl.DataFrame
    late_right: pl.DataFrame


class IntervalJoinLogic:
    """A running interval join: buffers both sides, emits pairs once, drops what the watermark passed.

    The state is two frames (``left``, ``right``), each side's rows with their event
    time in ``__lg_t``; the left one also says whether each row matched (``__lg_matched``).
    """

    def __init__(self, spec: IntervalJoinSpec, left: pl.DataFrame | None = None, right: pl.DataFrame | None = None) -> None:
        self.spec = spec
        self.left = left if left is not None else pl.DataFrame(schema={**spec.left_schema, _T: pl.Int64, _MATCHED: pl.Boolean})
        self.right = right if right is not None else pl.DataFrame(schema={**spec.right_schema, _T: pl.Int64})

    def on_batch(
        self, left: pl.DataFrame, right: pl.DataFrame, *, watermark_before: int | None, watermark_after: int | None,
    ) -> IntervalJoinOutput:
        """Fold one batch of each side (either may be empty); ``watermark_*`` in epoch ms (None: none yet)."""
        spec = self.spec
        new_left = left.with_columns(epoch_ms(spec.left_time, left.schema[spec.left_time]).alias(_T))
        new_right = right.with_columns(epoch_ms(spec.right_time, right.schema[spec.right_time]).alias(_T))
        late_left = late_right = None
        if watermark_before is not None:
            late_left, new_left = _split_late(new_left, watermark_before)
            late_right, new_right = _split_late(new_right, watermark_before)
        new_left = new_left.with_columns(pl.lit(False).alias(_MATCHED))
        # each pair once: new left x (buffered right + new right), buffered left x new right
        all_right = pl.concat([self.right, new_right], how="vertical_relaxed")
        keyed_left = new_left.with_row_index("__lg_new")
        old_left = self.left.with_row_index("__lg_old")
        first = _pairs_with(spec, keyed_left.lazy(), all_right.lazy(), "__lg_new")
        second = _pairs_with(spec, old_left.lazy(), new_right.lazy(), "__lg_old")
        first, second = pl.collect_all([first, second])
        matched_new = first.get_column("__lg_new").unique()
        matched_old = second.get_column("__lg_old").unique()
        new_left = keyed_left.with_columns(pl.col(_MATCHED) | pl.col("__lg_new").is_in(matched_new.implode())).drop("__lg_new")
        old_left = old_left.with_columns(pl.col(_MATCHED) | pl.col("__lg_old").is_in(matched_old.implode())).drop("__lg_old")
        emitted = [first.drop("__lg_new"), second.drop("__lg_old")]
        buffered_left = pl.concat([old_left, new_left], how="vertical_relaxed")
        buffered_right = all_right
        if watermark_after is not None:
            done = pl.col(_T) + spec.upper_ms < watermark_after
            gone = buffered_left.filter(done)
            buffered_left = buffered_left.filter(~done)
            buffered_right = buffered_right.filter(~(pl.col(_T) - spec.lower_ms < watermark_after))
            if spec.how == "left" and gone.height:
                unmatched = gone.filter(~pl.col(_MATCHED)).drop(_T, _MATCHED)
                emitted.append(unmatched)
        self.left, self.right = buffered_left, buffered_right
        schema = spec.output_schema()
        pairs = pl.concat([e.cast({c: t for c, t in schema.items() if c in e.schema}) for e in emitted], how="diagonal_relaxed")  # type: ignore[arg-type]
        empty_left, empty_right = left.clear(), right.clear()
        return IntervalJoinOutput(
            pairs.select([pl.col(c) if c in pairs.schema else pl.lit(None, t).alias(c) for c, t in schema.items()]),
            empty_left if late_left is None else late_left.drop(_T),
            empty_right if late_right is None else late_right.drop(_T),
        )

    @property
    def buffered(self) -> tuple[int, int]:
        """How many rows each side holds."""
        return self.left.height, self.right.height


def _pairs_with(spec: IntervalJoinSpec, left: pl.LazyFrame, right: pl.LazyFrame, index: str) -> pl.LazyFrame:
    """Every matching pair of ``left`` and ``right`` rows (both carry ``__lg_t``) in the output's columns, and the left rows' ``index`` (which matched)."""
    joined = left.join(right, on=list(spec.on), how="inner", suffix="_right")
    t_right = f"{_T}_right"
    joined = joined.filter((pl.col(t_right) >= pl.col(_T) + spec.lower_ms) & (pl.col(t_right) <= pl.col(_T) + spec.upper_ms))
    return joined.select([*spec.output_schema().names(), index])


def _split_late(frame: pl.DataFrame, watermark: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(late rows, on-time rows): late is below the watermark before the batch."""
    late = pl.col(_T) < watermark
    return frame.filter(late), frame.filter(~late)
