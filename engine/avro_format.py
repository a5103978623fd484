"""``lg.Avro``: Avro records, in the Confluent wire format with a schema registry or as bare bodies with a given schema.

A source resolves its reader schema when the pipeline is defined: the latest
schema of the subject ``<topic>-value`` (``subject=`` to choose another), or the
``schema=`` given, so operators are checked against its columns before any record
is read.  Each batch is decoded a writer schema at a time by one columnar call
(:mod:`lockgate.engine.avro_codec`), then resolved into the reader schema as Avro
does (fields added with defaults, removed fields dropped, ints widened).  A value
whose schema id the registry does not know, whose writer schema cannot be read as
the reader's, or whose body is corrupt goes to the dead letters (reasons
``schema`` and ``decode``; the schema id in the header ``lockgate.schema_id``) and
the batch goes on.  Such a group is read again one record at a time by fastavro,
to tell the corrupt bodies from the good ones.

A sink writes the stream's columns as a record schema derived from its Polars
schema (every field nullable), registered under ``<topic>-value`` when the
pipeline is defined (or found there), in the wire format.

Without a registry (``lg.Avro(schema=...)``) values are bare Avro bodies of that
schema, for topics that carry no schema id.

>>> import polars as pl
>>> fmt = Avro(schema={"type": "record", "name": "click", "fields": [{"name": "user", "type": "string"}, {"name": "n", "type": "long"}]})
>>> fmt.value_schema()
{'user': String, 'n': Int64}
>>> values = fmt.encode(pl.DataFrame({"user": ["a", "b"], "n": [1, 2]}))
>>> out = fmt.decode(values + [b"\\xff"])
>>> out.frame.to_dicts(), [i for i, _ in out.errors]
([{'user': 'a', 'n': 1}, {'user': 'b', 'n': 2}], [2])
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import polars as pl
from lockgate.engine import avro_codec, schema_registry
from lockgate.engine.formats import Decoded, Format, _split_times

from lockgate.errors import PipelineDefinitionError

__all__ = ["Avro"]

#: per (registry, writer id, reader schema): the writer schema and how its rows become the reader's (or why they cannot)
_resolutions: dict[tuple[str, int, str], tuple[dict[str, Any], avro_codec.Resolution] | str] = {}
#: per reader schema text: the parsed schema and its columns (parsed once, not per batch)
_readers: dict[str, tuple[dict[str, Any], dict[str, pl.DataType]]] = {}


def _reader(text: str) -> tuple[dict[str, Any], dict[str, pl.DataType]]:
    found = _readers.get(text)
    if found is None:
        parsed = avro_codec.parse(text)
        found = _readers[text] = (parsed, avro_codec.value_schema(parsed))
    return found


@dataclass(frozen=True, init=False)
class Avro(Format):
    """Avro records: ``lg.Avro(registry="http://host:port")`` (the Confluent wire format), or ``lg.Avro(schema=...)`` (bare bodies)."""

    name: ClassVar[str] = "avro"
    registry: str | None
    subject: str | None
    #: the reader schema of a source, the written schema of a sink (JSON text); resolved from the registry when not given
    schema: str | None
    #: the registry's id of ``schema`` (a sink writes it in every value's header)
    schema_id: int | None

    def __init__(self, registry: str | None = None, *, subject: str | None = None, schema: str | Mapping[str, Any] | None = None,
                 schema_id: int | None = None) -> None:
        if registry is None and schema is None:
            raise PipelineDefinitionError(
                "lg.Avro: give registry='http://host:port' (the Confluent wire format; `lockgate registry start` runs one) "
                "or schema={...} (values that are bare Avro bodies of that schema)"
            )
        if registry is None and subject is not None:
            raise PipelineDefinitionError("lg.Avro: subject= names a subject of a registry; give registry= too")
        text = None
        if schema is not None:
            parsed = avro_codec.parse(json.dumps(schema) if isinstance(schema, Mapping) else schema)
            avro_codec.value_schema(parsed)  # what the columnar reader cannot read is refused now
            text = json.dumps(parsed)
        object.__setattr__(self, "registry", registry.rstrip("/") if registry else None)
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "schema", text)
        object.__setattr__(self, "schema_id", schema_id)

    def __hash__(self) -> int:
        return hash((self.registry, self.subject, self.schema, self.schema_id))

    def value_schema(self) -> dict[str, pl.DataType]:
        if self.schema is None:
            raise PipelineDefinitionError("lg.Avro(registry=...): the schema comes from the registry subject when the source is defined")
        return avro_codec.value_schema(avro_codec.parse(self.schema))

    def for_source(self, topic: str) -> Avro:
        if self.registry is None or self.schema is not None:
            return self
        subject = self.subject or f"{topic}-value"
        schema_id, text = schema_registry.latest(self.registry, subject, f"source {topic!r} (lg.Avro)")
        return Avro(self.registry, subject=subject, schema=text, schema_id=schema_id)

    def for_sink(self, topic: str, columns: Mapping[str, pl.DataType], where: str) -> Avro:
        subject = self.subject or f"{topic}-value"
        derived = avro_codec.avro_schema(dict(columns), subject)
        text = json.dumps(derived)
        if self.schema is not None and json.loads(self.schema) != derived:
            raise PipelineDefinitionError(
                f"{where}: lg.Avro(schema=...) on a sink must be the schema of the stream's columns, {text}; leave schema= out"
            )
        if self.registry is None:
            return Avro(schema=text)
        schema_id = schema_registry.register(self.registry, subject, text, "AVRO", where)
        return Avro(self.registry, subject=subject, schema=text, schema_id=schema_id)

    def encode(self, frame: pl.DataFrame) -> list[bytes]:
        assert self.schema is not None, "a sink's format is resolved when the pipeline is defined (for_sink)"
        return avro_codec.encode_rows(frame, avro_codec.parse(self.schema), self.schema_id if self.registry else None)

    def decode(self, values: Sequence[bytes | None], *, event_time: str | None = None) -> Decoded:
        assert self.schema is not None, "a source's format is resolved when the pipeline is defined (for_source)"
        reader, _ = _reader(self.schema)
        if self.registry is None:
            return _split_times(self._bare(values, reader), event_time)
        return _split_times(self._framed(values, reader), event_time)

    # --- bare bodies of one schema -------------------------------------------

    def _bare(self, values: Sequence[bytes | None], reader: dict[str, Any]) -> Decoded:
        assert self.schema is not None
        target = _reader(self.schema)[1]
        if None in values:
            errors = [(i, "the value is null (a tombstone)") for i, v in enumerate(values) if v is None]
            keep = np.array([i for i, v in enumerate(values) if v is not None], dtype=np.int64)
        else:
            errors, keep = [], np.arange(len(values))
        present = [values[i] for i in keep] if errors else values
        try:
            frame = avro_codec.read_bare(reader, present)  # type: ignore[arg-type]
            return Decoded(frame.select(pl.col(c).cast(t) for c, t in target.items()), keep.tolist() if errors else range(len(values)), errors)
        except ValueError:
            frame, rows, bad = _each(reader, reader, [(int(i), values[i]) for i in keep], target)  # type: ignore[misc]
            return Decoded(frame, rows, sorted(errors + bad))

    # --- the Confluent wire format ---------------------------------------------

    def _framed(self, values: Sequence[bytes | None], reader: dict[str, Any]) -> Decoded:
        assert self.registry is not None and self.schema is not None
        target = _reader(self.schema)[1]
        fast = self._one_writer(values, reader)
        if fast is not None:
            return fast
        wire = avro_codec.split_wire(values)
        errors: list[tuple[int, str]] = []
        schema_errors: list[tuple[int, str]] = []
        if not wire.ok.all():
            errors += [(int(i), "not in the Confluent wire format (a 0 byte, a 4-byte schema id, the Avro body)" if values[i] is not None
                        else "the value is null (a tombstone)") for i in np.nonzero(~wire.ok)[0]]
        parts: list[tuple[np.ndarray | list[int], pl.DataFrame]] = []
        ids = wire.schema_ids[wire.ok]
        for schema_id in (np.unique(ids) if ids.size else ()):
            rows = np.nonzero(wire.schema_ids == schema_id)[0]
            resolved = self._resolution(int(schema_id), reader)
            if resolved is None or isinstance(resolved, str):
                why = (f"schema id {schema_id} is not in the registry at {self.registry}" if resolved is None
                       else f"the writer schema (id {schema_id}) cannot be read as the reader schema ({self.subject or 'schema='}, "
                            f"id {self.schema_id}): {resolved}")
                schema_errors += [(int(i), why) for i in rows]
                continue
            writer, resolution = resolved
            try:
                frame = avro_codec.read_framed(writer, wire.values(rows), len(rows), int(schema_id)).select(resolution.exprs)
                kept: np.ndarray | list[int] = rows
            except ValueError:  # a corrupt body among them: one record at a time, to tell which
                frame, kept, bad = _each(writer, reader, [(int(i), wire.value(int(i))[avro_codec.HEADER_BYTES:]) for i in rows], target,
                                         schema_id=int(schema_id))
                errors += bad
            if resolution.required and frame.height:
                nulls = frame.select(pl.any_horizontal(pl.col(c).is_null() for c in resolution.required)).to_series()
                if nulls.any():
                    at = np.asarray(kept)[nulls.to_numpy()]
                    schema_errors += [(int(i), f"a field the reader schema requires ({list(resolution.required)}) is null in the record "
                                               f"(writer schema id {schema_id} allows null)") for i in at]
                    frame, kept = frame.filter(~nulls), np.asarray(kept)[~nulls.to_numpy()]
            parts.append((kept, frame))
        return _assemble(parts, target, len(values), sorted(errors), sorted(schema_errors))

    def _one_writer(self, values: Sequence[bytes | None], reader: dict[str, Any]) -> Decoded | None:
        """The common case, read with no look at each value: all of them of the first one's writer schema, none bad.

        The whole batch is read as records of that schema, each with its 5-byte
        header in front; every header must then be the first one's, which proves
        that every value had the wire format and that schema id, and that no body
        was corrupt (which would shift the ones after it).  None when that does not
        hold: the caller then sorts the values out one group at a time.
        """
        first = values[0] if values else None
        if first is None or len(first) < avro_codec.HEADER_BYTES or first[0] != avro_codec.MAGIC:
            return None
        try:
            data = b"".join(values)  # type: ignore[arg-type]
        except TypeError:  # a null value (a tombstone)
            return None
        schema_id = int.from_bytes(first[1:avro_codec.HEADER_BYTES], "big")
        resolved = self._resolution(schema_id, reader)
        if not isinstance(resolved, tuple):
            return None
        writer, resolution = resolved
        try:
            frame = avro_codec.read_framed(writer, data, len(values), schema_id).select(resolution.exprs)
        except ValueError:
            return None
        if resolution.required and frame.select(pl.any_horizontal(pl.col(c).is_null().any() for c in resolution.required)).item():
            return None
        return Decoded(frame, range(len(values)))

    def _resolution(self, schema_id: int, reader: dict[str, Any]) -> tuple[dict[str, Any], avro_codec.Resolution] | str | None:
        """The writer schema of ``schema_id`` and its resolution into the reader's; why not; None while the registry does not know the id."""
        assert self.registry is not None and self.schema is not None
        key = (self.registry, schema_id, self.schema)
        if key not in _resolutions:
            text = schema_registry.schema_by_id(self.registry, schema_id)
            if text is None:
                return None  # unknown now; asked again next time (it may be registered meanwhile)
            try:
                writer = avro_codec.parse(text)
                resolution = avro_codec.resolve(writer, reader)
                _resolutions[key] = resolution if isinstance(resolution, str) else (writer, resolution)
            except PipelineDefinitionError as exc:  # a writer schema the columnar reader cannot read
                _resolutions[key] = str(exc)
        return _resolutions[key]


