"""Avro bodies a batch at a time: the Confluent wire format split with NumPy, bodies read by one columnar call, rows written by NumPy.

Reading: the values of a batch are joined into one buffer; NumPy reads each
value's magic byte and schema id there (the Confluent wire format: ``0``, a 4-byte
big-endian schema id, the Avro body) without a Python call per record.  The
values that share a writer schema become one block of an in-memory Avro object
container file, which ``pl.read_avro`` reads in one call, the header read as a
5-byte ``fixed`` field (:func:`read_framed`); the reader schema is then applied
column by column (:func:`resolve`).  Writing: each column becomes its Avro encoding per row
(zig-zag varints, IEEE floats, length-prefixed bytes) as NumPy arrays, and the
columns are interleaved into row bodies by one scatter (:func:`encode_rows`).

>>> import polars as pl
>>> frame = pl.DataFrame({"user": ["a", None], "n": [1, -300]})
>>> schema = avro_schema(frame.schema, "clicks")
>>> values = encode_rows(frame, schema, schema_id=7)
>>> values[0][:5], len(values)
(b'\\x00\\x00\\x00\\x00\\x07', 2)
>>> wire = split_wire(values)
>>> wire.schema_ids.tolist(), wire.ok.tolist()
([7, 7], [True, True])
>>> read_framed(schema, wire.data, 2, schema_id=7).to_dicts()
[{'user': 'a', 'n': 1}, {'user': None, 'n': -300}]
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from lockgate.errors import PipelineDefinitionError

MAGIC = 0
HEADER_BYTES = 5
_SYNC = os.urandom(16)

_PRIMITIVES: dict[str, pl.DataType] = {
    "boolean": pl.Boolean(), "int": pl.Int32(), "long": pl.Int64(), "float": pl.Float32(), "double": pl.Float64(),
    "string": pl.String(), "bytes": pl.Binary(),
}
_LOGICAL: dict[tuple[str, str], pl.DataType] = {
    ("int", "date"): pl.Date(),
    # timestamps read as naive datetimes in UTC (what pl.read_avro gives, and lockgate's event-time convention)
    ("long", "timestamp-millis"): pl.Datetime("ms"), ("long", "timestamp-micros"): pl.Datetime("us"),
    ("long", "local-timestamp-millis"): pl.Datetime("ms"), ("long", "local-timestamp-micros"): pl.Datetime("us"),
}
#: writer type -> the reader types it may be read as (Avro's promotion rules)
_PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"}, "string": {"bytes"}, "bytes": {"string"}}


# --- schemas -------------------------------------------------------------------


def parse(schema: str | dict[str, Any]) -> dict[str, Any]:
    """An Avro record schema as a dict (from its JSON text)."""
    parsed = json.loads(schema) if isinstance(schema, str) else schema
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise PipelineDefinitionError(f"lg.Avro: the schema must be an Avro record (a JSON object with \"type\": \"record\"), got {str(schema)[:200]}")
    return parsed


def _nullable(avro_type: Any) -> tuple[Any, bool]:
    """A field's type without its ``null`` branch, and whether it had one."""
    if isinstance(avro_type, list):
        rest = [t for t in avro_type if t != "null"]
        if len(rest) == 1:
            return rest[0], len(rest) < len(avro_type)
    return avro_type, False


def polars_type(avro_type: Any, where: str) -> pl.DataType:
    """The Polars type a field of ``avro_type`` decodes to; a clear error for what Polars cannot read (maps, unions of several types)."""
    avro_type, _ = _nullable(avro_type)
    if isinstance(avro_type, str):
        if avro_type in _PRIMITIVES:
            return _PRIMITIVES[avro_type]
        raise PipelineDefinitionError(f"lg.Avro: {where} has the type {avro_type!r}; named types referenced by name are not supported, inline them")
    if isinstance(avro_type, list):
        raise PipelineDefinitionError(f"lg.Avro: {where} is a union of {avro_type}; only [\"null\", T] unions are supported")
    kind = avro_type.get("type")
    logical = avro_type.get("logicalType")
    if logical is not None and (kind, logical) in _LOGICAL:
        return _LOGICAL[(kind, logical)]
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "enum":
        return pl.String()
    if kind == "fixed":
        return pl.Binary()
    if kind == "array":
        return pl.List(polars_type(avro_type["items"], f"{where}[]"))
    if kind == "record":
        return pl.Struct({f["name"]: polars_type(f["type"], f"{where}.{f['name']}") for f in avro_type["fields"]})
    raise PipelineDefinitionError(
        f"lg.Avro: {where} has the type {kind!r}, which the columnar reader does not read (maps among them); "
        "make it an array of records or a string"
    )


