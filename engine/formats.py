"""Record formats: how Kafka values become columns, and columns become values.

A format is a frozen spec (``lg.JSON``, ``lg.Raw``, ``lg.ArrowIPC``).  Decoding always
works on a whole micro-batch at once: JSON values are joined with newlines and read
by one ``pl.read_ndjson`` call, Arrow IPC values are read zero-copy.  Values that do
not decode are returned with their error, never dropped: the engine sends them to
the dead-letter topic.

Examples
--------
>>> import polars as pl
>>> from lockgate.engine.formats import JSON
>>> fmt = JSON(schema={"user": pl.String, "n": pl.Int64})
>>> out = fmt.decode([b'{"user": "a", "n": 1}', b'{"user": "b", "n": "x"}', b'oops'])
>>> out.frame.to_dicts(), out.rows
([{'user': 'a', 'n': 1}], [0])
>>> [index for index, _ in out.errors]
[1, 2]

Schema columns are nullable: a JSON ``null`` or a missing key is a null value,
unless ``required=`` names the column.  The event-time column of a source
(``decode(..., event_time=)``) is always required; its failures are kept apart:

>>> fmt = JSON(schema={"id": pl.Int64, "country": pl.String, "ts": pl.Datetime("ms")}, required=["id"])
>>> out = fmt.decode([b'{"id": 1, "country": null, "ts": 5}', b'{"id": 2, "ts": 6}', b'{"ts": 7}', b'{"id": 4}'], event_time="ts")
>>> out.frame["country"].to_list(), list(out.rows)
([None, None], [0, 1])
>>> out.errors, out.bad_times
([(2, "column 'id' is missing or null, and lg.JSON(required=...) lists it")], [(3, "event time column 'ts' is missing or null")])
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
from lockgate.errors import PipelineDefinitionError

__all__ = ["JSON", "ArrowIPC", "Decoded", "Format", "Raw", "concat_decoded"]

_TEMPORAL = (pl.Datetime, pl.Date)
#: how far past ``max_message_bytes`` an Arrow IPC stream may come out before it is split (under the broker's 1 MB default)
_IPC_SLACK = 1.1
_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d")


@dataclass(frozen=True)
class Decoded:
    """The result of decoding one batch of values.

    ``frame`` holds the rows that decoded, in input order; ``rows[i]`` is the input
    index of ``frame``'s row ``i``; ``errors`` lists ``(input index, message)`` for
    every value that did not decode (dead letters with reason ``decode``), and
    ``bad_times`` for every value whose event time is missing, null or not a time
    (reason ``event_time``); ``marks`` lists ``(input index, bytes)`` for values that
    carry a watermark mark beside their rows (a repartition topic's records, see
    :mod:`lockgate.engine.repartition`).
    """

    frame: pl.DataFrame
    rows: Sequence[int]
    errors: list[tuple[int, str]] = field(default_factory=list)
    bad_times: list[tuple[int, str]] = field(default_factory=list)
    marks: list[tuple[int, bytes]] = field(default_factory=list)
    #: values whose schema is unknown or cannot be read as the reader's (reason ``schema``: :mod:`lockgate.engine.avro_format`)
    schema_errors: list[tuple[int, str]] = field(default_factory=list)


def concat_decoded(parts: Sequence[tuple[int, Decoded]]) -> Decoded:
    """One batch's decoded chunks as one: ``(index of the chunk's first value, decoded)`` in order.

    >>> fmt = JSON(schema={"n": pl.Int64})
    >>> whole = concat_decoded([(0, fmt.decode([b'{"n": 1}', b'x'])), (2, fmt.decode([b'{"n": 3}']))])
    >>> whole.frame["n"].to_list(), list(whole.rows), [i for i, _ in whole.errors]
    ([1, 3], [0, 2], [1])
    """
    if len(parts) == 1 and parts[0][0] == 0:
        return parts[0][1]
    frame = pl.concat([d.frame for _, d in parts], how="vertical") if parts else pl.DataFrame()
    errors = [(start + i, message) for start, d in parts for i, message in d.errors]
    bad_times = [(start + i, message) for start, d in parts for i, message in d.bad_times]
    marks = [(start + i, mark) for start, d in parts for i, mark in d.marks]
    schema_errors = [(start + i, message) for start, d in parts for i, message in d.schema_errors]
    if all(isinstance(d.rows, range) and d.rows == range(len(d.rows)) and not d.errors and not d.bad_times and not d.schema_errors
           for _, d in parts):
        rows: Sequence[int] = range(frame.height)  # every chunk clean: no list per record
    else:
        rows = [start + i for start, d in parts for i in d.rows]
    return Decoded(frame, rows, errors, bad_times, marks, schema_errors)


class Format:
    """Base of the record formats."""

    name: ClassVar[str] = "format"

    def value_schema(self) -> dict[str, pl.DataType]:
        """The columns that decoded values contribute."""
        raise NotImplementedError

    def decode(self, values: Sequence[bytes | None], *, event_time: str | None = None) -> Decoded:
        """Decode a whole batch of values.

        ``event_time`` names the source's event-time column (one of the value
        columns): a row where it is missing, null or not a time goes to
        ``Decoded.bad_times``, never into the frame.
        """
        raise NotImplementedError

    def encode(self, frame: pl.DataFrame) -> list[bytes]:
        """Encode a frame into one value per row."""
        raise NotImplementedError

    def for_source(self, topic: str) -> Format:
        """This format as a source of ``topic`` reads it (a registry format resolves its reader schema here, once)."""
        return self

    def for_sink(self, topic: str, columns: Mapping[str, pl.DataType], where: str) -> Format:
        """This format as a sink writes ``columns`` to ``topic`` (a registry format registers or finds its schema here, once)."""
        return self


def _dtype(value: Any, column: str) -> pl.DataType:
    try:
        dtype = pl.DataType.from_python(value) if isinstance(value, type) and not issubclass(value, pl.DataType) else value
        return dtype() if isinstance(dtype, type) else dtype
    except Exception as exc:
        raise PipelineDefinitionError(
            f"lg.JSON: the type {value!r} of column {column!r} is not a Polars data type; use e.g. pl.String, pl.Int64"
        ) from exc


@dataclass(frozen=True, init=False)
class JSON(Format):
    """JSON objects, one per Kafka value.

    Parameters
    ----------
    schema
        Column name to Polars type.  Required for a source; a sink may leave it out.
        Datetime columns accept integer epochs (in the column's time unit) and
        ISO-8601 text; text columns take any JSON scalar as its text.  Every column
        is nullable: a JSON ``null`` or a missing key is a null value.
    required
        Columns a record must have, present and not null: a record without one goes
        to the dead-letter topic with reason ``decode``, its ``lockgate.error``
        header naming the column.  A source's event-time column
        (``pipe.source(..., event_time=...)``) is always required, whether listed
        or not: a record whose event time is missing, null or not a time goes to
        the dead-letter topic with reason ``event_time``.

    ``nullable=`` was removed: columns are nullable by default, and ``required=``
    names the ones that are not.

    Examples
    --------
    >>> import polars as pl
    >>> import lockgate as lg
    >>> orders = lg.JSON(schema={"id": pl.Int64, "country": pl.String}, required=["id"])
    >>> out = orders.decode([b'{"id": 1, "country": null}', b'{"id": 2}', b'{"country": "NO"}'])
    >>> out.frame.to_dicts()
    [{'id': 1, 'country': None}, {'id': 2, 'country': None}]
    >>> out.errors
    [(2, "column 'id' is missing or null, and lg.JSON(required=...) lists it")]
    """

    name: ClassVar[str] = "json"
    schema: Mapping[str, pl.DataType] | None
    required: frozenset[str]

    def __init__(self, schema: Mapping[str, Any] | None = None, *, required: str | Sequence[str] = (), **removed: Any) -> None:
        resolved = None if schema is None else {str(k): _dtype(v, str(k)) for k, v in dict(schema).items()}
        if "nullable" in removed:
            optional = removed.pop("nullable")
            optional = [optional] if isinstance(optional, str) else list(optional or ())
            keep = [name for name in resolved or {} if name not in optional]
            raise PipelineDefinitionError(
                f"lg.JSON: nullable= was removed; every schema column is nullable now (a JSON null or a missing key "
                f"is a null value). Name the columns a record must have with required= instead: "
                f"lg.JSON(schema=..., required={keep!r}) keeps what nullable={optional!r} meant"
            )
        if removed:
            raise TypeError(f"lg.JSON() got an unexpected keyword argument {next(iter(removed))!r}")
        names = [required] if isinstance(required, str) else list(required)
        for column in names:
            if column not in (resolved or {}):
                raise PipelineDefinitionError(
                    f"lg.JSON: required= names {column!r}, which is not a schema column; the schema has "
                    f"{list(resolved or {})}. Add {column!r} to schema= or leave it out of required="
                )
        object.__setattr__(self, "schema", resolved)
        object.__setattr__(self, "required", frozenset(names))
        object.__setattr__(self, "_epochs", _EpochHint())

    def __hash__(self) -> int:
        return hash((tuple((self.schema or {}).items()), self.required))

    def value_schema(self) -> dict[str, pl.DataType]:
        if self.schema is None:
            raise PipelineDefinitionError("lg.JSON: a source needs schema={column: type, ...} to decode values")
        return dict(self.schema)

    def _wire_schema(self, event_time: str | None, *, text: bool = True) -> dict[str, pl.DataType]:
        """The types ``read_ndjson`` reads, parsed after (``_parse_wire``).

        Temporal columns are read as text (``text``) or as Int64 epochs.  An integer
        event-time column is read as text on the text wire too, so that a value that
        is not a number is its event time's fault (reason ``event_time``), found by
        one parse of the column rather than by bisecting the batch.
        """
        out = {}
        for name, dtype in self.value_schema().items():
            if isinstance(dtype, _TEMPORAL):
                out[name] = pl.String() if text else pl.Int64()
            elif text and name == event_time and dtype.is_integer():
                out[name] = pl.String()
            else:
                out[name] = dtype
        return out

    def _clean_wires(self, event_time: str | None) -> tuple[list[dict[str, pl.DataType]], bool]:
        """The wire schemas a clean batch is read with, in order: integer epochs first while they keep working, text always last.

        Reading an epoch as Int64 saves formatting the number as text and parsing it
        back; a batch where some value is ISO text fails that read (Polars refuses a
        string for Int64) and is read as text instead.  After such a batch the next
        ``_EpochHint.TEXT_FOR`` batches are read as text at once, then epochs are
        tried again.  An integer event time alone never earns that: a value of it
        that is not a number is a bad record, not a stream of text.  Returns the
        wires and whether the hint chose them (then it learns from the read).
        """
        text = self._wire_schema(event_time)
        numbers = self._wire_schema(event_time, text=False)
        if numbers == text:
            return [text], False
        if not any(isinstance(v, _TEMPORAL) for v in self.value_schema().values()):
            return [numbers, text], False
        return ([numbers, text], True) if self._epochs.worth_trying() else ([text], False)

    def decode(self, values: Sequence[bytes | None], *, event_time: str | None = None) -> Decoded:
        wires, hinted = self._clean_wires(event_time)
        wire = wires[-1]  # the text wire: the fallback of a clean read and the one the bisection uses
        clean, used = _read_ndjson_clean(values, wires)
        if hinted and used is not None:
            self._epochs.outcome(used == 0)
        if clean is not None:
            return self._finish(clean, range(len(values)), [], event_time)
        candidates, errors = _prefilter(values)
        chunks: list[tuple[list[int], pl.DataFrame]] = []
        _read_ndjson_bisect(values, candidates, wire, chunks, errors)
        if chunks:
            frame = pl.concat([c[1] for c in chunks], how="vertical")
            rows = [i for c in chunks for i in c[0]]
        else:
            frame, rows = pl.DataFrame(schema=wire), []
        out = self._finish(frame, rows, errors, event_time)
        out.errors.sort()
        return out

    def _finish(self, frame: pl.DataFrame, rows: Sequence[int], errors: list[tuple[int, str]], event_time: str | None) -> Decoded:
        """Parse what was read as text, then check the required columns and the event time, for the whole frame at once.

        A row with several faults is a ``decode`` error first: its event time is only
        judged in a record of the schema.
        """
        schema = self.value_schema()
        parsed = _parse_wire(frame, schema, event_time)
        problems: list[pl.Expr] = []
        time_problems: list[pl.Expr] = []
        for name, dtype in schema.items():
            nulls = parsed[name].null_count()
            if nulls == 0:
                continue  # null counts are metadata: a clean column costs nothing to check
            is_time = name == event_time
            if nulls > frame[name].null_count():  # some text did not parse
                what = f"event time column {name!r}" if is_time else f"column {name!r}"
                (time_problems if is_time else problems).append(
                    pl.when(pl.col(name).is_null() & frame[name].is_not_null())
                    .then(pl.lit(f"{what}: cannot parse ") + frame[name].cast(pl.String) + pl.lit(f" as {dtype}"))
                )
            if is_time:
                time_problems.append(pl.when(pl.col(name).is_null()).then(pl.lit(f"event time column {name!r} is missing or null")))
            elif name in self.required:
                problems.append(
                    pl.when(pl.col(name).is_null()).then(
                        pl.lit(f"column {name!r} is missing or null, and lg.JSON(required=...) lists it")
                    )
                )
        if (not problems and not time_problems) or parsed.height == 0:
            return Decoded(parsed, rows, errors)
        reasons = parsed.select(
            pl.coalesce(problems).alias("decode") if problems else pl.lit(None, pl.String).alias("decode"),
            pl.coalesce(time_problems).alias("time") if time_problems else pl.lit(None, pl.String).alias("time"),
        ).with_columns(time=pl.when(pl.col("decode").is_null()).then(pl.col("time")))
        bad = reasons["decode"].is_not_null() | reasons["time"].is_not_null()
        if not bad.any():
            return Decoded(parsed, rows, errors)
        index = pl.Series("i", rows, dtype=pl.Int64)
        found = []
        for column in ("decode", "time"):
            failed = reasons[column].is_not_null()
            found.append(list(zip(index.filter(failed).to_list(), reasons[column].filter(failed).to_list(), strict=True)))
        keep = ~bad
        return Decoded(parsed.filter(keep), index.filter(keep).to_list(), errors + found[0], found[1])

    def encode(self, frame: pl.DataFrame) -> list[bytes]:
        if frame.height == 0 or frame.width == 0:
            return [b"{}"] * frame.height
        encoded = frame.select(pl.struct(pl.all()).struct.json_encode().cast(pl.Binary))
        return encoded.to_series().to_list()

    @staticmethod
    def check_writable(schema: Mapping[str, pl.DataType], where: str) -> None:
        """Refuse columns that JSON cannot hold (raw bytes), naming them and the fix."""
        binary = [name for name, dtype in schema.items() if "Binary" in str(dtype)]
        if binary:
            raise PipelineDefinitionError(
                f"{where}: lg.JSON cannot write the binary column(s) {binary}; cast them to text "
                f"(pl.col(...).cast(pl.String)), encode them (pl.col(...).bin.encode('base64')), or drop them"
            )


def _parse_wire(frame: pl.DataFrame, schema: Mapping[str, pl.DataType], event_time: str | None = None) -> pl.DataFrame:
    """The temporal columns parsed from their text (or epochs), and an integer event time read as text parsed as a number.

    Integer epochs, the common case, take one cheap pass; only a column where some
    value is not one tries every accepted form (each a parse of the whole column).
    """
    columns = [(name, dtype) for name, dtype in schema.items() if isinstance(dtype, _TEMPORAL)]
    numbers = []
    if event_time is not None and schema[event_time].is_integer() and frame.schema[event_time] == pl.String:
        numbers.append(pl.col(event_time).str.to_integer(strict=False).cast(schema[event_time], strict=False))
    if not columns:
        return frame.with_columns(numbers) if numbers else frame
    epochs = frame.select([_with_zone(_epoch(pl.col(name), dtype, frame.schema[name]), dtype).alias(name) for name, dtype in columns])
    return frame.with_columns(
        [epochs[name] if epochs[name].null_count() == frame[name].null_count() else _temporal_expr(name, dtype) for name, dtype in columns]
        + numbers
    )


def _epoch(text: pl.Expr, dtype: pl.DataType, wire: pl.DataType = pl.String()) -> pl.Expr:
    """An integer epoch: days for a Date, the column's time unit for a Datetime (``wire``: read as text or Int64)."""
    target = pl.Date() if isinstance(dtype, pl.Date) else pl.Datetime(dtype.time_unit or "us")  # type: ignore[attr-defined]
    return (text if wire.is_integer() else text.str.to_integer(strict=False)).cast(target)


def _with_zone(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A naive UTC datetime in the column's time zone, if it has one."""
    tz = getattr(dtype, "time_zone", None)
    return expr.dt.replace_time_zone("UTC").dt.convert_time_zone(tz) if tz is not None else expr


def _temporal_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    text = pl.col(name)
    if isinstance(dtype, pl.Date):
        return pl.coalesce(text.str.to_date("%Y-%m-%d", strict=False), _epoch(text, dtype)).alias(name)
    unit = dtype.time_unit or "us"
    parsed = [_epoch(text, dtype)]
    for fmt in _ISO_FORMATS:
        candidate = text.str.to_datetime(fmt, time_unit=unit, strict=False)
        if fmt.endswith("%#z"):
            candidate = candidate.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        parsed.append(candidate)
    return _with_zone(pl.coalesce(parsed), dtype).alias(name)


def _split_times(decoded: Decoded, event_time: str | None) -> Decoded:
    """``decoded`` without the values that hold a null event time: those become ``bad_times``.

    A Kafka value is the unit of dead letters: one holding many rows (Arrow IPC)
    goes whole to the dead-letter topic when any of its rows has no event time.
    A clean column costs one null count.
    """
    if event_time is None or decoded.frame[event_time].null_count() == 0:
        return decoded
    index = pl.Series("i", decoded.rows, dtype=pl.Int64)
    bad = (
        pl.DataFrame({"i": index, "null": decoded.frame[event_time].is_null()})
        .group_by("i", maintain_order=True)
        .agg(pl.len().alias("rows"), pl.col("null").sum())
        .filter(pl.col("null") > 0)
    )
    bad_times = [
        (i, f"event time column {event_time!r} is " + ("missing or null" if rows == 1 else f"null in {nulls} of the value's {rows} rows"))
        for i, rows, nulls in bad.iter_rows()
    ]
    keep = ~index.is_in(bad["i"].implode())
    return Decoded(decoded.frame.filter(keep), index.filter(keep).to_list(), decoded.errors, bad_times, decoded.marks, decoded.schema_errors)


def _prefilter(values: Sequence[bytes | None]) -> tuple[list[int], list[tuple[int, str]]]:
    """Indices worth decoding, and errors for values that are null or empty.

    The common case (no null, no empty value) costs two C-level scans of the list.
    """
    if None not in values and b"" not in values:
        return list(range(len(values))), []
    errors = [(i, "the value is null (a tombstone)" if v is None else "the value is empty") for i, v in enumerate(values) if not v]
    return [i for i, v in enumerate(values) if v], errors


class _EpochHint:
    """Whether a JSON source's temporal columns are worth reading as integer epochs (see ``JSON._clean_wires``)."""

    TEXT_FOR = 100

    def __init__(self) -> None:
        self.text_left = 0  # batches still to read as text before epochs are tried again

    def worth_trying(self) -> bool:
        if self.text_left > 0:
            self.text_left -= 1
            return False
        return True

    def outcome(self, epochs_worked: bool) -> None:
        self.text_left = 0 if epochs_worked else self.TEXT_FOR


def _read_ndjson_clean(
    values: Sequence[bytes | None], wires: Sequence[dict[str, pl.DataType]]
) -> tuple[pl.DataFrame | None, int | None]:
    """The common case in one read: every value one line and one JSON object of the schema.

    Returns the frame and the index of the wire schema that read it, or ``(None, None)``.
    Rows and values line up when the joined text has exactly ``n - 1`` newlines (no
    value holds one) and the read returns ``n`` rows (no value was blank).  A null
    value fails the join, a bad one the read of every wire schema: the caller then
    decodes value by value.
    """
    if not values:
        return None, None
    try:
        joined = b"\n".join(values)  # type: ignore[arg-type]
    except TypeError:  # a null value (tombstone)
        return None, None
    if int(np.count_nonzero(np.frombuffer(joined, dtype=np.uint8) == 10)) != len(values) - 1:
        return None, None
    for used, wire in enumerate(wires):
        try:
            frame = pl.read_ndjson(io.BytesIO(joined), schema=wire)
        except (pl.exceptions.PolarsError, ValueError, OSError):
            continue
        return (frame, used) if frame.height == len(values) else (None, None)
    return None, None


def _read_ndjson_bisect(
    values: Sequence[bytes | None],
    indices: list[int],
    wire: dict[str, pl.DataType],
    chunks: list[tuple[list[int], pl.DataFrame]],
    errors: list[tuple[int, str]],
) -> None:
    """Decode ``indices`` with one strict read; on failure split in halves to find the bad values.

    Cost: one read for a clean batch; about ``bad * log2(n)`` reads otherwise.
    """
    if not indices:
        return
    picked = [values[i] for i in indices] if len(indices) != len(values) else list(values)
    joined = b"\n".join(picked)  # type: ignore[arg-type]
    if joined.count(b"\n") != len(picked) - 1:
        # a raw newline inside a JSON value can only be white space: make it a blank
        joined = b"\n".join(v.replace(b"\n", b" ").replace(b"\r", b" ") for v in picked)  # type: ignore[union-attr]
    try:
        frame = pl.read_ndjson(io.BytesIO(joined), schema=wire)
        if frame.height != len(indices):
            raise pl.exceptions.ComputeError(f"expected {len(indices)} JSON objects, read {frame.height}")
    except (pl.exceptions.PolarsError, ValueError, OSError) as exc:
        if len(indices) == 1:
            message = str(exc).split("\n", 1)[0]
            errors.append((indices[0], f"not a JSON object of the schema: {message}"))
            return
        half = len(indices) // 2
        _read_ndjson_bisect(values, indices[:half], wire, chunks, errors)
        _read_ndjson_bisect(values, indices[half:], wire, chunks, errors)
        return
    chunks.append((indices, frame))


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True)
class Raw(Format):
    """The value as it is: one column ``value`` of bytes (``as_text=False``) or UTF-8 text.

    Examples
    --------
    >>> from lockgate.engine.formats import Raw
    >>> Raw(as_text=True).decode([b"hi", None]).frame["value"].to_list()
    ['hi', None]
    """

    name: ClassVar[str] = "raw"
    as_text: bool = False
    column: str = "value"

    def value_schema(self) -> dict[str, pl.DataType]:
        return {self.column: pl.String() if self.as_text else pl.Binary()}

    def decode(self, values: Sequence[bytes | None], *, event_time: str | None = None) -> Decoded:
        return _split_times(self._decode(values), event_time)

    def _decode(self, values: Sequence[bytes | None]) -> Decoded:
        series = pl.Series(self.column, values, dtype=pl.Binary)
        errors: list[tuple[int, str]] = []
        if self.as_text:
            try:
                series = series.cast(pl.String)
            except pl.exceptions.ComputeError:  # some value is not UTF-8: find which (the rare path)
                bad = [i for i, v in enumerate(values) if v is not None and not _is_utf8(v)]
                errors = [(i, "the value is not valid UTF-8 text") for i in bad]
                skip = set(bad)
                rows = [i for i in range(len(values)) if i not in skip]
                text = pl.Series(self.column, [values[i] for i in rows], dtype=pl.Binary).cast(pl.String)
                return Decoded(text.to_frame(), rows, errors)
        return Decoded(series.to_frame(), range(len(values)), errors)

    def encode(self, frame: pl.DataFrame) -> list[bytes]:
        if frame.width != 1:
            raise PipelineDefinitionError(
                f"lg.Raw: a raw sink writes exactly one column, got {frame.columns}; select the value column first"
            )
        series = frame.to_series()
        if series.dtype == pl.String:
            series = series.cast(pl.Binary)
        return series.to_list()


@dataclass(frozen=True, init=False)
class ArrowIPC(Format):
    """Each Kafka value holds an Arrow IPC stream of many rows.

    Reading is zero-copy: the value's buffer is handed to Arrow as it is.  A sink
    writes one IPC stream per message (one per key value when the sink has a key)
    of at most ``rows_per_message`` rows and about ``max_message_bytes`` bytes, so
    that messages stay under Kafka's default 1 MB limit.

    Examples
    --------
    >>> import polars as pl
    >>> from lockgate.engine.formats import ArrowIPC
    >>> fmt = ArrowIPC(schema={"x": pl.Int64})
    >>> values = fmt.encode(pl.DataFrame({"x": [1, 2, 3]}))
    >>> len(values), fmt.decode(values).frame["x"].to_list()
    (1, [1, 2, 3])
    """

    name: ClassVar[str] = "arrow_ipc"
    schema: Mapping[str, pl.DataType] | None
    rows_per_message: int
    max_message_bytes: int

    def __init__(
        self, schema: Mapping[str, Any] | None = None, *, rows_per_message: int = 10_000, max_message_bytes: int = 900_000
    ) -> None:
        resolved = None if schema is None else {str(k): _dtype(v, str(k)) for k, v in dict(schema).items()}
        if rows_per_message < 1 or max_message_bytes < 1:
            raise PipelineDefinitionError("lg.ArrowIPC: rows_per_message and max_message_bytes must be >= 1")
        object.__setattr__(self, "schema", resolved)
        object.__setattr__(self, "rows_per_message", rows_per_message)
        object.__setattr__(self, "max_message_bytes", max_message_bytes)

    def __hash__(self) -> int:
        return hash((tuple((self.schema or {}).items()), self.rows_per_message, self.max_message_bytes))

    def value_schema(self) -> dict[str, pl.DataType]:
        if self.schema is None:
            raise PipelineDefinitionError("lg.ArrowIPC: a source needs schema={column: type, ...}")
        return dict(self.schema)

    def decode(self, values: Sequence[bytes | None], *, event_time: str | None = None) -> Decoded:
        return _split_times(self._decode(values), event_time)

    def _decode(self, values: Sequence[bytes | None]) -> Decoded:
        target = pl.Schema(self.value_schema())
        frames: list[pl.DataFrame] = []
        rows: list[int] = []
        errors: list[tuple[int, str]] = []
        for index, value in enumerate(values):  # one Kafka value holds many rows: a loop per message, not per row
            if not value:
                errors.append((index, "the value is null or empty"))
                continue
            try:
                table = pa.ipc.open_stream(pa.py_buffer(value)).read_all()
                frame = pl.from_arrow(table, rechunk=False)
                assert isinstance(frame, pl.DataFrame)
                frame = frame.select([pl.col(name).cast(dtype) for name, dtype in target.items()])
            except (pa.ArrowException, pl.exceptions.PolarsError) as exc:
                errors.append((index, f"not an Arrow IPC stream of the schema: {str(exc).splitlines()[0]}"))
                continue
            frames.append(frame)
            rows.extend([index] * frame.height)
        frame = pl.concat(frames, how="vertical", rechunk=False) if frames else pl.DataFrame(schema=target)
        return Decoded(frame, rows, errors)

    def _step(self, frame: pl.DataFrame) -> int:
        """Rows per message: at most ``rows_per_message`` and about ``max_message_bytes``."""
        per_row = frame.estimated_size() / max(frame.height, 1)
        return max(1, min(self.rows_per_message, int(self.max_message_bytes // max(per_row, 1.0))))

    def encode(self, frame: pl.DataFrame) -> list[bytes]:
        """The rows as IPC streams of about ``max_message_bytes`` each (see :meth:`encode_slices`)."""
        return [value for _, _, value in self.encode_slices(frame)]

    def encode_slices(self, frame: pl.DataFrame) -> list[tuple[int, int, bytes]]:
        """Each IPC stream with the rows it holds (start, length), in row order.

        The rows per stream come from the frame's estimated size, which can be short of
        what IPC writes (seen: 1,076,600 bytes for a 900,000-byte estimate of Nexmark
        bids, over the broker's 1 MB ``message.max.bytes``): such a stream is written
        again as two halves, until each fits or holds one row.
        """
        out = []
        step = self._step(frame)
        pending = [(start, min(step, frame.height - start)) for start in range(0, frame.height, step)][::-1]
        while pending:
            start, length = pending.pop()
            sink = io.BytesIO()
            frame.slice(start, length).write_ipc_stream(sink)
            value = sink.getvalue()
            if len(value) > self.max_message_bytes * _IPC_SLACK and length > 1:
                half = length // 2
                pending += [(start + half, length - half), (start, half)]  # the first half next: row order kept
                continue
            out.append((start, length, value))
        return out
