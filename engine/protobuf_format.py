"""``lg.Protobuf``: Protobuf messages in the Confluent wire format, their schemas in a registry, decoded a batch at a time by ptars.

A source resolves the subject's latest schema (``<topic>-value`` unless ``subject=``)
when the pipeline is defined: the ``.proto`` text is compiled by protoc (the one
``grpcio-tools`` bundles) into descriptors, and ``message=`` names the message the
values hold; its fields are the stream's columns.  A batch is decoded by one
call of ptars (Rust: serialized messages to an Arrow record batch), which also
strips the wire format's header and message indexes.  Protobuf readers read any
writer's bytes by field number (unknown fields skipped, missing ones default),
so a writer schema is only refused when a field number the reader knows has a
type of another wire kind there (reason ``schema``, as is an id the registry does
not know).  A batch that fails to parse is read again one value at a time to
tell the corrupt ones (reason ``decode``); a message cut at a field boundary
parses (Protobuf cannot tell), as in every Protobuf reader.

A sink writes the stream's columns as a proto3 message (every field
``optional``, so nulls stay nulls), registered under ``<topic>-value`` when the
pipeline is defined; ptars encodes the batch, NumPy puts the header in front.

>>> import polars as pl
>>> proto = proto_for({"user": pl.String, "n": pl.Int64}, "clicks-value")
>>> print(proto)
syntax = "proto3";
package lockgate;
<BLANKLINE>
message clicks_value {
  optional string user = 1;
  optional int64 n = 2;
}
<BLANKLINE>
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa

from lockgate.engine import avro_codec, schema_registry
from lockgate.engine.formats import Decoded, Format, _split_times
from lockgate.errors import PipelineDefinitionError

__all__ = ["Protobuf", "compile_proto", "proto_for"]

_PROTO_TYPES: dict[Any, str] = {
    pl.Boolean: "bool", pl.Int8: "int32", pl.Int16: "int32", pl.Int32: "int32", pl.Int64: "int64",
    pl.UInt8: "uint32", pl.UInt16: "uint32", pl.UInt32: "uint32", pl.UInt64: "uint64",
    pl.Float32: "float", pl.Float64: "double", pl.String: "string", pl.Binary: "bytes",
}
#: field types by wire kind: a writer may change a field's type within one kind (Protobuf reads it), not across
_WIRE_KIND = {1: "fixed64", 6: "fixed64", 16: "fixed64", 2: "fixed32", 7: "fixed32", 15: "fixed32", 9: "len", 12: "len", 11: "len",
              3: "varint", 4: "varint", 5: "varint", 8: "varint", 13: "varint", 14: "varint", 17: "varint", 18: "varint"}
_compiled: dict[str, Any] = {}
_handlers: dict[tuple[str, str, bool], Any] = {}
_columns: dict[tuple[str, str], dict[str, pl.DataType]] = {}
#: per (registry, writer id, reader message): why its values cannot be read, or None
_writer_problems: dict[tuple[str, int, str], str | None] = {}


def proto_for(columns: Mapping[str, pl.DataType], name: str) -> str:
    """The proto3 schema a sink writes ``columns`` as: one message, every field ``optional`` (nulls stay nulls)."""
    fields = []
    for number, (column, dtype) in enumerate(dict(columns).items(), start=1):
        kind = _PROTO_TYPES.get(dtype.base_type() if hasattr(dtype, "base_type") else type(dtype))
        if kind is None:
            raise PipelineDefinitionError(
                f"to_kafka with lg.Protobuf: column {column!r} is {dtype}; a Protobuf sink writes booleans, integers, floats, "
                "strings and bytes: cast it (a datetime: pl.col(...).dt.epoch('ms'))"
            )
        if not column.isidentifier():
            raise PipelineDefinitionError(f"to_kafka with lg.Protobuf: column {column!r} is not a Protobuf field name; rename it")
        fields.append(f"  optional {kind} {column} = {number};")
    message = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "record"
    return 'syntax = "proto3";\npackage lockgate;\n\nmessage ' + message + " {\n" + "\n".join(fields) + "\n}\n"


def compile_proto(text: str) -> Any:
    """The descriptor pool of a ``.proto`` text (compiled by protoc from ``grpcio-tools``, once per text)."""
    found = _compiled.get(text)
    if found is not None:
        return found
    import grpc_tools
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="lockgate-proto-") as work:
        Path(work, "schema.proto").write_text(text)
        out = Path(work, "schema.pb")
        include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")  # the well-known types
        rc = protoc.main(["protoc", f"-I{work}", f"-I{include}", "--include_imports", f"--descriptor_set_out={out}", "schema.proto"])
        if rc != 0 or not out.exists():
            raise PipelineDefinitionError(f"lg.Protobuf: protoc cannot compile the schema (exit {rc}):\n{text[:1000]}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    _compiled[text] = pool
    return pool


def _message(text: str, name: str | None, where: str) -> Any:
    """The descriptor of message ``name`` in ``text`` (its first message when None)."""
    pool = compile_proto(text)
    if name is None:
        messages = list(pool.FindFileByName("schema.proto").message_types_by_name.values())
        if not messages:
            raise PipelineDefinitionError(f"{where}: the schema has no message")
        return messages[0]
    try:
        return pool.FindMessageTypeByName(name)
    except KeyError:
        raise PipelineDefinitionError(f"{where}: the schema has no message {name!r}; give message='<package>.<Message>'") from None


def _handler(text: str, message: str, *, framed: bool = True) -> Any:
    """ptars' handler of ``message``, once per schema: a reader's (timestamps as naive ms, enums as strings, the wire
    format's header stripped) or, ``framed=False``, a writer's of bare messages."""
    key = (text, message, framed)
    found = _handlers.get(key)
    if found is None:
        import ptars

        descriptor = _message(text, message, "lg.Protobuf")
        config = (ptars.PtarsConfig(timestamp_tz=None, timestamp_unit="ms", enum_repr="string", confluent_wire_policy="protobuf")
                  if framed else None)
        pool = ptars.HandlerPool([descriptor.file], config) if config is not None else ptars.HandlerPool([descriptor.file])
        found = _handlers[key] = pool.get_for_message(descriptor)
    return found


def _incompatible(writer: Any, reader: Any) -> str | None:
    """Why a writer message cannot be read as the reader's: a field number the reader knows with another wire kind (None: readable)."""
    written = {f.number: f for f in writer.fields}
    for field in reader.fields:
        other = written.get(field.number)
        if other is None:
            continue
        if (_WIRE_KIND.get(other.type), _repeated(other)) != (_WIRE_KIND.get(field.type), _repeated(field)):
            return f"field {field.name!r} (number {field.number}) is {other.type} in the writer schema and {field.type} in the reader's"
        if other.message_type is not None and field.message_type is not None:
            why = _incompatible(other.message_type, field.message_type)
            if why:
                return why
    return None


def _repeated(field: Any) -> bool:
    """Whether a field is repeated (upb's descriptors say ``is_repeated``; older protobuf ones only ``label``)."""
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


@dataclass(frozen=True, init=False)
class Protobuf(Format):
    """``lg.Protobuf(registry="http://host:port", message="pkg.Name")``: Protobuf in the Confluent wire format."""

    name: ClassVar[str] = "protobuf"
    registry: str
    message: str | None
    subject: str | None
    #: the reader's (a source) or the written (a sink) ``.proto`` text, from the registry
    schema: str | None
    schema_id: int | None

    def __init__(self, registry: str, *, message: str | None = None, subject: str | None = None, schema: str | None = None,
                 schema_id: int | None = None) -> None:
        if not registry:
            raise PipelineDefinitionError("lg.Protobuf: give registry='http://host:port' (`lockgate registry start` runs one)")
        object.__setattr__(self, "registry", registry.rstrip("/"))
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "schema", schema)
        object.__setattr__(self, "schema_id", schema_id)

    def __hash__(self) -> int:
        return hash((self.registry, self.message, self.subject, self.schema, self.schema_id))

    def value_schema(self) -> dict[str, pl.DataType]:
        if self.schema is None or self.message is None:
            raise PipelineDefinitionError("lg.Protobuf: the schema comes from the registry subject when the source is defined")
        key = (self.schema, self.message)
        if key not in _columns:
            empty = pl.from_arrow(_handler(self.schema, self.message).schema().empty_table())
            assert isinstance(empty, pl.DataFrame)
            _columns[key] = dict(empty.schema)
        return _columns[key]

    def for_source(self, topic: str) -> Protobuf:
        if self.schema is not None:
            return self
        subject = self.subject or f"{topic}-value"
        where = f"source {topic!r} (lg.Protobuf)"
        schema_id, text = schema_registry.latest(self.registry, subject, where)
        message = _message(text, self.message, where).full_name
        return Protobuf(self.registry, message=message, subject=subject, schema=text, schema_id=schema_id)

    def for_sink(self, topic: str, columns: Mapping[str, pl.DataType], where: str) -> Protobuf:
        subject = self.subject or f"{topic}-value"
        text = proto_for(columns, subject)
        message = _message(text, None, where).full_name
        if self.message is not None and self.message != message:
            raise PipelineDefinitionError(f"{where}: a Protobuf sink writes the message {message!r} derived from the columns; leave message= out")
        schema_id = schema_registry.register(self.registry, subject, text, "PROTOBUF", where)
        return Protobuf(self.registry, message=message, subject=subject, schema=text, schema_id=schema_id)

    def encode(self, frame: pl.DataFrame) -> list[bytes]:
        assert self.schema is not None and self.message is not None and self.schema_id is not None
        handler = _handler(self.schema, self.message, framed=False)
        table = frame.to_arrow().cast(handler.schema()).combine_chunks()
        batch = table.to_batches()[0] if frame.height else pa.RecordBatch.from_pylist([], schema=handler.schema())
        bodies = handler.record_batch_to_array(batch).cast(pa.large_binary())
        _, offsets_buf, data_buf = bodies.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[bodies.offset:bodies.offset + len(bodies) + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        # the header: magic, schema id, message indexes [0] (the first message of the schema)
        header = bytes([avro_codec.MAGIC]) + int(self.schema_id).to_bytes(4, "big") + b"\x00"
        rows = frame.height
        return avro_codec.join_pieces([avro_codec.header_piece(header, rows), (np.diff(offsets), data[offsets[0]:offsets[-1]])], rows)

    def decode(self, values: Sequence[bytes | None], *, event_time: str | None = None) -> Decoded:
        assert self.schema is not None and self.message is not None
        handler = _handler(self.schema, self.message)
        target = self.value_schema()
        wire = avro_codec.split_wire(values)
        framed = wire.ok.copy()  # and message indexes [0] (one 0 byte): the first message of the writer's schema
        framed[wire.ok] = _index_bytes(wire, wire.ok)
        errors = [(int(i), "not in the Confluent wire format for Protobuf (a 0 byte, a 4-byte schema id, message indexes, the message)"
                   if values[i] is not None else "the value is null (a tombstone)") for i in np.nonzero(~wire.ok)[0]]
        schema_errors: list[tuple[int, str]] = []
        ids = np.unique(wire.schema_ids[wire.ok])
        usable = wire.ok.copy()  # framed or not: a value naming another message is a dead letter below, never dropped
        for schema_id in ids:
            rows = np.nonzero(wire.ok & (wire.schema_ids == schema_id))[0]
            why = self._writer_problem(int(schema_id))
            if why is not None:
                schema_errors += [(int(i), why) for i in rows]
                usable[rows] = False
        other_message = np.nonzero(wire.ok & ~framed & usable)[0]
        schema_errors += [(int(i), "its message indexes name another message than the first of the writer's schema; "
                                   "lg.Protobuf reads a topic of one message type") for i in other_message]
        usable &= framed
        rows = np.nonzero(usable)[0]
        array = pa.array(values, type=pa.binary())
        if len(rows) != len(values):
            array = array.take(pa.array(rows))  # the usable ones, without a Python loop over them
        try:
            batch = handler.array_to_record_batch(array)
            frame = pl.from_arrow(batch)
            kept: list[int] | range = range(len(values)) if len(rows) == len(values) else rows.tolist()
        except Exception:  # noqa: BLE001 - a corrupt message: each value alone, to tell which
            frames, kept = [], []
            for i in rows:
                try:
                    frames.append(pl.from_arrow(handler.array_to_record_batch(pa.array([values[i]], type=pa.binary()))))
                    kept.append(int(i))
                except Exception as exc:  # noqa: BLE001
                    errors.append((int(i), f"not a Protobuf message of {self.message}: {str(exc)[:200]}"))
            frame = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=target)  # type: ignore[arg-type]
        assert isinstance(frame, pl.DataFrame)
        frame = frame.select(pl.col(c).cast(t) for c, t in target.items())
        return _split_times(Decoded(frame, kept, sorted(errors), [], [], sorted(schema_errors)), event_time)

    def _writer_problem(self, schema_id: int) -> str | None:
        """Why values of writer schema ``schema_id`` cannot be read (unknown id, an incompatible field), or None."""
        assert self.schema is not None and self.message is not None
        if schema_id == self.schema_id:
            return None
        key = (self.registry, schema_id, self.message)
        if key not in _writer_problems:
            text = schema_registry.schema_by_id(self.registry, schema_id)
            if text is None:
                return f"schema id {schema_id} is not in the registry at {self.registry}"  # asked again next time
            try:
                why = _incompatible(_message(text, None, f"writer schema id {schema_id}"), _message(self.schema, self.message, "lg.Protobuf"))
            except PipelineDefinitionError as exc:
                why = str(exc)
            _writer_problems[key] = None if why is None else f"the writer schema (id {schema_id}) cannot be read as {self.message}: {why}"
        return _writer_problems[key]


def _index_bytes(wire: avro_codec.Wire, framed: np.ndarray) -> np.ndarray:
    """Whether each framed value's message indexes are ``[0]`` (values of exactly 5 bytes have none: not framed)."""
    out = np.zeros(int(framed.sum()), dtype=bool)
    long_enough = wire.lengths[framed] > avro_codec.HEADER_BYTES
    starts = wire.starts[framed][long_enough] + avro_codec.HEADER_BYTES
    out[long_enough] = np.frombuffer(wire.data, dtype=np.uint8)[starts] == 0
    return out
