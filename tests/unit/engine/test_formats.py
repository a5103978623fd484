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
    out = lg.JSON(schema=SCHEMA, required=["n"]).decode([good, value, good])
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


def test_json_null_and_missing_keys_are_null_values_in_every_column_type():
    schema = {"user": pl.String, "n": pl.Int64, "x": pl.Float64, "ts": pl.Datetime("ms"), "day": pl.Date}
    values = [
        b'{"user": null, "n": null, "x": null, "ts": null, "day": null}',
        b"{}",
        b'{"user": "a", "n": 1, "x": 0.5, "ts": 7, "day": 1}',
        b'{"user": "b", "ts": "2024-01-01T00:00:00Z"}',
    ]
    out = lg.JSON(schema=schema).decode(values)
    assert out.errors == [] and out.bad_times == []
    assert list(out.rows) == [0, 1, 2, 3]
    assert out.frame.schema == pl.Schema(schema)
    assert out.frame.select("user", "n", "x").rows() == [(None, None, None), (None, None, None), ("a", 1, 0.5), ("b", None, None)]
    assert out.frame["ts"].null_count() == 2 and out.frame["day"].null_count() == 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "id": st.one_of(st.none(), st.integers(-(2**40), 2**40)),
                "country": st.one_of(st.none(), st.sampled_from(["NO", "SE", ""])),
                "amount": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
            },
        ),
        max_size=40,
    )
)
def test_json_decodes_records_with_any_nulls_as_polars_does_and_dead_letters_only_those_without_a_required_id(records):
    schema = {"id": pl.Int64, "country": pl.String, "amount": pl.Float64}
    out = lg.JSON(schema=schema, required=["id"]).decode([json.dumps(r).encode() for r in records])
    oracle = pl.DataFrame([{k: r.get(k) for k in schema} for r in records], schema=schema)  # a Polars batch read
    keep = [i for i, r in enumerate(records) if r.get("id") is not None]
    assert list(out.rows) == keep
    assert out.frame.equals(oracle[keep])
    assert [i for i, _ in out.errors] == [i for i in range(len(records)) if i not in keep]
    assert all(m == "column 'id' is missing or null, and lg.JSON(required=...) lists it" for _, m in out.errors)


def test_json_required_columns_must_be_present_and_not_null_and_the_error_names_the_column():
    fmt = lg.JSON(schema={"id": pl.Int64, "user": pl.String, "note": pl.String}, required=["id", "user"])
    out = fmt.decode([b'{"id": 1, "user": "a"}', b'{"user": "b", "note": "x"}', b'{"id": 3, "user": null}', b'{"id": 4, "user": "d", "note": null}'])
    assert out.frame.to_dicts() == [{"id": 1, "user": "a", "note": None}, {"id": 4, "user": "d", "note": None}]
    assert out.errors == [
        (1, "column 'id' is missing or null, and lg.JSON(required=...) lists it"),
        (2, "column 'user' is missing or null, and lg.JSON(required=...) lists it"),
    ]
    assert lg.JSON(schema={"id": pl.Int64}, required="id").required == frozenset({"id"}), "one name as a string"


@pytest.mark.parametrize(
    ("dtype", "ts", "fragment"),
    [
        (pl.Datetime("ms"), b"null", "event time column 'ts' is missing or null"),
        (pl.Datetime("ms"), None, "event time column 'ts' is missing or null"),
        (pl.Datetime("ms"), b'"noon"', "event time column 'ts': cannot parse noon as Datetime"),
        (pl.Datetime("ms", "Europe/Oslo"), b'"noon"', "event time column 'ts': cannot parse noon as Datetime"),
        (pl.Int64, b"null", "event time column 'ts' is missing or null"),
        (pl.Int64, None, "event time column 'ts' is missing or null"),
        (pl.Int64, b'"noon"', "event time column 'ts': cannot parse noon as Int64"),
        (pl.Int64, b"1.5", "event time column 'ts': cannot parse 1.5 as Int64"),
    ],
)
@pytest.mark.parametrize("listed", [False, True])
def test_json_a_missing_null_or_unparsable_event_time_is_a_bad_time_and_never_a_row(dtype, ts, fragment, listed):
    fmt = lg.JSON(schema={"id": pl.Int64, "ts": dtype}, required=["ts"] if listed else [])
    bad = b'{"id": 2}' if ts is None else b'{"id": 2, "ts": ' + ts + b"}"
    for _ in range(2):  # a Datetime is read as integer epochs first, then (after a batch that needed text) as text
        out = fmt.decode([b'{"id": 1, "ts": 1700000000000}', bad, b'{"id": 3, "ts": 1700000000001}'], event_time="ts")
        assert out.frame["id"].to_list() == [1, 3] and list(out.rows) == [0, 2]
        assert out.errors == []
        assert [i for i, _ in out.bad_times] == [1]
        assert fragment in out.bad_times[0][1]
        assert out.frame.schema["ts"] == dtype


def test_json_a_record_that_does_not_decode_is_a_decode_error_even_when_its_event_time_is_also_bad():
    fmt = lg.JSON(schema={"id": pl.Int64, "ts": pl.Datetime("ms")}, required=["id"])
    out = fmt.decode([b'{"ts": null}', b'{"id": "x", "ts": "noon"}', b'{"id": 3}', b"oops"], event_time="ts")
    assert [i for i, _ in out.errors] == [0, 1, 3]
    assert out.bad_times == [(2, "event time column 'ts' is missing or null")]
    assert out.frame.height == 0


