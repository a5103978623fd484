"""An epoch's LanceDB rows as one Kafka record (storage/prepare_record.py): read back as written, and a clear error for anything else."""

from __future__ import annotations

import pyarrow as pa
import pytest
from lockgate.storage.prepare_record import PrepareRecord, decode, encode
from lockgate.errors import CommitError


def _record(log_rows: pa.Table | None) -> PrepareRecord:
    state = pa.table({"k": pa.array([1, 2, 3], pa.int64()), "_lg_deleted": [False, False, True]})
    empty = pa.schema([("user", pa.string()), ("_lg_batch", pa.int64())]).empty_table()
    sink = pa.table({"user": ["a"], "ts": pa.array([1_700_000_000_000], pa.timestamp("ms", tz="UTC"))})
    sink = sink.replace_schema_metadata({"lockgate.upsert_keys": '["user"]'})
    return PrepareRecord("clicks", 12, 2**62 + 5, (("s3://b/state/w.lance", state), ("/tmp/e.lance", empty), ("/tmp/views.lance", sink)), log_rows)


@pytest.mark.parametrize("log_rows", [pa.table({"kind": ["prepare", "prepare"], "partition": pa.array([0, 1], pa.int32())}), None])
def test_a_prepare_record_reads_back_every_table_with_its_schema_and_metadata(log_rows):
    record = _record(log_rows)
    back = decode(encode(record))
    assert (back.pipeline, back.epoch, back.batch_id) == ("clicks", 12, 2**62 + 5)
    assert [uri for uri, _ in back.tables] == [uri for uri, _ in record.tables]
    for (_, got), (_, sent) in zip(back.tables, record.tables, strict=True):
        assert got.equals(sent) and got.schema.equals(sent.schema, check_metadata=True)
    assert (back.log_rows is None) if log_rows is None else back.log_rows.equals(log_rows)


def test_a_value_that_is_not_a_prepare_record_is_a_clear_error():
    with pytest.raises(CommitError, match="not a lockgate prepare record.*another program"):
        decode(b'{"k": 1}')


def test_a_prepare_record_cut_short_is_a_clear_error():
    value = encode(_record(None))
    with pytest.raises(CommitError, match="cannot be read.*cut short"):
        decode(value[: len(value) // 2])


def test_state_rows_travel_compressed_and_a_record_written_without_compression_still_reads(monkeypatch):
    import lockgate.storage.prepare_record as prepare_record

    rows = pa.table({"k": [f"user-{i % 50}" for i in range(2_000)], "n": pa.array([i % 7 for i in range(2_000)], pa.int64())})
    record = PrepareRecord("clicks", 1, 9, (("/tmp/w.lance", rows),), None)
    compressed = encode(record)
    monkeypatch.setattr(prepare_record, "_WRITE", pa.ipc.IpcWriteOptions())  # as records were written before
    plain = encode(record)
    assert len(compressed) * 3 < len(plain)
    for value in (compressed, plain):
        assert decode(value).tables[0][1].equals(rows)
