"""Formats decode whole batches in one call and name every value that does not decode."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lockgate as lg

SCHEMA = {"user": pl.String, "n": pl.Int64, "x": pl.Float64, "ts": pl.Datetime("ms")}


def test_json_decodes_a_clean_batch_with_one_read_and_keeps_input_order():
    values = [json.dumps({"user": f"u{i}", "n": i, "x": i / 2, "ts": 1_700_000_000_000 + i}).encode() for i in range(1000)]
    out = lg.JSON(schema=SCHEMA).decode(values)
    assert out.errors == []
    assert list(out.rows) == list(range(1000))
    assert out.frame["n"].to_list() == list(range(1000))
    assert out.frame.schema == pl.Schema(SCHEMA)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b'{"user": "a", "n": 1, "x": 1.0, "ts": 1', "not a JSON object"),
        (b'{"user": "a", "n": "seven", "x": 1.0, "ts": 1}', "cannot parse 'seven'"),
        (b'{"user": "a", "n": 1.5, "x": 1.0, "ts": 1}', "as Int64"),
        (b'{"user": "a", "x": 1.0, "ts": 1}', "column 'n' is missing"),
        (b'{"user": "a", "n": 1, "x": 1.0, "ts": "noon"}', "column 'ts': cannot parse noon"),
        (b"[1, 2]", "not a JSON object"),
        (b"", "empty"),
        (None, "tombstone"),
        (b'{"user": "\xff", "n": 1, "x": 1.0, "ts": 1}', "not a JSON object"),
    ],
)
def test_json_sends_each_bad_value_to_the_errors_with_a_reason(value, fragment):
    good = b'{"user": "a", "n": 1, "x": 1.0, "ts": 1700000000000}'
    out = lg.JSON(schema=SCHEMA).decode([good, value, good])
    assert out.rows == [0, 2]
    assert [i for i, _ in out.errors] == [1]
    assert fragment in out.errors[0][1]
    assert out.frame.height == 2


def test_json_reads_integer_epochs_and_iso_text_for_datetimes():
    values = [
        b'{"user": "a", "n": 1, "x": 1, "ts": 1700000000123}',
        b'{"user": "a", "n": 1, "x": 1, "ts": "2024-01-01T00:00:00Z"}',
        b'{"user": "a", "n": 1, "x": 1, "ts": "2024-01-01T01:00:00.5+01:00"}',
        b'{"user": "a", "n": 1, "x": 1, "ts": "2024-01-01 00:00:00.250"}',
    ]
    out = lg.JSON(schema=SCHEMA).decode(values)
    assert out.errors == []
    assert out.frame["ts"].to_list() == [
        datetime(2023, 11, 14, 22, 13, 20, 123000),
        datetime(2024, 1, 1),
        datetime(2024, 1, 1, 0, 0, 0, 500000),
        datetime(2024, 1, 1, 0, 0, 0, 250000),
    ]


def test_json_nullable_columns_may_be_missing_and_others_may_not():
    fmt = lg.JSON(schema={"user": pl.String, "note": pl.String}, nullable=["note"])
    out = fmt.decode([b'{"user": "a"}', b'{"note": "x"}'])
    assert out.frame.to_dicts() == [{"user": "a", "note": None}]
    assert out.errors[0][0] == 1


def test_json_treats_a_raw_newline_inside_a_value_as_white_space():
    out = lg.JSON(schema={"user": pl.String}).decode([b'{"user":\n "a"}', b'{"user": "b"}'])
    assert out.frame["user"].to_list() == ["a", "b"]
    assert out.errors == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.integers(-(2**40), 2**40).map(lambda n: ("ok", n)), st.binary(max_size=12).map(lambda b: ("junk", b))), max_size=60))
def test_json_bisection_finds_exactly_the_bad_values_in_any_mix(items):
    values, expected_good = [], []
    for i, (kind, payload) in enumerate(items):
        if kind == "ok":
            values.append(json.dumps({"n": payload}).encode())
            expected_good.append(i)
        else:
            values.append(b"{" + payload)  # never a JSON object
    out = lg.JSON(schema={"n": pl.Int64}).decode(values)
    assert list(out.rows) == expected_good
    assert sorted(i for i, _ in out.errors) == [i for i in range(len(values)) if i not in expected_good]
    assert out.frame["n"].to_list() == [items[i][1] for i in expected_good]


def test_json_sink_encodes_one_object_per_row_and_round_trips():
    frame = pl.DataFrame({"user": ["a", "b"], "n": [1, None]})
    values = lg.JSON().encode(frame)
    assert [json.loads(v) for v in values] == [{"user": "a", "n": 1}, {"user": "b", "n": None}]


def test_raw_gives_bytes_or_text_and_rejects_invalid_utf8_as_text():
    assert lg.Raw().decode([b"\xff", b"a"]).frame["value"].to_list() == [b"\xff", b"a"]
    out = lg.Raw(as_text=True).decode([b"\xff", b"a"])
    assert out.frame["value"].to_list() == ["a"]
    assert out.errors == [(0, "the value is not valid UTF-8 text")]


def test_arrow_ipc_values_hold_many_rows_and_are_read_without_copying():
    frame = pl.DataFrame({"x": list(range(25)), "s": [str(i) for i in range(25)]})
    fmt = lg.ArrowIPC(schema={"x": pl.Int64, "s": pl.String}, rows_per_message=10)
    values = fmt.encode(frame)
    assert len(values) == 3
    out = fmt.decode(values + [b"not arrow"])
    assert out.frame.equals(frame)
    assert out.rows == [0] * 10 + [1] * 10 + [2] * 5
    assert out.errors[0][0] == 3
    # zero-copy: the Arrow buffers point into the Kafka value's memory
    value = values[0]
    table = pa.ipc.open_stream(pa.py_buffer(value)).read_all()
    address = table.column("x").chunk(0).buffers()[1].address
    base = pa.py_buffer(value).address
    assert base <= address < base + len(value)


def test_a_source_needs_a_schema_to_decode_json():
    pipe = lg.Pipeline("fmt-noschema", brokers="127.0.0.1:1")
    with pytest.raises(lg.PipelineDefinitionError, match="needs schema"):
        pipe.source("t", format=lg.JSON())


def test_reading_ndjson_is_one_polars_call_per_clean_batch(monkeypatch):
    calls = []
    real = pl.read_ndjson

    def counting(source, **kw):
        calls.append(1)
        return real(source, **kw)

    monkeypatch.setattr(pl, "read_ndjson", counting)
    values = [json.dumps({"n": i}).encode() for i in range(5000)]
    lg.JSON(schema={"n": pl.Int64}).decode(values)
    assert len(calls) == 1


def test_arrow_ipc_sink_keeps_messages_under_the_byte_limit():
    frame = pl.DataFrame({"s": ["x" * 200] * 20_000})
    values = lg.ArrowIPC(max_message_bytes=500_000).encode(frame)
    assert len(values) > 1
    assert max(len(v) for v in values) <= 600_000  # the estimate plus IPC framing
    assert sum(pl.read_ipc_stream(v).height for v in values) == 20_000


def test_json_never_pairs_rows_with_the_wrong_values_when_a_value_holds_two_lines_and_another_none():
    # one value holds two objects on two lines and another is blank: the joined text
    # has as many lines as values, so only the newline count tells that they do not line up
    values = [b'{"n": 1}', b'{"n": 2}\n{"n": 3}', b"  ", b'{"n": 4}']
    out = lg.JSON(schema={"n": pl.Int64}).decode(values)
    assert dict(zip(out.rows, out.frame["n"].to_list(), strict=True)) == {0: 1, 3: 4}
    assert sorted(i for i, _ in out.errors) == [1, 2]


def test_json_parses_integer_epochs_in_one_pass_and_other_forms_only_when_a_value_needs_them(monkeypatch):
    calls = []
    real = pl.Expr.str

    class Spy:
        def __init__(self, expr):
            self.ns = real.__get__(expr)

        def __getattr__(self, name):
            calls.append(name)
            return getattr(self.ns, name)

    monkeypatch.setattr(pl.Expr, "str", property(Spy))
    fmt = lg.JSON(schema={"ts": pl.Datetime("ms", "Europe/Berlin"), "day": pl.Date})
    out = fmt.decode([b'{"ts": 1700000000123, "day": 19000}', b'{"ts": 0, "day": 1}'])
    assert "to_datetime" not in calls and "to_date" not in calls
    assert out.frame["ts"].to_list()[1] == datetime(1970, 1, 1, 1, tzinfo=out.frame["ts"].to_list()[1].tzinfo)
    assert out.frame["day"].to_list() == [datetime(2022, 1, 8).date(), datetime(1970, 1, 2).date()]
    calls.clear()
    out = fmt.decode([b'{"ts": 1700000000123, "day": "2024-02-29"}', b'{"ts": "1970-01-01T00:00:00Z", "day": 1}'])
    assert out.errors == []
    assert "to_datetime" in calls and "to_date" in calls
    assert out.frame["day"].to_list() == [datetime(2024, 2, 29).date(), datetime(1970, 1, 2).date()]
    assert out.frame["ts"].dt.replace_time_zone(None).to_list()[1] == datetime(1970, 1, 1, 1)


def test_decoded_chunks_join_into_the_decoding_of_the_whole_batch():
    from lockgate.engine.formats import concat_decoded

    fmt = lg.JSON(schema={"n": pl.Int64})
    values = [json.dumps({"n": i}).encode() if i % 7 else b"bad" for i in range(50)]
    whole = fmt.decode(values)
    for size in (1, 9, 25, 50):
        parts = [(start, fmt.decode(values[start:start + size])) for start in range(0, 50, size)]
        joined = concat_decoded(parts)
        assert list(joined.rows) == list(whole.rows)
        assert joined.errors == whole.errors
        assert joined.frame.equals(whole.frame)


def _spy_reads(monkeypatch) -> list[dict]:
    """The schemas of every pl.read_ndjson call from now on."""
    schemas: list[dict] = []
    real = pl.read_ndjson

    def spying(source, **kw):
        schemas.append(dict(kw["schema"]))
        return real(source, **kw)

    monkeypatch.setattr(pl, "read_ndjson", spying)
    return schemas


def test_json_reads_integer_epochs_as_integers_without_a_text_pass(monkeypatch):
    schemas = _spy_reads(monkeypatch)
    values = [json.dumps({"user": "a", "n": i, "x": 0.5, "ts": 1_700_000_000_000 + i}).encode() for i in range(100)]
    out = lg.JSON(schema=SCHEMA).decode(values)
    assert [s["ts"] for s in schemas] == [pl.Int64]  # one read, the epochs as numbers: no formatting them as text
    assert out.frame["ts"].dt.epoch("ms").to_list() == [1_700_000_000_000 + i for i in range(100)]
    assert out.frame.schema == pl.Schema(SCHEMA)


def test_json_reads_iso_batches_as_text_and_tries_integer_epochs_again_later(monkeypatch):
    from lockgate.engine.formats import _EpochHint

    schemas = _spy_reads(monkeypatch)
    fmt = lg.JSON(schema={"ts": pl.Datetime("ms")})
    iso = [b'{"ts": "2024-01-01T00:00:00Z"}', b'{"ts": 5}']
    assert fmt.decode(iso).frame["ts"].to_list() == [datetime(2024, 1, 1), datetime(1970, 1, 1, 0, 0, 0, 5000)]
    assert [s["ts"] for s in schemas] == [pl.Int64, pl.String]  # the epoch read refused the text, the text read took it
    schemas.clear()
    for _ in range(_EpochHint.TEXT_FOR):
        fmt.decode(iso)
    assert [s["ts"] for s in schemas] == [pl.String] * _EpochHint.TEXT_FOR  # no wasted epoch read for a while
    schemas.clear()
    assert fmt.decode([b'{"ts": 7}']).frame["ts"].dt.epoch("ms").to_list() == [7]
    assert [s["ts"] for s in schemas] == [pl.Int64]  # then epochs again


@pytest.mark.parametrize("ts", [b'"12"', b"1e3", b"true", b"1.5", b"[1]", b"99999999999999999999", b"null"])
def test_json_decodes_any_time_value_as_the_text_reading_does(ts):
    from lockgate.engine.formats import _EpochHint

    fmt = lg.JSON(schema={"ts": pl.Datetime("ms")})
    text_only = lg.JSON(schema={"ts": pl.Datetime("ms")})
    text_only._epochs.outcome(False)  # reads as text for the next batches
    values = [b'{"ts": 1}', b'{"ts": ' + ts + b"}"]
    got, expected = fmt.decode(values), text_only.decode(values)
    assert text_only._epochs.text_left == _EpochHint.TEXT_FOR - 1
    assert got.frame.equals(expected.frame)
    assert list(got.rows) == list(expected.rows)
    assert got.errors == expected.errors
