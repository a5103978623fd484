"""lg.Protobuf's schemas without a registry: the proto3 a sink derives, compiled by protoc; what cannot be written is refused at definition."""

from __future__ import annotations

import polars as pl
import pytest
from google.protobuf import message_factory

import lockgate as lg
from lockgate.engine.protobuf_format import _incompatible, compile_proto, proto_for


def test_the_schema_a_sink_derives_compiles_and_keeps_nulls_apart_from_zeros():
    text = proto_for({"id": pl.Int64, "user": pl.String, "score": pl.Float32, "ok": pl.Boolean, "raw": pl.Binary}, "orders-value")
    descriptor = compile_proto(text).FindMessageTypeByName("lockgate.orders_value")
    assert [(f.name, f.number) for f in descriptor.fields] == [("id", 1), ("user", 2), ("score", 3), ("ok", 4), ("raw", 5)]
    message = message_factory.GetMessageClass(descriptor)(user="a")
    assert message.HasField("user") and not message.HasField("id")  # optional: an unset field is null, not 0


def test_columns_protobuf_cannot_hold_are_refused_naming_the_column_and_the_cast():
    with pytest.raises(lg.PipelineDefinitionError, match=r"column 'ts' is Datetime.*epoch\('ms'\)"):
        proto_for({"ts": pl.Datetime("ms")}, "t-value")
    with pytest.raises(lg.PipelineDefinitionError, match="not a Protobuf field name"):
        proto_for({"a b": pl.Int64}, "t-value")


def test_a_writer_field_of_another_wire_kind_is_incompatible_and_a_new_or_widened_one_is_not():
    base = 'syntax = "proto3";\npackage p;\nmessage M {\n  int64 id = 1;\n  %s\n}\n'
    reader = compile_proto(base % "double amount = 2;").FindMessageTypeByName("p.M")
    assert _incompatible(compile_proto(base % "string amount = 2;").FindMessageTypeByName("p.M"), reader)
    assert _incompatible(compile_proto(base % "string note = 3;").FindMessageTypeByName("p.M"), reader) is None
    widened = compile_proto(base.replace("int64 id", "int32 id") % "double amount = 2;").FindMessageTypeByName("p.M")
    assert _incompatible(widened, reader) is None  # int32 and int64 share the varint wire kind


def test_a_schema_protoc_cannot_compile_is_a_definition_error():
    with pytest.raises(lg.PipelineDefinitionError, match="protoc cannot compile"):
        compile_proto('syntax = "proto3";\nmessage {')


def test_a_value_naming_another_message_of_its_schema_is_a_schema_dead_letter_and_its_batch_goes_on():
    text = 'syntax = "proto3";\npackage p;\nmessage M {\n  int64 id = 1;\n}\nmessage N {\n  string s = 1;\n}\n'
    fmt = lg.Protobuf("http://unused:1", message="p.M", schema=text, schema_id=7)  # its own id: no registry call
    body = message_factory.GetMessageClass(compile_proto(text).FindMessageTypeByName("p.M"))(id=5).SerializeToString()
    header = b"\x00" + (7).to_bytes(4, "big")
    out = fmt.decode([header + b"\x00" + body, header + b"\x02\x02" + body, header + b"\x00" + body])  # [0], [1], [0]
    assert out.frame.get_column("id").to_list() == [5, 5] and list(out.rows) == [0, 2]
    assert [i for i, _ in out.schema_errors] == [1] and "another message" in out.schema_errors[0][1]
    assert not out.errors