def value_schema(schema: dict[str, Any]) -> dict[str, pl.DataType]:
    """The columns a record schema decodes to.

    >>> value_schema(parse('{"type": "record", "name": "r", "fields": [{"name": "id", "type": "long"},'
    ...                    ' {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}'))
    {'id': Int64, 'ts': Datetime(time_unit='ms', time_zone=None)}
    """
    return {f["name"]: polars_type(f["type"], f"field {f['name']!r}") for f in schema["fields"]}


def avro_schema(schema: pl.Schema | dict[str, pl.DataType], name: str) -> dict[str, Any]:
    """The Avro record schema a sink writes a stream of ``schema`` as: every field nullable (``["null", T]``, default null).

    >>> avro_schema({"id": pl.Int64, "t": pl.Datetime("ms")}, "orders-value")["fields"][1]
    {'name': 't', 'type': ['null', {'type': 'long', 'logicalType': 'timestamp-millis'}], 'default': None}
    """
    fields = []
    for column, dtype in dict(schema).items():
        fields.append({"name": column, "type": ["null", _avro_type(dtype, column)], "default": None})
    record = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "record"
    return {"type": "record", "name": record if not record[0].isdigit() else f"r_{record}", "namespace": "lockgate", "fields": fields}


def _avro_type(dtype: pl.DataType, column: str) -> Any:
    if dtype == pl.Boolean:
        return "boolean"
    if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16):
        return "int"
    if dtype in (pl.Int64, pl.UInt32):
        return "long"
    if dtype == pl.Float32:
        return "float"
    if dtype == pl.Float64:
        return "double"
    if dtype in (pl.String, pl.Categorical, pl.Enum):
        return "string"
    if dtype == pl.Binary:
        return "bytes"
    if dtype == pl.Date:
        return {"type": "int", "logicalType": "date"}
    if isinstance(dtype, pl.Datetime):  # naive datetimes are UTC, as event times are here
        return {"type": "long", "logicalType": "timestamp-millis" if dtype.time_unit == "ms" else "timestamp-micros"}
    raise PipelineDefinitionError(
        f"to_kafka with lg.Avro: column {column!r} is {dtype}; an Avro sink writes flat records of booleans, integers up to "
        "Int64, floats, strings, bytes, dates and datetimes: cast it, or pl.col(...).struct.json_encode() it into a string"
    )


# --- the wire format ----------------------------------------------------------


@dataclass(frozen=True)
class Wire:
    """A batch of values joined into one buffer, with each value's place, framing and schema id (no Python call per value).

    ``ok[i]``: value i is in the Confluent wire format (not null, magic byte 0, a
    header); ``schema_ids[i]`` its schema id (-1 when not ok).
    """

    data: bytes
    starts: np.ndarray
    lengths: np.ndarray
    ok: np.ndarray
    schema_ids: np.ndarray

    def values(self, rows: np.ndarray) -> bytes:
        """The values of ``rows`` concatenated (the buffer itself when they are all of it)."""
        if len(rows) == len(self.starts) and (len(rows) == 0 or bool((np.diff(rows) == 1).all())):
            return self.data
        return _gather(np.frombuffer(self.data, dtype=np.uint8), self.starts[rows], self.lengths[rows]).tobytes()

    def value(self, row: int) -> bytes:
        start = int(self.starts[row])
        return self.data[start:start + int(self.lengths[row])]


def split_wire(values: Sequence[bytes | None]) -> Wire:
    """Join a batch's values and read each one's magic byte and schema id with NumPy."""
    try:
        data = b"".join(values)  # type: ignore[arg-type]
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))  # type: ignore[arg-type]
        valid = np.ones(len(values), dtype=bool)
    except TypeError:  # null values (tombstones) among them: the rare path
        valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        data = b"".join(v for v in values if v is not None)
        lengths = np.fromiter((0 if v is None else len(v) for v in values), dtype=np.int64, count=len(values))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if len(values) else np.zeros(0, np.int64)
    buffer = np.frombuffer(data, dtype=np.uint8)
    ok = valid & (lengths >= HEADER_BYTES)
    if buffer.size:
        ok &= buffer[np.where(ok, starts, 0)] == MAGIC
    ids = np.full(len(values), -1, dtype=np.int64)
    if ok.any():
        header = buffer[starts[ok][:, None] + np.arange(1, HEADER_BYTES)].astype(np.int64)
        ids[ok] = (header[:, 0] << 24) | (header[:, 1] << 16) | (header[:, 2] << 8) | header[:, 3]
    return Wire(data, starts, lengths, ok, ids)


