"""The deferred prepare's topic on a real broker (engine/prepares.py): recovery writes what LanceDB lacks, a trim deletes what it has."""

from __future__ import annotations

import confluent_kafka as ck
import lance
import pyarrow as pa
import pytest
from lockgate.engine.admin import create_topic
from lockgate.engine.prepares import prepares_topic, recover_prepares, trim_prepares
from lockgate.storage.commit_log import CommitLog, PartitionRange
from lockgate.storage.lance_io import table_uri
from lockgate.storage.materialize import materialize
from lockgate.storage.prepare_record import PrepareRecord, Reassembler, chunk_batch, chunks, decode, encode

pytestmark = pytest.mark.kafka


def _record(
    state: str, log: CommitLog, pipeline: str, batch_id: int, partition: int = 0, rows: int = 2, prev: int | None = None,
    reads: dict[int, int | None] | None = None, offset: int | None = None,
) -> PrepareRecord:
    """Batch ``batch_id``'s record: its rows of table ``views``, read from ``clicks`` partition ``partition`` after batch ``prev``.

    ``reads``: instead, each partition the batch read and the batch it follows there.
    It read ``rows`` offsets from ``offset`` (``batch_id * 10`` when not given).
    """
    views = pa.table({"n": list(range(rows)), "_lg_batch": [batch_id] * rows, "_lg_epoch": [batch_id] * rows, "_lg_order": list(range(rows))})
    reads = {partition: prev} if reads is None else reads
    first = batch_id * 10 if offset is None else offset
    ranges = [PartitionRange("clicks", p, first, first + rows) for p in sorted(reads)]
    prepare = log.prepare_rows(
        pipeline, epoch=batch_id, batch_id=batch_id, ranges=ranges, tables={"views": None},
        prev={("clicks", p): before for p, before in reads.items()},
    )
    return PrepareRecord(pipeline, batch_id, batch_id, ((table_uri(state, "views"), views),), prepare)


