"""lg.Avro without a registry (bare bodies of a given schema): the columns, the rows, and only the corrupt values as dead letters."""

from __future__ import annotations

import polars as pl
import pytest

import lockgate as lg

SCHEMA = {"type": "record", "name": "click", "fields": [
    {"name": "user", "type": "string"},
    {"name": "n", "type": "long"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "page", "type": ["null", "string"], "default": None},
]}


def _rows(n: int) -> pl.DataFrame:
    return pl.DataFrame({
        "user": [f"u{i % 13}" for i in range(n)], "n": list(range(n)),
        "ts": pl.Series([1_700_000_000_000 + i for i in range(n)]).cast(pl.Datetime("ms")),
        "page": [None if i % 3 == 0 else f"/p/{i}" for i in range(n)],
    })


def test_the_source_columns_come_from_the_avro_schema_before_any_record_is_read():
    pipe = lg.Pipeline("avro-columns", brokers="unused:9092")
    clicks = pipe.source("clicks", format=lg.Avro(schema=SCHEMA), event_time="ts")
    assert {c: t for c, t in clicks.schema.items() if not c.startswith("_")} == {
        "user": pl.String, "n": pl.Int64, "ts": pl.Datetime("ms"), "page": pl.String,
    }
    with pytest.raises(lg.PipelineDefinitionError, match="no column 'missing'|missing"):
        clicks.select("missing")


def test_corrupt_values_among_good_ones_become_decode_errors_and_the_rest_decode():
    fmt = lg.Avro(schema=SCHEMA)
    frame = _rows(1_000)
    values = fmt.encode(frame)
    values[10] = values[10][:-2]          # truncated
    values[500] = b"\xff\xff\xff"          # garbage
    values[700] = None                     # a tombstone
    out = fmt.decode(values, event_time="ts")
    assert sorted(i for i, _ in out.errors) == [10, 500, 700]
    assert list(out.rows) == [i for i in range(1_000) if i not in (10, 500, 700)]
    assert out.frame.equals(frame[list(out.rows)])


def test_a_schema_the_columnar_reader_cannot_read_is_refused_when_the_format_is_made():
    with pytest.raises(lg.PipelineDefinitionError, match="'tags'.*map"):
        lg.Avro(schema={"type": "record", "name": "r", "fields": [{"name": "tags", "type": {"type": "map", "values": "string"}}]})
    with pytest.raises(lg.PipelineDefinitionError, match="registry="):
        lg.Avro()