def _gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``data[s:s+n]`` for each (s, n), concatenated, by one fancy index."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.uint8)
    shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return data[np.arange(total) + shift]


# --- reading ------------------------------------------------------------------


def _long(value: int) -> bytes:
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _container(schema_text: str, bodies: bytes, count: int) -> bytes:
    """An in-memory Avro object container file: the header with ``schema_text``, one block of ``count`` bodies."""
    meta = [(b"avro.schema", schema_text.encode()), (b"avro.codec", b"null")]
    head = bytearray(b"Obj\x01")
    head += _long(len(meta))
    for key, value in meta:
        head += _long(len(key)) + key + _long(len(value)) + value
    head += _long(0) + _SYNC
    return bytes(head) + _long(count) + _long(len(bodies)) + bodies + _SYNC


def read_bodies(schema: dict[str, Any] | str, data: bytes, count: int) -> pl.DataFrame:
    """The records of ``count`` concatenated Avro bodies (all written with ``schema``), read by one ``pl.read_avro`` call.

    Raises ``ValueError`` when they do not read as ``count`` records (Polars' reader
    panics on some inputs, which is caught here too).
    """
    text = schema if isinstance(schema, str) else json.dumps(schema)
    try:
        frame = pl.read_avro(io.BytesIO(_container(text, data, count)))
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ValueError(f"the bodies do not read as {count} records of the writer schema: {str(exc).splitlines()[0][:200]}") from None
    if frame.height != count:
        raise ValueError(f"the bodies read as {frame.height} records, not {count}")
    return frame


def read_framed(schema: dict[str, Any], data: bytes, count: int, schema_id: int) -> pl.DataFrame:
    """``count`` whole wire-format values (header and body) of one writer schema, read by one call.

    The 5-byte header is read as a ``fixed`` field put in front of the writer's
    fields, so the values need no copy to strip it; every record's header must then
    be the one expected, which also proves the records stayed aligned (a corrupt
    body shifts the ones after it).  Raises ``ValueError`` otherwise.
    """
    framed = {**schema, "fields": [{"name": _FRAME, "type": {"type": "fixed", "size": HEADER_BYTES, "name": "lockgate_wire_header"}},
                                   *schema["fields"]]}
    frame = read_bodies(framed, data, count)
    expected = bytes([MAGIC]) + int(schema_id).to_bytes(4, "big")
    if not frame.select((pl.col(_FRAME) == pl.lit(expected, dtype=pl.Binary)).all()).item():
        raise ValueError("a record did not end where the next value begins")
    return frame.drop(_FRAME)


_FRAME = "__lg_wire_header"


@dataclass(frozen=True)
class Resolution:
    """How rows written with one schema become rows of the reader schema (Avro schema resolution, column by column)."""

    exprs: tuple[pl.Expr, ...]
    #: reader columns that must not be null but may be in the writer's rows (a nullable writer field read as a non-null one)
    required: tuple[str, ...] = ()


def resolve(writer: dict[str, Any], reader: dict[str, Any]) -> Resolution | str:
    """The expressions that turn a frame read with ``writer`` into the reader's columns, or why the writer is incompatible.

    >>> w = parse('{"type": "record", "name": "r", "fields": [{"name": "id", "type": "int"}, {"name": "old", "type": "string"}]}')
    >>> r = parse('{"type": "record", "name": "r", "fields": [{"name": "id", "type": "long"}, {"name": "new", "type": "string", "default": "-"}]}')
    >>> pl.DataFrame({"id": [1], "old": ["x"]}, schema={"id": pl.Int32, "old": pl.String}).select(resolve(w, r).exprs).to_dicts()
    [{'id': 1, 'new': '-'}]
    >>> resolve(w, parse('{"type": "record", "name": "r", "fields": [{"name": "n", "type": "long"}]}'))
    "the reader's field 'n' is not in the writer schema and has no default"
    """
    written = {f["name"]: f for f in writer["fields"]}
    exprs, required = [], []
    for field in reader["fields"]:
        name = field["name"]
        target = polars_type(field["type"], f"field {name!r}")
        reader_type, reader_nullable = _nullable(field["type"])
        if name not in written:
            if "default" not in field:
                return f"the reader's field {name!r} is not in the writer schema and has no default"
            exprs.append(pl.lit(field["default"], dtype=target).alias(name))
            continue
        writer_type, writer_nullable = _nullable(written[name]["type"])
        why = _promotable(writer_type, reader_type, name)
        if why:
            return why
        if writer_nullable and not reader_nullable:
            required.append(name)
        exprs.append(pl.col(name).cast(target).alias(name))
    return Resolution(tuple(exprs), tuple(required))


