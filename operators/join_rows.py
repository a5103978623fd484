"""What both kinds of stream join share: the spec, the buffered rows of each side with their ids, the deltas.

An interval join (:mod:`lockgate.operators.interval_join`) and a window join
(:mod:`lockgate.operators.window_join`) keep the rows of each side that a future row
may still pair with, each with an id (``__lg_row``, unique within a shard), and
hand out, per epoch, the rows that came or changed and the ids that left: the
state storage appends them as they are (:mod:`lockgate.storage.join_state`).

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.join_rows import StreamJoinSpec
>>> schema = pl.Schema({"ad": pl.String, "t": pl.Int64})
>>> spec = StreamJoinSpec.build("j", on="ad", lower_ms=0, upper_ms=1_000, how="inner", left_schema=schema,
...     right_schema=schema, left_time="t", right_time="t")
>>> list(spec.output_schema()), list(spec.state_schema("right"))
(['ad', 't', 't_right'], ['ad', 't', '__lg_t', '__lg_row'])
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from lockgate.errors import PipelineDefinitionError
from lockgate.operators.windows.specs import WE, WS, Hopping, Tumbling

__all__ = ["ROW_ID", "JoinOutput", "JoinRows", "JoinRowsDelta", "StreamJoinSpec"]

#: the buffered rows' event time (Int64 epoch ms) and, on an interval join's left, whether the row has matched
_T = "__lg_t"
_MATCHED = "__lg_matched"
#: each buffered row's id within its side (what a state delta's upserts and tombstones name)
ROW_ID = "__lg_row"


@dataclass(frozen=True)
class StreamJoinSpec:
    """One stream join: key columns, bounds (ms, relative to the left row's time) or a window, kind, the sides' schemas and time columns."""

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
    #: a window join's windows (pairs share a key and a window); None for an interval join
    window: Tumbling | Hopping | None = None

    @staticmethod
    def build(
        name: str, *, on: str | tuple[str, ...] | list[str], lower_ms: int, upper_ms: int, how: str,
        left_schema: pl.Schema, right_schema: pl.Schema, left_time: str, right_time: str, right_hidden: tuple[str, ...] = (),
        hidden: tuple[str, ...] = (), shard: str | None = None, window: Tumbling | Hopping | None = None,
    ) -> StreamJoinSpec:
        """A checked spec; raises :class:`PipelineDefinitionError` naming the join, the column and the fix."""
        keys = (on,) if isinstance(on, str) else tuple(on)
        if how not in ("inner", "left"):
            raise PipelineDefinitionError(f"join {name!r}: how={how!r}; a stream join is how='inner' or how='left'")
        if window is not None and not isinstance(window, (Tumbling, Hopping)):
            raise PipelineDefinitionError(
                f"join {name!r}: window={window!r}; a window join takes lg.Tumbling(size) or lg.Hopping(size, every)"
            )
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
        spec = StreamJoinSpec(
            name, keys, lower_ms, upper_ms, how, left_schema, right_schema, left_time, right_time, right_only, tuple(hidden), shard, window
        )
        if window is not None:
            clash = [c for c in (WS, WE) if c in spec._pair_schema()]
            if clash:
                raise PipelineDefinitionError(f"join {name!r}: a window join adds {clash}, which the streams have; rename them first")
        return spec

    def _pair_schema(self) -> pl.Schema:
        right = {
            c if c not in self.left_schema else f"{c}_right": t
            for c, t in self.right_schema.items() if c not in self.on and c not in self.right_hidden and c not in self.hidden
        }
        return pl.Schema({**{c: t for c, t in self.left_schema.items() if c not in self.hidden}, **right})

    def output_schema(self) -> pl.Schema:
        """The left columns, then the right ones but the keys (a clashing name gets ``_right``, as Polars names it); a window join's window after them."""
        if self.window is None:
            return self._pair_schema()
        return pl.Schema({**self._pair_schema(), WS: pl.Datetime("ms"), WE: pl.Datetime("ms")})

    def state_schema(self, side: str) -> pl.Schema:
        """The columns of one side's buffered rows: the side's, its event time, (interval, left) whether it matched, (window) its window, its id."""
        schema = self.left_schema if side == "left" else self.right_schema
        if self.window is not None:
            return pl.Schema({**schema, _T: pl.Int64(), WS: pl.Int64(), WE: pl.Int64(), ROW_ID: pl.Int64()})
        if side == "left":
            return pl.Schema({**schema, _T: pl.Int64(), _MATCHED: pl.Boolean(), ROW_ID: pl.Int64()})
        return pl.Schema({**schema, _T: pl.Int64(), ROW_ID: pl.Int64()})


@dataclass(frozen=True)
class JoinOutput:
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


class JoinRows:
    """Both sides' buffered rows of a running stream join, with ids, and what changed since the last take.

    A join logic (interval or window) owns its state, updates it in place and hands
    out what changed with :meth:`take_delta`, as a window logic does; ``watermark``
    is the last watermark a batch applied (where a reloaded state stands).
    """

    def __init__(
        self, spec: StreamJoinSpec, left: pl.DataFrame | None = None, right: pl.DataFrame | None = None,
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
        """``count`` new row ids of ``side`` (unique within a shard: ids a reload has not seen are above its largest)."""
        start = self._next[side]
        self._next[side] = start + count
        return pl.int_range(start, start + count, dtype=pl.Int64, eager=True).alias(ROW_ID)

    def _came(self, side: str, rows: pl.DataFrame) -> None:
        """``rows`` (with their ids) came to ``side``, or changed."""
        self._changed[side].append(rows.get_column(ROW_ID))

    def _left(self, side: str, rows: pl.DataFrame) -> None:
        """``rows`` left ``side``."""
        self._gone[side].append(rows.select(self._ident))

    def _moved_on(self, watermark: int) -> None:
        self.watermark = watermark if self.watermark is None else max(self.watermark, watermark)

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

    def _output(self, emitted: list[pl.DataFrame], left: pl.DataFrame, right: pl.DataFrame,
                late_left: pl.DataFrame | None, late_right: pl.DataFrame | None) -> JoinOutput:
        """What a batch emits, in the output's columns (missing ones null), with each side's late rows."""
        schema = self.spec.output_schema()
        parts = [e.cast({c: t for c, t in schema.items() if c in e.schema}) for e in emitted]  # type: ignore[arg-type]
        pairs = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame(schema=schema)
        return JoinOutput(
            pairs.select([pl.col(c) if c in pairs.schema else pl.lit(None, t).alias(c) for c, t in schema.items()]),
            left.clear() if late_left is None else late_left.drop(_T),
            right.clear() if late_right is None else late_right.drop(_T),
        )
