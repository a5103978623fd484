"""Avro a batch at a time: bodies written by NumPy equal fastavro's, bodies read by one call equal the rows, corruption is found."""

from __future__ import annotations

import io
import json

import fastavro
import numpy as np
import polars as pl
import pytest

from lockgate.engine import avro_codec


def _frame(n: int = 3_000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame({
        "user": [f"user-{i % 97}-é" for i in range(n)],
        "n": rng.integers(-2**62, 2**62, n),
        "small": rng.integers(-100, 100, n).astype(np.int32),
        "x": rng.random(n),
        "f": rng.random(n).astype(np.float32),
        "ok": rng.random(n) > 0.5,
        "t": pl.Series(rng.integers(0, 2**41, n)).cast(pl.Datetime("ms")),
        "day": pl.Series(rng.integers(0, 30_000, n)).cast(pl.Int32).cast(pl.Date),
        "raw": [bytes(range(i % 5)) for i in range(n)],
    })
    nulls = pl.int_range(pl.len()) % 7 == 3
    return frame.with_columns(pl.when(nulls).then(None).otherwise(pl.col(c)).alias(c) for c in ("user", "n", "x", "t", "raw"))


def test_rows_written_with_numpy_are_byte_for_byte_what_fastavro_writes():
    frame = _frame()
    schema = avro_codec.avro_schema(frame.schema, "rows")
    parsed = fastavro.parse_schema(schema)
    expected = []
    for row in frame.iter_rows(named=True):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, row)
        expected.append(b"\x00\x00\x00\x01\x2c" + out.getvalue())
    assert avro_codec.encode_rows(frame, schema, schema_id=300) == expected


def test_a_batch_of_wire_format_values_reads_back_as_the_same_rows_in_one_call():
    frame = _frame()
    schema = avro_codec.avro_schema(frame.schema, "rows")
    wire = avro_codec.split_wire(avro_codec.encode_rows(frame, schema, schema_id=12))
    assert wire.ok.all() and (wire.schema_ids == 12).all()
    got = avro_codec.read_framed(schema, wire.data, frame.height, schema_id=12)
    assert got.select(pl.col(c).cast(t) for c, t in frame.schema.items()).equals(frame)


@pytest.mark.parametrize("damage", ["truncated", "trailing bytes", "length grown"])
def test_a_corrupt_body_among_many_is_found_not_read_as_rows(damage):
    frame = _frame(500)
    schema = avro_codec.avro_schema(frame.schema, "rows")
    values = avro_codec.encode_rows(frame, schema, schema_id=5)
    v = values[100]
    values[100] = {"truncated": v[:-4], "trailing bytes": v + b"\x02\x04", "length grown": v[:5] + b"\x02\x7e" + v[7:]}[damage]
    wire = avro_codec.split_wire(values)
    with pytest.raises(ValueError):
        avro_codec.read_framed(schema, wire.data, len(values), schema_id=5)
    bare = [value[5:] for value in values]
    with pytest.raises(ValueError):
        avro_codec.read_bare(schema, bare)


def test_values_without_the_wire_format_are_told_apart_by_numpy():
    wire = avro_codec.split_wire([b"\x00\x00\x00\x00\x09abc", b"{}", None, b"\x01\x00\x00\x00\x09", b"\x00\x00\x00\x01\x00"])
    assert wire.ok.tolist() == [True, False, False, False, True]
    assert wire.schema_ids.tolist() == [9, -1, -1, -1, 256]


def _record(*fields: dict) -> dict:
    return avro_codec.parse(json.dumps({"type": "record", "name": "r", "fields": list(fields)}))


def test_the_reader_schema_adds_fields_with_their_defaults_drops_removed_ones_and_widens_ints():
    writer = _record({"name": "id", "type": "int"}, {"name": "gone", "type": "string"}, {"name": "score", "type": "float"})
    reader = _record({"name": "id", "type": "long"}, {"name": "score", "type": "double"},
                     {"name": "country", "type": "string", "default": "NL"}, {"name": "note", "type": ["null", "string"], "default": None})
    written = pl.DataFrame({"id": [1, 2], "gone": ["a", "b"], "score": [0.5, 1.5]}, schema={"id": pl.Int32, "gone": pl.String, "score": pl.Float32})
    resolution = avro_codec.resolve(writer, reader)
    assert not isinstance(resolution, str)
    got = written.select(resolution.exprs)
    assert got.schema == pl.Schema({"id": pl.Int64, "score": pl.Float64, "country": pl.String, "note": pl.String})
    assert got.rows() == [(1, 0.5, "NL", None), (2, 1.5, "NL", None)]


@pytest.mark.parametrize(("writer_field", "reader_field", "why"), [
    ({"name": "a", "type": "string"}, {"name": "b", "type": "long"}, "'b' is not in the writer schema and has no default"),
    ({"name": "a", "type": "string"}, {"name": "a", "type": "long"}, "field 'a' is string in the writer schema and long"),
    ({"name": "a", "type": "long"}, {"name": "a", "type": "int"}, "cannot promote"),
])
def test_a_writer_schema_the_reader_cannot_read_says_which_field_and_why(writer_field, reader_field, why):
    result = avro_codec.resolve(_record(writer_field), _record(reader_field))
    assert isinstance(result, str) and why in result