def _kind_logical(avro_type: Any) -> str | None:
    return None if isinstance(avro_type, str) else avro_type.get("logicalType")


def _kind(avro_type: Any) -> str:
    return avro_type if isinstance(avro_type, str) else str(avro_type.get("type"))


def _promotable(writer_type: Any, reader_type: Any, name: str) -> str | None:
    w, r = _kind(writer_type), _kind(reader_type)
    if w == r:
        if w in ("record", "array", "enum", "fixed") and json.dumps(writer_type, sort_keys=True) != json.dumps(reader_type, sort_keys=True):
            if w == "record":
                return None if _records_compatible(writer_type, reader_type) else f"field {name!r}: the writer's record type cannot be read as the reader's"
            if w == "array":
                return _promotable(writer_type["items"], reader_type["items"], f"{name}[]")
            if w == "enum" and set(writer_type.get("symbols", [])) <= set(reader_type.get("symbols", [])):
                return None
            return f"field {name!r}: the writer's {w} type differs from the reader's"
        return None
    if r in _PROMOTIONS.get(w, set()):
        return None
    return f"field {name!r} is {w} in the writer schema and {r} in the reader schema, which Avro cannot promote"


def _records_compatible(writer: dict[str, Any], reader: dict[str, Any]) -> bool:
    result = resolve(writer, reader)
    return not isinstance(result, str) and all(
        _kind(_nullable(f["type"])[0]) == _kind(_nullable({g["name"]: g for g in writer["fields"]}.get(f["name"], f)["type"])[0])
        for f in reader["fields"]
    )


# --- writing ------------------------------------------------------------------