def test_json_an_event_time_column_without_event_time_given_is_an_ordinary_nullable_column():
    out = lg.JSON(schema={"id": pl.Int64, "ts": pl.Int64}).decode([b'{"id": 1}', b'{"id": 2, "ts": null}'])
    assert out.frame["ts"].to_list() == [None, None] and out.errors == [] and out.bad_times == []


def test_json_reads_a_clean_batch_with_an_integer_event_time_in_one_read_of_its_integers(monkeypatch):
    schemas = _spy_reads(monkeypatch)
    values = [json.dumps({"id": i, "ts": 1_700_000_000_000 + i}).encode() for i in range(1000)]
    out = lg.JSON(schema={"id": pl.Int64, "ts": pl.Int64}).decode(values, event_time="ts")
    assert [s["ts"] for s in schemas] == [pl.Int64], "no text read, no parse: a clean batch costs what it did"
    assert out.frame["ts"].to_list() == [1_700_000_000_000 + i for i in range(1000)]
    assert out.bad_times == [] and isinstance(out.rows, range)


def test_json_a_bad_integer_event_time_leaves_the_next_clean_batches_read_as_integers(monkeypatch):
    fmt = lg.JSON(schema={"id": pl.Int64, "ts": pl.Int64})
    bad = fmt.decode([b'{"id": 1, "ts": "noon"}', b'{"id": 2, "ts": 5}'], event_time="ts")
    assert [i for i, _ in bad.bad_times] == [0]
    schemas = _spy_reads(monkeypatch)
    fmt.decode([b'{"id": 3, "ts": 6}'], event_time="ts")
    assert [s["ts"] for s in schemas] == [pl.Int64], "a bad record is not a stream of text: no text reads for a while"


def test_arrow_ipc_a_value_with_a_row_without_event_time_goes_whole_to_the_bad_times():
    schema = {"x": pl.Int64, "ts": pl.Datetime("ms")}
    fmt = lg.ArrowIPC(schema=schema, rows_per_message=2)
    values = fmt.encode(pl.DataFrame({"x": [1, 2, 3, 4, 5], "ts": [1, None, 3, 4, None]}, schema=schema))
    out = fmt.decode(values, event_time="ts")
    assert out.frame["x"].to_list() == [3, 4] and out.rows == [1, 1]
    assert out.bad_times == [
        (0, "event time column 'ts' is null in 1 of the value's 2 rows"),
        (2, "event time column 'ts' is missing or null"),
    ]
    assert fmt.decode(values).frame.height == 5, "without an event time every row is kept"


def test_passing_nullable_is_a_definition_error_that_names_required_as_the_fix():
    with pytest.raises(lg.PipelineDefinitionError, match=r"nullable= was removed.*required=\['id', 'user'\]\) keeps what nullable=\['note'\] meant"):
        lg.JSON(schema={"id": pl.Int64, "user": pl.String, "note": pl.String}, nullable=["note"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'requierd'"):
        lg.JSON(schema={"id": pl.Int64}, requierd=["id"])


def test_required_naming_a_column_not_in_the_schema_is_a_definition_error_naming_it():
    with pytest.raises(lg.PipelineDefinitionError, match=r"required= names 'idd', which is not a schema column; the schema has \['id'\]"):
        lg.JSON(schema={"id": pl.Int64}, required=["id", "idd"])
    with pytest.raises(lg.PipelineDefinitionError, match="required= names 'id'"):
        lg.JSON(required=["id"])


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
            values.append(b"{{" + payload)  # never JSON (b"{" + b"}" was an empty object, which is valid)
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

    fmt = lg.JSON(schema={"n": pl.Int64, "ts": pl.Int64})
    values = [(json.dumps({"n": i, "ts": i if i % 5 else None}).encode() if i % 7 else b"bad") for i in range(50)]
    whole = fmt.decode(values, event_time="ts")
    assert whole.errors and whole.bad_times
    for size in (1, 9, 25, 50):
        parts = [(start, fmt.decode(values[start:start + size], event_time="ts")) for start in range(0, 50, size)]
        joined = concat_decoded(parts)
        assert list(joined.rows) == list(whole.rows)
        assert joined.errors == whole.errors
        assert joined.bad_times == whole.bad_times
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


def test_an_arrow_ipc_stream_larger_than_its_estimate_is_split_until_each_value_fits(monkeypatch):
    from lockgate.engine.formats import ArrowIPC

    fmt = ArrowIPC(schema={"url": pl.String, "n": pl.Int64}, max_message_bytes=20_000)
    frame = pl.DataFrame({"url": [f"https://www.nexmark.com/channel-{i}/item.htm?query=1" for i in range(5_000)], "n": range(5_000)})
    monkeypatch.setattr(ArrowIPC, "_step", lambda self, frame: frame.height)  # an estimate far short of what IPC writes
    values = fmt.encode(frame)
    assert len(values) > 10 and max(map(len, values)) <= 20_000 * 1.1
    assert fmt.decode(values).frame.equals(frame)


def test_a_repartition_value_with_a_mark_after_a_split_holds_each_row_once(monkeypatch):
    from lockgate.engine.formats import ArrowIPC
    from lockgate.engine.repartition import RepartitionFormat

    fmt = RepartitionFormat(schema={"url": pl.String, "n": pl.Int64}, max_message_bytes=20_000)
    frame = pl.DataFrame({"url": [f"https://www.nexmark.com/channel-{i}/item.htm?query=1" for i in range(5_000)], "n": range(5_000)})
    monkeypatch.setattr(ArrowIPC, "_step", lambda self, frame: frame.height)
    decoded = fmt.decode(fmt.encode_partition(frame, mark=b'{"p": {}}'))
    assert decoded.frame["n"].to_list() == list(range(5_000))
    assert len(decoded.marks) == 1