def _assemble(parts: list[tuple[Any, pl.DataFrame]], target: dict[str, pl.DataType], count: int,
              errors: list[tuple[int, str]], schema_errors: list[tuple[int, str]]) -> Decoded:
    """The decoded parts (rows of each writer schema) in input order."""
    if not parts:
        return Decoded(pl.DataFrame(schema=target), [], errors, [], [], schema_errors)
    if len(parts) == 1 and len(parts[0][0]) == count:
        return Decoded(parts[0][1], range(count), errors, [], [], schema_errors)
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for r, _ in parts])
    frame = pl.concat([f for _, f in parts], how="vertical")
    order = np.argsort(rows, kind="stable")
    return Decoded(frame[order], rows[order].tolist(), errors, [], [], schema_errors)


def _each(writer: dict[str, Any], reader: dict[str, Any], bodies: list[tuple[int, bytes | None]], target: dict[str, pl.DataType],
          schema_id: int | None = None) -> tuple[pl.DataFrame, list[int], list[tuple[int, str]]]:
    """The rare path: each body read alone by fastavro (with Avro's resolution), to find the corrupt ones."""
    import fastavro

    parsed_writer = fastavro.parse_schema(writer, named_schemas={})
    parsed_reader = fastavro.parse_schema(reader, named_schemas={})
    records, rows, errors = [], [], []
    of = "" if schema_id is None else f" (writer schema id {schema_id})"
    for index, body in bodies:
        if not body:
            errors.append((index, "the value is empty"))
            continue
        buffer = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(buffer, parsed_writer, parsed_reader)
            if buffer.tell() != len(body):
                raise ValueError(f"{len(body) - buffer.tell()} bytes follow the record")
        except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds on corrupt input
            errors.append((index, f"not an Avro record of the schema{of}: {type(exc).__name__}: {str(exc)[:200]}"))
            continue
        records.append(record)
        rows.append(index)
    frame = pl.DataFrame(records, schema=target) if records else pl.DataFrame(schema=target)
    return frame, rows, errors
