"""An epoch's LanceDB rows as one Kafka record, for the deferred prepare (docs/architecture.md, "Lance off the critical path").

The record goes to the pipeline's prepares topic in the epoch's Kafka transaction,
beside its outputs and offsets; once the transaction commits, the rows are written
to LanceDB (materialized), and after a crash a recovery materializes the committed
records that were not.  So the Kafka commit never waits for LanceDB, and the rows
are still durable before it.

The value: ``LGP1``, a 4-byte big-endian header length, the header (JSON: the
pipeline, the epoch, the batch id, the URI of each table), then per table an
8-byte length and the table as an Arrow IPC stream (LZ4-compressed buffers); the commit log's rows last
(their table is the commit log's, named ``null`` in the header).

>>> import pyarrow as pa
>>> record = PrepareRecord("clicks", 3, 77, (("/state/views.lance", pa.table({"n": [1, 2]})),), pa.table({"kind": ["prepare"]}))
>>> back = decode(encode(record))
>>> back.batch_id, back.tables[0][0], back.tables[0][1].column("n").to_pylist(), back.log_rows.num_rows
(77, '/state/views.lance', [1, 2], 1)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import pyarrow as pa
from lockgate.errors import CommitError

__all__ = ["CHUNK_BYTES", "PrepareRecord", "Reassembler", "chunk_batch", "chunks", "decode", "encode"]

_MAGIC = b"LGP1"
_HEADER = struct.Struct(">I")
_PART = struct.Struct(">Q")


@dataclass(frozen=True)
class PrepareRecord:
    """What an epoch writes to LanceDB: each table's rows (by table URI), then the commit log's prepare rows."""

    pipeline: str
    epoch: int
    batch_id: int
    #: (table URI, rows) for every state and sink table the epoch writes, side by side
    tables: tuple[tuple[str, pa.Table], ...]
    #: the commit log's prepare rows (one per input partition), written after the tables
    log_rows: pa.Table | None


#: the tables' buffers are LZ4-compressed: state rows shrink about 3x (less to produce, replicate and commit);
#: a reader decompresses them by itself (records written before without compression read as well)
_WRITE = pa.ipc.IpcWriteOptions(compression="lz4")


def _ipc(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_WRITE) as writer:
        writer.write_table(table)
    return sink.getvalue()


def encode(record: PrepareRecord) -> bytes:
    """The record's Kafka value (see the module docstring)."""
    parts = [table for _, table in record.tables] + ([record.log_rows] if record.log_rows is not None else [])
    header = json.dumps({
        "pipeline": record.pipeline, "epoch": record.epoch, "batch_id": record.batch_id,
        "tables": [uri for uri, _ in record.tables] + ([None] if record.log_rows is not None else []),
    }).encode()
    out = [_MAGIC, _HEADER.pack(len(header)), header]
    for table in parts:
        buf = _ipc(table)
        out += [_PART.pack(buf.size), buf.to_pybytes()]
    return b"".join(out)


def decode(value: bytes) -> PrepareRecord:
    """A record from its Kafka value; a ``CommitError`` that says what is wrong with one that is not such a record."""
    if value[:4] != _MAGIC:
        raise CommitError(f"not a lockgate prepare record (it starts {value[:4]!r}, not {_MAGIC!r}): is another program writing to the prepares topic?")
    try:
        (size,) = _HEADER.unpack_from(value, 4)
        at = 4 + _HEADER.size
        header = json.loads(value[at:at + size])
        at += size
        tables: list[tuple[str | None, pa.Table]] = []
        for uri in header["tables"]:
            (length,) = _PART.unpack_from(value, at)
            at += _PART.size
            tables.append((uri, pa.ipc.open_stream(pa.py_buffer(value[at:at + length])).read_all()))
            at += length
    except (struct.error, ValueError, KeyError, pa.ArrowInvalid) as exc:
        raise CommitError(f"a lockgate prepare record that cannot be read ({exc}): it was cut short or written by another version") from exc
    log_rows = tables.pop()[1] if tables and tables[-1][0] is None else None
    return PrepareRecord(
        header["pipeline"], int(header["epoch"]), int(header["batch_id"]),
        tuple((uri, table) for uri, table in tables if uri is not None), log_rows,
    )


_CHUNK_MAGIC = b"LGC1"
_CHUNK = struct.Struct(">qII")  # batch id, this chunk's index, the number of chunks
#: the most bytes of a record one Kafka message carries (brokers refuse messages over 1 MB by default)
CHUNK_BYTES = 512 * 1024


def chunks(value: bytes, batch_id: int, size: int = CHUNK_BYTES) -> list[bytes]:
    """``value`` cut into Kafka messages of at most ``size`` bytes of it each (a snapshot's rows can be many megabytes).

    >>> parts = chunks(b"abcdefg", 9, size=3)
    >>> len(parts), Reassembler().add(parts[0]), Reassembler().add(parts[2])
    (3, None, None)
    >>> r = Reassembler()
    >>> [r.add(p) for p in parts][-1]
    b'abcdefg'
    """
    count = max(1, -(-len(value) // size))
    return [_CHUNK_MAGIC + _CHUNK.pack(batch_id, i, count) + value[i * size:(i + 1) * size] for i in range(count)]


def chunk_batch(message: bytes) -> int:
    """The batch id a chunk of a record belongs to, read from its header alone.

    >>> chunk_batch(chunks(b"rows", 42)[0])
    42
    """
    if message[:4] != _CHUNK_MAGIC:
        raise CommitError(f"not a lockgate prepare chunk (it starts {message[:4]!r}): is another program writing to the prepares topic?")
    return int(_CHUNK.unpack_from(message, 4)[0])


class Reassembler:
    """Puts a record's chunks back together, in the order one producer wrote them to one partition."""

    def __init__(self) -> None:
        self._parts: dict[int, list[bytes]] = {}

    def add(self, message: bytes) -> bytes | None:
        """Take one chunk; the whole value once its last chunk came, else None."""
        if message[:4] != _CHUNK_MAGIC:
            raise CommitError(f"not a lockgate prepare chunk (it starts {message[:4]!r}): is another program writing to the prepares topic?")
        batch_id, index, count = _CHUNK.unpack_from(message, 4)
        parts = self._parts.setdefault(batch_id, [])
        if index != len(parts):  # a chunk of an aborted attempt never shows (read_committed): a gap is a broken record
            self._parts.pop(batch_id, None)
            if index != 0:
                return None
            parts = self._parts.setdefault(batch_id, [])
        parts.append(message[4 + _CHUNK.size:])
        if len(parts) < count:
            return None
        return b"".join(self._parts.pop(batch_id))