def _put(brokers: str, pipeline: str, records: list[PrepareRecord], *, abort: bool = False, chunk: int = 1 << 19) -> None:
    """The records in one transaction of their own, as the epochs' transactions carry them (committed, or aborted)."""
    producer = ck.Producer({"bootstrap.servers": brokers, "transactional.id": f"test-{pipeline}-{abort}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for record in records:
        for part in chunks(encode(record), record.batch_id, size=chunk):
            producer.produce(prepares_topic(pipeline), part, partition=0)
    producer.flush(30)
    (producer.abort_transaction if abort else producer.commit_transaction)(30)


def _low_watermark(brokers: str, pipeline: str) -> int:
    consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": f"wm-{pipeline}"})
    try:
        return consumer.get_watermark_offsets(ck.TopicPartition(prepares_topic(pipeline), 0), timeout=30)[0]
    finally:
        consumer.close()


def _batches(state: str) -> list[int]:
    return sorted(lance.dataset(table_uri(state, "views")).to_table().column("_lg_batch").to_pylist())


def test_recovery_writes_the_unmarked_batches_on_the_chain_the_committed_offsets_lead_to_and_nothing_else(brokers, tmp_path, unique):
    pipeline, state = f"rec-{unique}", str(tmp_path)
    log = CommitLog(state)
    options = {"bootstrap.servers": brokers}
    create_topic(options, prepares_topic(pipeline), 1)
    stale = _record(state, log, pipeline, 9)  # an earlier run's, whose state directory and group were made anew
    done = _record(state, log, pipeline, 1)
    ours, later = _record(state, log, pipeline, 2, prev=1), _record(state, log, pipeline, 3, prev=2)
    theirs = _record(state, log, pipeline, 4, partition=1)  # another instance's partition
    aborted = _record(state, log, pipeline, 5, prev=3)
    _put(brokers, pipeline, [stale])
    materialize(done, log)  # batch 1 reached LanceDB before the crash; 2 and 3 committed in Kafka only
    _put(brokers, pipeline, [done, ours, later, theirs])
    _put(brokers, pipeline, [aborted], abort=True)

    heads = {("clicks", 0): 3}  # the group's committed offset of partition 0 names batch 3
    assert recover_prepares(options, pipeline, log, heads) == [2, 3], "batch 3, then back along its chain to the marked batch 1"
    assert sorted(log.committed_batches().to_list()) == [1, 2, 3]
    assert _batches(state) == [1, 1, 2, 2, 3, 3], "never the stale batch 9, the aborted 5, or partition 1's batch 4"
    assert recover_prepares(options, pipeline, log, heads) == [], "a second recovery finds everything marked"
    assert recover_prepares(options, pipeline, log, {("clicks", 0): None}) == [], "nothing committed on the partition yet"


@pytest.mark.parametrize("first", [2, 3], ids=["partition-2-walked-first", "partition-3-walked-first"])
def test_recovery_walks_each_partitions_chain_past_a_batch_that_read_several_partitions(brokers, tmp_path, unique, first):
    # The chaos test's lost epoch: batch 3 read the end of partition 3 and the start of partition 2.  Walking
    # partition 2's chain reaches batch 3 and ends there (nothing before it on 2); partition 3's chain must still
    # be walked through batch 3 to batch 2, committed in Kafka and never marked.  Both orders of the heads.
    pipeline, state = f"multi-{unique}-{first}", str(tmp_path)
    log = CommitLog(state)
    options = {"bootstrap.servers": brokers}
    create_topic(options, prepares_topic(pipeline), 1)
    done = _record(state, log, pipeline, 1, partition=3)
    middle = _record(state, log, pipeline, 2, partition=3, prev=1)
    both = _record(state, log, pipeline, 3, reads={2: None, 3: 2})
    materialize(done, log)
    _put(brokers, pipeline, [done, middle, both])

    heads = {("clicks", 2): 3, ("clicks", 3): 3} if first == 2 else {("clicks", 3): 3, ("clicks", 2): 3}
    assert recover_prepares(options, pipeline, log, heads) == [2, 3], "batch 3, and batch 2 behind it on partition 3"
    assert sorted(log.committed_batches().to_list()) == [1, 2, 3]
    assert _batches(state) == [1, 1, 2, 2, 3, 3]


def test_a_committed_batch_whose_record_is_gone_is_named_in_an_error(brokers, tmp_path, unique, caplog):
    # Batch 3 follows batch 2 on partition 0, and 2 is neither marked nor in the topic: a loss recovery cannot
    # repair, said out loud rather than passed over.
    pipeline, state = f"gone-{unique}", str(tmp_path)
    log = CommitLog(state)
    options = {"bootstrap.servers": brokers}
    create_topic(options, prepares_topic(pipeline), 1)
    _put(brokers, pipeline, [_record(state, log, pipeline, 3, prev=2)])
    with caplog.at_level("ERROR", logger="lockgate.commit"):
        assert recover_prepares(options, pipeline, log, {("clicks", 0): 3}) == [3]
    assert "committed batch 2 in Kafka, but it is neither marked in LanceDB nor in" in caplog.text


def test_a_trim_deletes_the_records_below_the_first_unmarked_one_and_recovery_still_finds_that_one(brokers, tmp_path, unique):
    pipeline, state = f"trim-{unique}", str(tmp_path)
    log = CommitLog(state)
    options = {"bootstrap.servers": brokers}
    create_topic(options, prepares_topic(pipeline), 1, {"retention.ms": "-1"})
    assert trim_prepares(options, pipeline, log) is None, "an empty topic: nothing to delete"
    records = [_record(state, log, pipeline, b, rows=3_000, prev=b - 1 if b > 1 else None) for b in range(1, 6)]
    _put(brokers, pipeline, records[:2], abort=True)  # an aborted epoch's chunks sit below the committed ones
    _put(brokers, pipeline, records, chunk=16_384)  # several chunks per record
    for record in records[:3]:
        materialize(record, log)
    first_unmarked = trim_prepares(options, pipeline, log)
    assert first_unmarked is not None and _low_watermark(brokers, pipeline) == first_unmarked
    left = _read(brokers, pipeline)
    assert left[0].offset() == first_unmarked
    assert {chunk_batch(m.value()) for m in left} == {4, 5}, "batches 1-3 are marked: their records went; 4 and 5 stay"

    assert recover_prepares(options, pipeline, log, {("clicks", 0): 5}) == [4, 5], "recovery reads from the trimmed start"
    end = trim_prepares(options, pipeline, log)
    assert end is not None and _low_watermark(brokers, pipeline) == end and _read(brokers, pipeline) == []


def test_a_trim_deletes_an_earlier_runs_records_behind_the_marked_batches_and_keeps_a_tick_at_their_end(brokers, tmp_path, unique):
    # An earlier run's record (its state directory made anew) is never marked: it kept every record after it for
    # good.  It ended before what this run's marked batches read to, so no chain leads to it.  An epoch without
    # input (a tick) at exactly that offset is not behind it, and stays with the records after it.
    pipeline, state = f"stale-{unique}", str(tmp_path)
    log = CommitLog(state)
    options = {"bootstrap.servers": brokers}
    create_topic(options, prepares_topic(pipeline), 1, {"retention.ms": "-1"})
    stale = _record(state, log, pipeline, 9, offset=0, rows=4)  # offsets 0-4 of partition 0, an earlier run's
    done = _record(state, log, pipeline, 1, offset=0, rows=6)  # this run read 0-6 and wrote it
    tick = _record(state, log, pipeline, 2, offset=6, rows=0, prev=1)  # no input: at the committed offset 6
    later = _record(state, log, pipeline, 3, offset=6, rows=2, prev=2)
    _put(brokers, pipeline, [stale])
    _put(brokers, pipeline, [done, tick, later])
    materialize(done, log)

    kept = trim_prepares(options, pipeline, log)
    assert kept is not None and _low_watermark(brokers, pipeline) == kept
    assert [chunk_batch(m.value()) for m in _read(brokers, pipeline)] == [2, 3], "the stale 9 and the marked 1 went"
    assert recover_prepares(options, pipeline, log, {("clicks", 0): 3}) == [2, 3]


def _read(brokers: str, pipeline: str) -> list[ck.Message]:
    consumer = ck.Consumer({
        "bootstrap.servers": brokers, "group.id": f"read-{pipeline}", "isolation.level": "read_committed",
        "auto.offset.reset": "earliest", "enable.partition.eof": True,
    })
    out: list[ck.Message] = []
    try:
        consumer.assign([ck.TopicPartition(prepares_topic(pipeline), 0, ck.OFFSET_BEGINNING)])
        while True:
            msgs = consumer.consume(500, 5)
            out += [m for m in msgs if m.error() is None]
            if any(m.error() is not None and m.error().code() == ck.KafkaError._PARTITION_EOF for m in msgs) or not msgs:
                return out
    finally:
        consumer.close()


def test_a_prepare_record_round_trips_through_its_chunks_on_the_broker(brokers, tmp_path, unique):
    pipeline, state = f"chunks-{unique}", str(tmp_path)
    log = CommitLog(state)
    create_topic({"bootstrap.servers": brokers}, prepares_topic(pipeline), 1)
    record = _record(state, log, pipeline, 9, rows=50_000)
    _put(brokers, pipeline, [record], chunk=65_536)
    messages = _read(brokers, pipeline)
    assert len(messages) > 1
    parts = Reassembler()
    values = [parts.add(m.value()) for m in messages]
    assert values[:-1] == [None] * (len(messages) - 1)
    back = decode(values[-1])
    assert back.batch_id == 9 and back.tables[0][1].equals(record.tables[0][1])
