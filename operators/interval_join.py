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

__all__ = ["ROW_ID", "IntervalJoinLogic", "IntervalJoinOutput", "IntervalJoinSpec", "JoinRowsDelta"]

#: the buffered rows' event time (Int64 epoch ms) and, on the left, whether the row has matched
_T = "__lg_t"
_MATCHED = "__lg_matched"
#: each buffered row's id within its side (what a state delta's upserts and tombstones name)
ROW_ID = "__lg_row"


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
    #: right columns left out of the output (the engine's Kafka metadata columns: the left's stay)
    right_hidden: tuple[str, ...] = ()
    #: columns of either side left out of the output (the engine's internal ones)
    hidden: tuple[str, ...] = ()
    #: the column that says which shard (input partition) a buffered row belongs to, when the state is kept per partition
    shard: str | None = None

    @staticmethod
    def build(
        name: str, *, on: str | tuple[str, ...] | list[str], lower_ms: int, upper_ms: int, how: str,
        left_schema: pl.Schema, right_schema: pl.Schema, left_time: str, right_time: str, right_hidden: tuple[str, ...] = (),
        hidden: tuple[str, ...] = (), shard: str | None = None,
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
        right_only = tuple(c for c in right_hidden if c in right_schema and c not in keys)
        for side, schema in (("left", left_schema), ("right", right_schema)):
            if shard is not None and shard not in schema:
                raise PipelineDefinitionError(f"join {name!r}: the {side} stream has no shard column {shard!r}")
        return IntervalJoinSpec(
            name, keys, lower_ms, upper_ms, how, left_schema, right_schema, left_time, right_time, right_only, tuple(hidden), shard
        )

    def output_schema(self) -> pl.Schema:
        """The left columns, then the right ones but the keys (a clashing name gets ``_right``, as Polars names it)."""
        right = {
            c if c not in self.left_schema else f"{c}_right": t
            for c, t in self.right_schema.items() if c not in self.on and c not in self.right_hidden and c not in self.hidden
        }
        return pl.Schema({**{c: t for c, t in self.left_schema.items() if c not in self.hidden}, **right})

    def state_schema(self, side: str) -> pl.Schema:
        """The columns of one side's buffered rows: the side's, its event time, (left) whether it matched, its id."""
        if side == "left":
            return pl.Schema({**self.left_schema, _T: pl.Int64(), _MATCHED: pl.Boolean(), ROW_ID: pl.Int64()})
        return pl.Schema({**self.right_schema, _T: pl.Int64(), ROW_ID: pl.Int64()})


@dataclass(frozen=True)
class IntervalJoinOutput:
    """What one batch emits: the pairs (and, for ``how="left"``, unmatched left rows with nulls), and the late rows of each side."""

    pairs: pl.DataFrame
    late_left: pl.DataFrame
    late_right: pl.DataFrame


@dataclass(frozen=True)
class JoinRowsDelta:
    """What one side's buffered rows changed since the last take, for storage to write as it is.

    ``upserts``: the new value of every row that came or changed (in a snapshot: of
    every buffered row), in ``spec.state_schema(side)``; ``deletes``: the ids
    (``__lg_row``, with the shard column when the state is kept per partition: ids
    are unique within a shard) of rows that left.  Apply upserts, then deletes.
    """

    upserts: pl.DataFrame
    deletes: pl.DataFrame
    snapshot: bool = False

    @property
    def rows(self) -> int:
        """How many rows the delta writes."""
        return self.upserts.height + self.deletes.height


class IntervalJoinLogic:
    """A running interval join: buffers both sides, emits pairs once, drops what the watermark passed.

    The state is two frames (``left``, ``right``), each side's rows with their event
    time in ``__lg_t`` and an id in ``__lg_row``; the left one also says whether each
    row matched (``__lg_matched``).  As a window logic does, it owns its state, updates
    it in place and hands out what changed with :meth:`take_delta`; ``watermark`` is
    the last watermark a batch applied (where a reloaded state stands).
    """

    def __init__(
        self, spec: IntervalJoinSpec, left: pl.DataFrame | None = None, right: pl.DataFrame | None = None,
        watermark: int | None = None,
    ) -> None:
        self.spec = spec
        self.left = left if left is not None else pl.DataFrame(schema=spec.state_schema("left"))
        self.right = right if right is not None else pl.DataFrame(schema=spec.state_schema("right"))
        self.watermark = watermark
        self._next = {side: int(frame[ROW_ID].max() or 0) + 1 for side, frame in (("left", self.left), ("right", self.right))}  # type: ignore[operator]
        #: since the last take: ids that came or changed, and ids that left, per side
        self._changed: dict[str, list[pl.Series]] = {"left": [], "right": []}
        self._gone: dict[str, list[pl.DataFrame]] = {"left": [], "right": []}
        #: what names a buffered row in the state: its id, and its shard when the state is kept per partition
        self._ident = [ROW_ID] if spec.shard is None else [spec.shard, ROW_ID]

    def _ids(self, side: str, count: int) -> pl.Series:
        start = self._next[side]
        self._next[side] = start + count
        return pl.int_range(start, start + count, dtype=pl.Int64, eager=True).alias(ROW_ID)

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
        new_left = new_left.with_columns(pl.lit(False).alias(_MATCHED), self._ids("left", new_left.height))
        new_right = new_right.with_columns(self._ids("right", new_right.height))
        self._changed["left"].append(new_left[ROW_ID])
        self._changed["right"].append(new_right[ROW_ID])
        # each pair once: new left x (buffered right + new right), buffered left x new right
        all_right = pl.concat([self.right, new_right], how="vertical_relaxed")
        first = _pairs_with(spec, new_left.lazy(), all_right.lazy())
        second = _pairs_with(spec, self.left.lazy(), new_right.lazy())
        first, second = pl.collect_all([first, second])
        old_left = self.left
        if spec.how == "left":  # only a left join needs to know which left rows matched
            flipped = second.get_column(ROW_ID).unique()
            was = old_left.filter(pl.col(ROW_ID).is_in(flipped.implode()) & ~pl.col(_MATCHED)).get_column(ROW_ID)
            if was.len():
                self._changed["left"].append(was)
                old_left = old_left.with_columns(pl.col(_MATCHED) | pl.col(ROW_ID).is_in(was.implode()))
            new_left = new_left.with_columns(pl.col(_MATCHED) | pl.col(ROW_ID).is_in(first.get_column(ROW_ID).unique().implode()))
        emitted = [first.drop(ROW_ID), second.drop(ROW_ID)]
        buffered_left = pl.concat([old_left, new_left], how="vertical_relaxed")
        buffered_right = all_right
        if watermark_after is not None:
            done = pl.col(_T) + spec.upper_ms < watermark_after
            gone = buffered_left.filter(done)
            buffered_left = buffered_left.filter(~done)
            expired = pl.col(_T) - spec.lower_ms < watermark_after
            self._gone["right"].append(buffered_right.filter(expired).select(self._ident))
            buffered_right = buffered_right.filter(~expired)
            self._gone["left"].append(gone.select(self._ident))
            if spec.how == "left" and gone.height:
                emitted.append(gone.filter(~pl.col(_MATCHED)).drop(_T, _MATCHED, ROW_ID))
            self.watermark = watermark_after if self.watermark is None else max(self.watermark, watermark_after)
        self.left, self.right = buffered_left, buffered_right
        schema = spec.output_schema()
        pairs = pl.concat([e.cast({c: t for c, t in schema.items() if c in e.schema}) for e in emitted], how="diagonal_relaxed")  # type: ignore[arg-type]
        empty_left, empty_right = left.clear(), right.clear()
        return IntervalJoinOutput(
            pairs.select([pl.col(c) if c in pairs.schema else pl.lit(None, t).alias(c) for c, t in schema.items()]),
            empty_left if late_left is None else late_left.drop(_T),
            empty_right if late_right is None else late_right.drop(_T),
        )

    def take_delta(self, snapshot: bool = False) -> tuple[JoinRowsDelta, JoinRowsDelta]:
        """Each side's changes since the last take (left, right); a snapshot holds every buffered row."""
        out = []
        for side, frame in (("left", self.left), ("right", self.right)):
            gone = pl.concat([frame.select(self._ident).clear(), *self._gone[side]])
            if snapshot:
                upserts = frame
            else:
                changed = pl.concat([pl.Series(ROW_ID, [], dtype=pl.Int64), *self._changed[side]])
                upserts = frame.filter(pl.col(ROW_ID).is_in(changed.implode())) if changed.len() else frame.clear()
            out.append(JoinRowsDelta(upserts, gone, snapshot))
            self._changed[side], self._gone[side] = [], []
        return out[0], out[1]

    @property
    def buffered(self) -> tuple[int, int]:
        """How many rows each side holds."""
        return self.left.height, self.right.height

    @property
    def nbytes(self) -> int:
        """Bytes of the buffered rows."""
        return int(self.left.estimated_size() + self.right.estimated_size())


def _pairs_with(spec: IntervalJoinSpec, left: pl.LazyFrame, right: pl.LazyFrame) -> pl.LazyFrame:
    """Every matching pair of ``left`` and ``right`` rows (both carry ``__lg_t``) in the output's columns, and the left row's id (which matched)."""
    joined = left.join(right.drop(ROW_ID), on=list(spec.on), how="inner", suffix="_right")
    t_right = f"{_T}_right"
    joined = joined.filter((pl.col(t_right) >= pl.col(_T) + spec.lower_ms) & (pl.col(t_right) <= pl.col(_T) + spec.upper_ms))
    return joined.select([*spec.output_schema().names(), ROW_ID])


def _split_late(frame: pl.DataFrame, watermark: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(late rows, on-time rows): late is below the watermark before the batch."""
    late = pl.col(_T) < watermark
    return frame.filter(late), frame.filter(~late)