def _zigzag_varints(values: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Avro longs (zig-zag varints) of ``values`` where ``present``: (bytes per row, the bytes in row order)."""
    v = values.astype(np.int64, copy=False)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    n = np.ones(len(z), dtype=np.int64)
    for k in range(1, 10):
        n += z >= np.uint64(1) << np.uint64(7 * k)
    n = np.where(present, n, 0)
    width = int(n.max()) if len(n) else 0
    if width == 0:
        return n, np.zeros(0, np.uint8)
    k = np.arange(width, dtype=np.uint64)
    groups = (z[:, None] >> (np.uint64(7) * k)) & np.uint64(0x7F)
    more = (np.arange(width)[None, :] < (n[:, None] - 1)).astype(np.uint64) << np.uint64(7)
    table = (groups | more).astype(np.uint8)
    return n, table[np.arange(width)[None, :] < n[:, None]]


def _fixed(values: np.ndarray, present: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), width)
    return np.where(present, width, 0).astype(np.int64), raw[present].reshape(-1)


def _pieces(series: pl.Series, avro_type: Any, nullable: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """One column's Avro encoding per row, as pieces (bytes per row, bytes in row order) to interleave."""
    present = series.is_not_null().to_numpy()
    out = []
    if nullable:  # the union's branch: 0 null, 1 (zig-zag 2) the value
        out.append((np.ones(len(series), np.int64), np.where(present, 2, 0).astype(np.uint8)))
    kind = _kind(avro_type)
    dtype = series.dtype
    if kind == "boolean":
        out.append(_fixed(series.fill_null(False).cast(pl.UInt8).to_numpy(), present, 1))
    elif kind in ("int", "long"):
        if isinstance(dtype, pl.Datetime):
            unit = "ms" if _kind_logical(avro_type) == "timestamp-millis" else "us"
            series = series.dt.replace_time_zone(None) if dtype.time_zone is None else series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            series = series.dt.cast_time_unit(unit).to_physical()
        elif dtype == pl.Date:
            series = series.to_physical()
        out.append(_zigzag_varints(series.fill_null(0).cast(pl.Int64).to_numpy(), present))
    elif kind == "float":
        out.append(_fixed(series.fill_null(0).cast(pl.Float32).to_numpy().astype("<f4"), present, 4))
    elif kind == "double":
        out.append(_fixed(series.fill_null(0).cast(pl.Float64).to_numpy().astype("<f8"), present, 8))
    else:  # string, bytes: a long length, then the bytes
        binary = series.cast(pl.String).cast(pl.Binary) if kind == "string" and dtype != pl.Binary else series.cast(pl.Binary)
        array = binary.fill_null(b"").to_arrow().cast(pa.large_binary())
        _, offsets_buf, data_buf = array.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset:array.offset + len(array) + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        out.append(_zigzag_varints(lengths, present))
        out.append((np.where(present, lengths, 0), _gather(data, offsets[:-1][present], lengths[present])))
    return out


def _interleave(pieces: list[tuple[np.ndarray, np.ndarray]], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Row r's bytes = piece 0's bytes of row r, then piece 1's, ...: one buffer and the row offsets, by one scatter per piece."""
    lengths = np.stack([p[0] for p in pieces]) if pieces else np.zeros((0, rows), np.int64)
    row_offsets = np.concatenate(([0], np.cumsum(lengths.sum(axis=0)))).astype(np.int64)
    out = np.empty(int(row_offsets[-1]), dtype=np.uint8)
    before = np.concatenate((np.zeros((1, rows), np.int64), np.cumsum(lengths, axis=0)[:-1]))  # bytes of earlier pieces in the row
    for (piece_lengths, data), prior in zip(pieces, before, strict=True):
        if data.size == 0:
            continue
        at = row_offsets[:-1] + prior
        into = np.repeat(at - np.concatenate(([0], np.cumsum(piece_lengths)[:-1])), piece_lengths) + np.arange(data.size)
        out[into] = data
    return out, row_offsets


def header_piece(header: bytes, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The same ``header`` in front of each of ``rows`` rows: a piece for :func:`join_pieces`."""
    return np.full(rows, len(header), np.int64), np.tile(np.frombuffer(header, dtype=np.uint8), rows)


def join_pieces(pieces: list[tuple[np.ndarray, np.ndarray]], rows: int) -> list[bytes]:
    """Kafka values: row r's is its bytes of each piece in turn (one NumPy scatter per piece, one Arrow array to bytes).

    >>> join_pieces([header_piece(b"H", 2), (np.array([1, 2]), np.frombuffer(b"abc", dtype=np.uint8))], 2)
    [b'Ha', b'Hbc']
    """
    out, row_offsets = _interleave(pieces, rows)
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), rows, [None, pa.py_buffer(row_offsets), pa.py_buffer(out)]).to_pylist()


def encode_rows(frame: pl.DataFrame, schema: dict[str, Any], schema_id: int | None = None) -> list[bytes]:
    """Each row of ``frame`` as an Avro body of the flat record ``schema``, in the wire format when ``schema_id`` is given."""
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    rows = frame.height
    if schema_id is not None:
        pieces.append(header_piece(bytes([MAGIC]) + int(schema_id).to_bytes(4, "big"), rows))
    for field in schema["fields"]:
        avro_type, nullable = _nullable(field["type"])
        series = frame.get_column(field["name"])
        if not nullable and series.null_count():
            raise ValueError(f"column {field['name']!r} has nulls, and the Avro schema's field {field['name']!r} is not nullable")
        pieces.extend(_pieces(series, avro_type, nullable))
    return join_pieces(pieces, rows)


def read_bare(schema: dict[str, Any], values: Sequence[bytes]) -> pl.DataFrame:
    """Bare Avro bodies of ``schema`` (no header), read by one call; ``ValueError`` when one of them is corrupt.

    Each body is given its length as an Avro ``long`` in front (one NumPy scatter),
    read as a first field: a record that ends anywhere but where the next body
    begins makes the next length wrong, so corruption is found, not read as rows.
    """
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    data = np.frombuffer(b"".join(values), dtype=np.uint8)
    prefix = _zigzag_varints(lengths, np.ones(len(values), dtype=bool))
    out, _ = _interleave([prefix, (lengths, data)], len(values))
    framed = {**schema, "fields": [{"name": _LENGTH, "type": "long"}, *schema["fields"]]}
    frame = read_bodies(framed, out.tobytes(), len(values))
    if not (frame.get_column(_LENGTH).to_numpy() == lengths).all():
        raise ValueError("a record did not end where the next value begins")
    return frame.drop(_LENGTH)


_LENGTH = "__lg_body_length"
