"""Batch limits, and the Raw and Arrow IPC formats, end to end on the real broker."""

from __future__ import annotations

import io
import json
import random
import time

import confluent_kafka as ck
import polars as pl
import pyarrow as pa
import pytest
from lockgate.storage.commit_log import CommitLog

import lockgate as lg
from tests.conftest import produce, read_committed, same_rows

pytestmark = pytest.mark.kafka


def _batch_sizes(state: str, pipeline: str) -> list[int]:
    """Records per committed micro-batch, from the prepare records of the commit log."""
    log = CommitLog(state).frame().filter((pl.col("pipeline") == pipeline) & (pl.col("kind") == "prepare"))
    per_batch = log.group_by("batch_id").agg((pl.col("next_offset") - pl.col("first_offset")).sum().alias("n"))
    return per_batch["n"].to_list()


@pytest.mark.parametrize(
    ("policy", "limit_records"),
    [(lg.BatchPolicy(max_records=700, max_wait="200ms"), 700), (lg.BatchPolicy(max_bytes=20_000, max_wait="200ms"), 20_000 // 100)],
)
def test_a_micro_batch_never_exceeds_max_records_or_max_bytes(brokers, make_topic, state_dir, unique, policy, limit_records):
    source = make_topic(f"limits-{unique}", partitions=1)
    values = [(b'{"n": %5d, "pad": "' % i) + b"x" * 77 + b'"}' for i in range(5_000)]
    assert {len(v) for v in values} == {100}
    produce(brokers, source, values)
    pipe = lg.Pipeline(f"limits-{unique}", brokers=brokers, state=state_dir, batch=policy)
    pipe.source(source, format=lg.JSON(schema={"n": pl.Int64})).to_table("t")
    pipe.run(until="caught_up", timeout=120)
    sizes = _batch_sizes(state_dir, f"limits-{unique}")
    assert sum(sizes) == 5_000
    assert max(sizes) <= limit_records
    assert len(sizes) >= 5_000 // limit_records
    assert sorted(lg.read_table(state_dir, "t").collect()["n"].to_list()) == list(range(5_000))


def test_a_poll_hands_out_each_consume_call_as_a_chunk_that_lines_up_with_the_batch(brokers, make_topic, unique, monkeypatch):
    from lockgate.engine import source as source_module
    from lockgate.engine.config import PipelineConfig

    monkeypatch.setattr(source_module, "_CONSUME_CHUNK", 64)  # many chunks per batch, one cut by max_bytes
    topic = make_topic(f"chunks-{unique}", partitions=3)
    values = [b"%06d" % i + b"x" * 94 for i in range(3_000)]
    produce(brokers, topic, values)
    config = PipelineConfig(name=f"chunks-{unique}", brokers=brokers)
    source = source_module.KafkaSource(config.consumer_options(), [topic])
    policy = lg.BatchPolicy(max_records=1_000, max_bytes=25_050, max_wait="300ms")
    seen: list[bytes] = []
    try:
        for _ in range(200):
            raw = source.poll(policy, on_chunk=lambda chunk: chunk)
            assert raw.nbytes <= 25_050 and len(raw) <= 1_000
            assert raw.prepared is not None
            starts = [start for start, _ in raw.prepared]
            assert starts == sorted(starts) and (not starts or starts[0] == 0)
            for start, chunk in raw.prepared:
                assert raw.values[start:start + len(chunk)] == chunk.values
                assert raw.offsets[start:start + len(chunk)] == chunk.offsets
            assert sum(len(chunk) for _, chunk in raw.prepared) == len(raw)
            seen += raw.values
            if len(seen) >= len(values):
                break
    finally:
        source.close()
    assert sorted(seen) == values, "every record once: none lost or read twice at a cut"


def _ipc(frame: pl.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.write_ipc_stream(sink)
    return sink.getvalue()


def test_arrow_ipc_values_of_many_rows_flow_through_to_kafka_and_a_table(brokers, make_topic, state_dir, unique):
    source = make_topic(f"ipc-{unique}", partitions=2)
    chunks = [pl.DataFrame({"sensor": [f"s{(c * 7 + r) % 5}" for r in range(200)], "v": [float(c * 200 + r) for r in range(200)]}) for c in range(30)]
    produce(brokers, source, [_ipc(c) for c in chunks])
    everything = pl.concat(chunks)
    expected = everything.filter(pl.col("v") % 3 == 0).with_columns(double=pl.col("v") * 2)

    pipe = lg.Pipeline(f"ipc-{unique}", brokers=brokers, state=state_dir)
    readings = pipe.source(source, format=lg.ArrowIPC(schema={"sensor": pl.String, "v": pl.Float64}))
    out = readings.filter(pl.col("v") % 3 == 0).with_columns(double=pl.col("v") * 2)
    out.to_kafka(f"ipc-out-{unique}", key="sensor", format=lg.ArrowIPC())
    out.to_table("readings")
    pipe.run(until="caught_up", timeout=120)

    messages = read_committed(brokers, f"ipc-out-{unique}")
    frames = []
    for m in messages:
        frame = pl.from_arrow(pa.ipc.open_stream(m.value()).read_all())
        assert frame["sensor"].unique().to_list() == [m.key().decode()], "one message per key value"
        frames.append(frame)
    assert len(messages) < expected.height, "many rows per message"
    assert same_rows(pl.concat(frames), expected)
    assert same_rows(lg.read_table(state_dir, "readings").collect(), expected)


def test_raw_text_values_pass_through_with_kafka_metadata_columns(brokers, make_topic, state_dir, unique):
    source = make_topic(f"raw-{unique}", partitions=1)
    produce(brokers, source, [f"line {i}".encode() for i in range(100)], [f"k{i}".encode() for i in range(100)])
    pipe = lg.Pipeline(f"raw-{unique}", brokers=brokers, state=state_dir)
    lines = pipe.source(source, format=lg.Raw(as_text=True))
    lines.select("_key", "_offset", upper=pl.col("value").str.to_uppercase()).select("upper").to_kafka(f"raw-out-{unique}", format=lg.Raw())
    lines.select(key=pl.col("_key").cast(pl.String), offset="_offset", text="value").to_table("lines")
    pipe.run(until="caught_up", timeout=120)
    assert sorted(m.value() for m in read_committed(brokers, f"raw-out-{unique}")) == sorted(f"LINE {i}".encode() for i in range(100))
    table = lg.read_table(state_dir, "lines").collect().sort("offset")
    assert table["key"].to_list() == [f"k{i}" for i in range(100)]
    assert table["offset"].to_list() == list(range(100))


def test_null_and_missing_optional_fields_reach_the_output_and_records_without_id_or_event_time_reach_the_dlq_none_lost(
    brokers, make_topic, state_dir, unique
):
    rng = random.Random(3)
    base = 1_700_000_040_000  # a minute boundary: every record falls in one 1-minute window per shop
    kinds = rng.choices(
        ["ok", "null_country", "missing_optional", "missing_id", "null_id", "null_ts", "missing_ts", "bad_ts"],
        weights=[55, 15, 15, 3, 3, 3, 3, 3],
        k=2_400,
    )
    records: list[dict] = []
    for i, kind in enumerate(kinds):
        r: dict = {"id": i, "shop": f"s{i % 4}", "country": rng.choice(["NO", "SE"]), "amount": float(i % 13), "ts": base + i * 10}
        if kind == "null_country":
            r["country"] = None
        elif kind == "missing_optional":
            del r["country"], r["amount"]
        elif kind == "missing_id":
            del r["id"]
        elif kind == "null_id":
            r["id"] = None
        elif kind == "null_ts":
            r["ts"] = None
        elif kind == "missing_ts":
            del r["ts"]
        elif kind == "bad_ts":
            r["ts"] = "noon"
        records.append(r)
    values = [json.dumps(r).encode() for r in records]
    keys = [f"k{i}".encode() for i in range(len(values))]
    source = make_topic(f"orders-{unique}", partitions=3)
    produce(brokers, source, values, keys)
    where = {m.key(): (m.partition(), m.offset()) for m in read_committed(brokers, source)}
    position = [where[k] for k in keys]

    name = f"nulls-{unique}"
    pipe = lg.Pipeline(name, brokers=brokers, state=state_dir, batch=lg.BatchPolicy(max_records=500, max_wait="50ms"))
    schema = {"id": pl.Int64, "shop": pl.String, "country": pl.String, "amount": pl.Float64, "ts": pl.Datetime("ms")}
    orders = pipe.source(source, format=lg.JSON(schema=schema, required=["id"]), event_time="ts", watermark="1s", name="orders")
    orders.select("id", "country", "amount", partition="_partition", offset="_offset").to_kafka(f"{name}-out")
    orders.window(lg.Tumbling("1m"), by="shop", emit="update", name="per_shop").agg(n=pl.len(), total=pl.col("amount").sum()).to_table(
        "per_shop"
    )
    pipe.run(until="caught_up", timeout=300)

    good = [i for i, k in enumerate(kinds) if k in ("ok", "null_country", "missing_optional")]
    out = read_committed(brokers, f"{name}-out")
    dead = read_committed(brokers, f"{name}-dlq")
    out_at = {(d["partition"], d["offset"]): d for d in map(json.loads, (m.value() for m in out))}
    dead_at = {(int(dict(m.headers())["lockgate.partition"]), int(dict(m.headers())["lockgate.offset"])): m for m in dead}
    assert len(out_at) == len(out) and len(dead_at) == len(dead), "no record twice"
    assert set(out_at) | set(dead_at) == set(position) and not set(out_at) & set(dead_at), "every input offset is in the output or the DLQ"

    for i in good:  # nulls are values: the records reach the output with their nulls
        assert out_at[position[i]] == {"id": i, "country": records[i].get("country"), "amount": records[i].get("amount"),
                                       "partition": position[i][0], "offset": position[i][1]}
    for i, kind in enumerate(kinds):
        if i in good:
            continue
        m = dead_at[position[i]]
        headers = dict(m.headers())
        assert m.value() == values[i] and headers["lockgate.operator"] == b"orders"
        if kind in ("missing_id", "null_id"):
            assert headers["lockgate.reason"] == b"decode"
            assert headers["lockgate.error"] == b"column 'id' is missing or null, and lg.JSON(required=...) lists it"
        else:
            assert headers["lockgate.reason"] == b"event_time"
            expected = b"event time column 'ts': cannot parse noon" if kind == "bad_ts" else b"event time column 'ts' is missing or null"
            assert headers["lockgate.error"].startswith(expected)
    assert pipe.metrics()["dlq"][f"{name}-dlq"] == len(kinds) - len(good)

    # the window counted exactly the records with an event time: none without one reached it, none was late
    oracle = (
        pl.DataFrame([records[i] for i in good], schema={**schema, "ts": pl.Int64})
        .group_by("shop").agg(n=pl.len(), total=pl.col("amount").sum())
    )
    table = lg.read_table(state_dir, "per_shop").collect()
    assert table["window_start"].dt.epoch("ms").unique().to_list() == [base]
    assert same_rows(table.select("shop", "n", "total"), oracle.with_columns(pl.col("n").cast(table.schema["n"])))
    assert pipe.metrics()["late"] == {}


def _transaction(producer: ck.Producer, topic: str, n: int) -> None:
    producer.begin_transaction()
    for _ in range(n):
        producer.produce(topic, b"x", partition=0)
    producer.commit_transaction(30)


def test_a_topic_the_pipeline_writes_is_not_read_out_until_its_last_transaction_is(brokers, make_topic, unique):
    # A repartition topic: right after the commit of the records an epoch wrote to it, their
    # markers are still on their way and the last stable offset stands before them (147 times in
    # 200 here).  A caught-up check that trusted it stopped a run before those records were read.
    from lockgate.engine.config import PipelineConfig
    from lockgate.engine.source import KafkaSource

    topic = make_topic(f"own-{unique}", partitions=1)
    writer = ck.Producer({"bootstrap.servers": brokers, "transactional.id": f"own-{unique}"})
    writer.init_transactions(30)
    _transaction(writer, topic, 10)
    config = PipelineConfig(name=f"own-{unique}", brokers=brokers)
    source = KafkaSource(config.consumer_options(), [topic], admin_options=config.admin_options())
    policy = lg.BatchPolicy(max_records=1_000, max_wait="100ms")
    read, ends = 0, []
    try:
        for round_ in range(25):
            deadline = time.monotonic() + 30
            while not source.caught_up(ask_broker=True, verify={topic}):
                assert time.monotonic() < deadline, f"round {round_}: never caught up after reading {read} records"
                read += len(source.poll(policy))
            assert read == 10 * (round_ + 1), "caught up with every committed record read"
            _transaction(writer, topic, 10)
            ends.append(source.caught_up(ask_broker=True, verify={topic}))
            # what the group's stop check (Runner._group_read) compares the committed offsets with
            _, group_ends = source.group_offsets(own={topic})
            assert group_ends[(topic, 0)][1] >= 11 * round_ + 21, "the end counts the 10 records just committed"
    finally:
        source.close()
    assert not any(ends), f"caught up right after a commit, its records unread, in {sum(ends)} of {len(ends)} rounds"

