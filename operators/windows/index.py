"""The hot index of fixed windows' partial aggregates, updated in O(m log n) per batch.

A batch that touches m of n open (key, window) pairs must not cost O(n): the
pairs live in NumPy arrays (one per partial column, plus validity masks), found
through a sorted index of 64-bit hashes of (keys, window_start), and updated in
place.  New pairs are appended and enter a small second index that is merged into
the main one when it grows past an eighth of it (amortised O(1) per pair).
Closed windows are marked dead and swept when the watermark passes their end.
Merging partials reuses the Polars merge expressions on the m touched rows.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.windows.index import PartialIndex
>>> schema = pl.Schema({"k": pl.String, "window_start": pl.Int64, "window_end": pl.Int64, "__n_n": pl.Int64})
>>> index = PartialIndex(schema, ["k"])
>>> merge = {"__n_n": pl.col("__n_n").sum()}
>>> changed = index.upsert(pl.DataFrame({"k": ["a", "b"], "window_start": [0, 0], "window_end": [60, 60], "__n_n": [1, 2]}), merge)
>>> changed = index.upsert(pl.DataFrame({"k": ["a"], "window_start": [0], "window_end": [60], "__n_n": [5]}), merge)
>>> changed.to_dicts()
[{'k': 'a', 'window_start': 0, 'window_end': 60, '__n_n': 6}]
>>> index.frame().sort("k")["__n_n"].to_list(), len(index)
([6, 2], 2)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

__all__ = ["CHECK", "HASH", "Merge", "PartialIndex"]

#: How one partial column of a pair combines with the batch's partial, element-wise:
#: ``("add", None)``, ``("min", None)``, ``("max", None)``, or ``("first" | "last", order_column)``.
Merge = tuple[str, str | None]

_HASH_SLICE = 1 << 20
#: the columns of a pair's two hashes when a query computes them (:meth:`PartialIndex.hash_exprs`)
HASH, CHECK = "__lg_h", "__lg_c"
#: inserts of more pairs than this sort their hashes with Polars (multi-threaded) rather than NumPy
_PARALLEL_SORT = 200_000
#: the main index gets a bucket directory from this many pairs on (below, it fits the caches anyway)
_DIRECTORY_FROM = 1 << 16
_NUMERIC = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64, pl.Float32, pl.Float64, pl.Boolean)


def _numpy_able(dtype: pl.DataType) -> bool:
    return isinstance(dtype, _NUMERIC) or isinstance(dtype, (pl.Datetime, pl.Date, pl.Duration))


class PartialIndex:
    """Open (key, window) pairs with their partial aggregates, in mutable arrays."""

    @staticmethod
    def supports(schema: pl.Schema, key_columns: list[str]) -> bool:
        """True when every partial column fits a NumPy array (numbers, booleans, times)."""
        return all(_numpy_able(dtype) for name, dtype in schema.items() if name not in key_columns)

    def __init__(self, schema: pl.Schema, key_columns: list[str]) -> None:
        self.schema = schema
        self.ident = [*key_columns, "window_start"]
        self.key_frame_columns = [*key_columns, "window_start", "window_end"]
        self.value_columns = [c for c in schema.names() if c not in self.key_frame_columns]
        self.keys = pl.DataFrame(schema={c: schema[c] for c in self.key_frame_columns})
        self.capacity = 0
        self.size = 0
        self.values: dict[str, np.ndarray] = {}
        self.valid: dict[str, np.ndarray] = {}
        self.alive = np.zeros(0, dtype=bool)
        self.ends = np.zeros(0, dtype=np.int64)
        self.check = np.zeros(0, dtype=np.uint32)  # a second hash, to tell apart the (rare) equal first hashes
        self.min_end: int | None = None  # the earliest window end of an open pair: closing scans only when it passed
        self.main_h = np.zeros(0, dtype=np.uint64)
        self.main_dir: tuple[np.ndarray, int] | None = None  # bucket starts of main_h by its top bits
        self.main_ids = np.zeros(0, dtype=np.int32)  # row ids stay below 2**31
        self.recent_h = np.zeros(0, dtype=np.uint64)
        self.recent_ids = np.zeros(0, dtype=np.int32)
        self.live = 0
        self._grow(1024)

    def __len__(self) -> int:
        return self.live

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays and the key frame."""
        arrays = [*self.values.values(), *self.valid.values(), self.alive, self.ends, self.check,
                  self.main_h, self.main_ids, self.recent_h, self.recent_ids]
        directory = self.main_dir[0].nbytes if self.main_dir is not None else 0
        return sum(a.nbytes for a in arrays) + directory + self.keys.estimated_size()

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, self.capacity * 2)
        for name in self.value_columns:
            dtype = self._np_dtype(self.schema[name])
            values = np.zeros(capacity, dtype=dtype)
            valid = np.zeros(capacity, dtype=bool)
            if self.capacity:
                values[: self.size] = self.values[name][: self.size]
                valid[: self.size] = self.valid[name][: self.size]
            self.values[name], self.valid[name] = values, valid
        for attr, dtype in (("alive", bool), ("ends", np.int64), ("check", np.uint32)):
            arr = np.zeros(capacity, dtype=dtype)
            arr[: self.size] = getattr(self, attr)[: self.size]
            setattr(self, attr, arr)
        self.capacity = capacity

    @staticmethod
    def _np_dtype(dtype: pl.DataType) -> type:
        if isinstance(dtype, pl.Boolean):
            return np.bool_
        if isinstance(dtype, (pl.Float32, pl.Float64)):
            return np.float64
        if isinstance(dtype, pl.UInt64):
            return np.uint64
        return np.int64

    def hash_exprs(self) -> tuple[pl.Expr, pl.Expr]:
        """The two hashes of :meth:`_hashes` as expressions (columns ``HASH``, ``CHECK``), to compute them inside another query."""
        return (
            pl.struct(self.ident).hash(seed=7).alias(HASH),
            (pl.struct(self.ident).hash(seed=1_000_003) // 4_294_967_296).cast(pl.UInt32).alias(CHECK),
        )

    def _hashes(self, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Two independent 64- and 32-bit hashes of each row's (keys, window_start).

        Large frames (a state load) go in slices: hashing 10M rows at once left
        ~550 MB of Polars scratch memory held by its allocator (peak RSS, seen in
        bench/state_scaling.py); slices reuse a small scratch.  A row's hash does not
        depend on the other rows, so slicing changes no value.
        """
        exprs = self.hash_exprs()
        if frame.height <= _HASH_SLICE:
            out = frame.select(exprs)
            return out[HASH].to_numpy(), out[CHECK].to_numpy()
        h = np.empty(frame.height, dtype=np.uint64)
        c = np.empty(frame.height, dtype=np.uint32)
        for offset in range(0, frame.height, _HASH_SLICE):
            out = frame.slice(offset, _HASH_SLICE).select(exprs)
            h[offset : offset + out.height] = out[HASH].to_numpy()
            c[offset : offset + out.height] = out[CHECK].to_numpy()
        return h, c

    def _find(self, h: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Row id of each hash, or -1."""
        out = np.full(len(h), -1, dtype=np.int64)
        order = np.argsort(h)  # sorted needles: the binary searches walk the index in order (2-3x fewer cache misses)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        for sorted_h, ids, directory in ((self.main_h, self.main_ids, self.main_dir), (self.recent_h, self.recent_ids, None)):
            if len(sorted_h) == 0:
                continue
            if directory is not None:
                pos = _bucket_search(sorted_h, directory, h)
            else:
                pos = np.searchsorted(sorted_h, h[order])[rank]
            inside = pos < len(sorted_h)
            hit = np.zeros(len(h), dtype=bool)
            hit[inside] = sorted_h[pos[inside]] == h[inside]
            cand = np.where(hit, ids[np.minimum(pos, len(ids) - 1)].astype(np.int64), -1)
            good = hit & (self.check[np.maximum(cand, 0)] == c) & self.alive[np.maximum(cand, 0)]
            out = np.where((out < 0) & good, cand, out)
            # equal first hashes but another pair (or a dead row first): scan the run of equal hashes (rare)
            for i in np.nonzero(hit & ~good & (out < 0))[0]:
                j = pos[i]
                while j < len(sorted_h) and sorted_h[j] == h[i]:
                    rid = ids[j]
                    if self.check[rid] == c[i] and self.alive[rid]:
                        out[i] = rid
                        break
                    j += 1
        return out

    def _set_main(self, h: np.ndarray, ids: np.ndarray) -> None:
        self.main_h, self.main_ids = h, ids
        self.main_dir = _directory(h) if len(h) >= _DIRECTORY_FROM else None

    def _gather(self, ids: np.ndarray, keys: pl.DataFrame | None = None) -> pl.DataFrame:
        """Rows ``ids``; ``keys`` saves gathering key columns that the caller already has (same order)."""
        keys = self.keys[pl.Series(ids)] if keys is None else pl.DataFrame([keys.get_column(c) for c in self.key_frame_columns])
        cols = []
        for name in self.value_columns:
            series = pl.Series(name, self.values[name][ids])
            mask = self.valid[name][ids]
            if not mask.all():
                series = series.set(pl.Series(~mask), None)
            cols.append(series.cast(self.schema[name]))
        return keys.hstack(cols)

    def _scatter(self, ids: np.ndarray | slice, frame: pl.DataFrame) -> None:
        for name in self.value_columns:
            self.values[name][ids], self.valid[name][ids] = _arrays(frame[name])

    def upsert(
        self, partials: pl.DataFrame, merges: Mapping[str, pl.Expr], horizontal: Mapping[str, Merge] | None = None,
        hashes: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> pl.DataFrame:
        """Merge a batch's partials (one row per pair) into the state; returns the pairs' new rows.

        ``merges`` combine the old and the new partial of a pair as a Polars group
        aggregation; ``horizontal``, when given (see :data:`Merge`), says the same per
        column as element-wise NumPy operations, which update the arrays in place
        without building, grouping and sorting a frame of old and new rows.
        """
        if partials.height == 0:
            return partials.select(self.schema.names())
        h, c = self._hashes(partials) if hashes is None else hashes
        ids = self._find(h, c)
        found = ids >= 0
        out_parts = []
        if found.any():
            old_ids = ids[found]
            new = partials if found.all() else partials[np.nonzero(found)[0]]  # a gather, no query
            if horizontal is not None:
                self._merge_in_place(old_ids, new, horizontal)
                merged = self._gather(old_ids, keys=new)
            else:
                old = self._gather(old_ids, keys=new)  # the batch has the keys: no random reads of the key column
                merged = (
                    pl.concat([old.with_row_index("__r"), new.select(self.schema.names()).with_row_index("__r")], how="vertical_relaxed")
                    .group_by("__r", maintain_order=True)
                    .agg(*[pl.col(k).first() for k in self.key_frame_columns], **merges)
                    .sort("__r")
                    .drop("__r")
                    .select(self.schema.names())
                    .cast(dict(self.schema))  # type: ignore[arg-type]
                )
                self._scatter(old_ids, merged)
            out_parts.append(merged)
        if (~found).any():
            fresh = partials.filter(pl.Series(~found)).select(self.schema.names()).cast(dict(self.schema))  # type: ignore[arg-type]
            self._insert(fresh, h[~found], c[~found])
            out_parts.append(fresh)
        return pl.concat(out_parts, how="vertical_relaxed") if len(out_parts) > 1 else out_parts[0]

    def _merge_in_place(self, ids: np.ndarray, new: pl.DataFrame, how: Mapping[str, Merge]) -> None:
        """Combine rows ``ids`` with ``new``'s partials (same order), column by column (see :data:`Merge`).

        Nulls count as Polars' aggregations count them: a sum skips them (and is 0
        when both are null), min and max take the other value, first and last take
        the value of the earlier or later arrival order, null or not.
        """
        old = {name: (self.values[name][ids], self.valid[name][ids]) for name in self.value_columns}
        incoming = {name: _arrays(new[name]) for name in self.value_columns}
        for name in self.value_columns:
            kind, order = how[name]
            (a, a_ok), (b, b_ok) = old[name], incoming[name]
            if kind == "add":
                values, valid = np.where(a_ok, a, 0) + np.where(b_ok, b, 0), np.ones(len(a), dtype=bool)
            elif kind in ("min", "max"):
                pick = (np.fmin if kind == "min" else np.fmax) if a.dtype.kind == "f" else (np.minimum if kind == "min" else np.maximum)
                values = np.where(a_ok & b_ok, pick(a, b), np.where(a_ok, a, b))
                valid = a_ok | b_ok
            else:  # first / last: the value of the partial with the earlier / later arrival order
                assert order is not None
                a_order, b_order = old[order][0], incoming[order][0]
                take_old = a_order <= b_order if kind == "first" else a_order >= b_order
                values, valid = np.where(take_old, a, b), np.where(take_old, a_ok, b_ok)
            self.values[name][ids] = values
            self.valid[name][ids] = valid

    def _insert(self, fresh: pl.DataFrame, h: np.ndarray, c: np.ndarray) -> None:
        start, count = self.size, fresh.height
        self._grow(start + count)
        self.keys = pl.concat([self.keys, fresh.select(self.key_frame_columns)], how="vertical", rechunk=False)
        if self.keys.n_chunks() > 64:
            self.keys = self.keys.rechunk()
        self.size += count
        rows = slice(start, start + count)  # new rows go to the end: slices, not a gather of ids (1M rows: 70 -> 10 ms)
        self.alive[rows] = True
        ends = fresh["window_end"].to_numpy()
        self.ends[rows] = ends
        if count:
            lowest = int(ends.min())
            self.min_end = lowest if self.min_end is None else min(self.min_end, lowest)
        self.check[rows] = c
        self._scatter(rows, fresh)
        if count > _PARALLEL_SORT:
            # a state load: Polars' argsort runs on every core (1M hashes: 0.05 s, NumPy's 0.13 s here), and a
            # second sort of the hashes beats gathering them by the order out of cache (23 vs 40 ms)
            order, sorted_h = pl.Series(h).arg_sort().to_numpy(), np.sort(h)
        else:  # a batch's new pairs: NumPy's is faster on small arrays (40k: 2.0 vs 2.7 ms)
            order = np.argsort(h)
            sorted_h = h[order]
        new_ids = (order + start).astype(np.int32, copy=False)  # the new ids are the range start, start + 1, ...
        self.recent_h, self.recent_ids = _merge_sorted(self.recent_h, self.recent_ids, sorted_h, new_ids)
        if len(self.recent_h) > 65_536:
            self._flush_recent()
        self.live += count

    def _flush_recent(self) -> None:
        """Merge the recent hashes into the main index (with its bucket directory) and start a new recent run."""
        self._set_main(*_merge_sorted(self.main_h, self.main_ids, self.recent_h, self.recent_ids))
        self.recent_h = np.zeros(0, dtype=np.uint64)
        self.recent_ids = np.zeros(0, dtype=np.int32)

    def close_until(self, limit: int) -> pl.DataFrame:
        """Remove and return the pairs whose ``window_end <= limit``."""
        if self.live == 0 or self.min_end is None or self.min_end > limit:
            return pl.DataFrame(schema=self.schema)  # nothing can close: no scan
        live_ends = self.ends[: self.size]
        closing = np.nonzero(self.alive[: self.size] & (live_ends <= limit))[0]
        if len(closing) == 0:
            return pl.DataFrame(schema=self.schema)
        out = self._gather(closing)
        self.alive[closing] = False
        self.live -= len(closing)
        remaining = live_ends[self.alive[: self.size]]
        self.min_end = int(remaining.min()) if len(remaining) else None
        if self.live * 2 < self.size:
            self._sweep()
        return out

    def _sweep(self) -> None:
        """Drop dead rows and rebuild the index (amortised: when half the rows are dead)."""
        keep = np.nonzero(self.alive[: self.size])[0]
        frame = self._gather(keep)
        h, c = self._hashes(frame) if frame.height else (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64))
        self.__init__(self.schema, self.ident[:-1])  # type: ignore[misc]
        if frame.height:
            self._insert_bulk(frame, h, c)

    def _insert_bulk(self, frame: pl.DataFrame, h: np.ndarray, c: np.ndarray) -> None:
        self._insert(frame, h, c)
        if len(self.recent_h):  # else _insert moved them to main already
            self._flush_recent()

    def frame(self) -> pl.DataFrame:
        """Every open pair (O(n): for reads and tests, not for the batch path)."""
        return self._gather(np.nonzero(self.alive[: self.size])[0])

    @staticmethod
    def from_frame(frame: pl.DataFrame, key_columns: list[str]) -> PartialIndex:
        """An index holding ``frame``'s pairs (one row per pair)."""
        index = PartialIndex(frame.schema, key_columns)
        if frame.height:
            h, c = index._hashes(frame)
            index._insert_bulk(frame, h, c)
        return index


def _arrays(series: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A partial column as the index keeps it: values (nulls as 0 or False, times as their integers) and validity."""
    if series.null_count() == 0:  # the common case: no query for the validity and the fill (two per column and batch)
        valid = np.ones(len(series), dtype=bool)
        filled = series
    else:
        valid = series.is_not_null().to_numpy()
        filled = series.fill_null(False if isinstance(series.dtype, pl.Boolean) else 0)
    if isinstance(series.dtype, (pl.Datetime, pl.Date, pl.Duration)):
        filled = filled.to_physical()
    return filled.to_numpy(), valid


def _directory(sorted_h: np.ndarray) -> tuple[np.ndarray, int]:
    """Where each bucket of hashes (by their top bits, ~8 per bucket) starts in ``sorted_h``: O(n)."""
    bits = int(min(26, max(1, np.ceil(np.log2(len(sorted_h) / 8)))))
    shift = 64 - bits
    # searching the bucket boundaries needs no temporary the size of sorted_h (peak RSS at 10M pairs)
    starts = np.empty((1 << bits) + 1, dtype=np.int64)
    starts[:-1] = np.searchsorted(sorted_h, np.arange(1 << bits, dtype=np.uint64) << np.uint64(shift))
    starts[-1] = len(sorted_h)
    return starts, shift


def _bucket_search(sorted_h: np.ndarray, directory: tuple[np.ndarray, int], needles: np.ndarray) -> np.ndarray:
    """``np.searchsorted(sorted_h, needles)``, searching only each needle's bucket.

    Hashes are uniform, so a bucket holds a handful of entries on one or two cache
    lines: a few vectorised bisection steps there replace ~log2(n) random reads
    across the whole array (at 10M pairs, 4.8 ms -> well under 1 ms per 10k needles).
    """
    starts, shift = directory
    bucket = (needles >> np.uint64(shift)).astype(np.int64)
    lo, hi = starts[bucket], starts[bucket + 1]
    last = len(sorted_h) - 1
    active = lo < hi
    while active.any():
        mid = (lo + hi) >> 1
        right = active & (sorted_h[np.minimum(mid, last)] < needles)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
        active = lo < hi
    return lo


def _merge_sorted(a_h: np.ndarray, a_ids: np.ndarray, b_h: np.ndarray, b_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted ``b`` into sorted ``a``: O(len(a) + len(b) log len(a)), one memmove."""
    if len(a_h) == 0:
        return b_h, b_ids
    if len(b_h) == 0:
        return a_h, a_ids
    pos = np.searchsorted(a_h, b_h, side="right")
    return np.insert(a_h, pos, b_h), np.insert(a_ids, pos, b_ids)
