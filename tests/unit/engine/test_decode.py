"""A polled batch becomes the plan's inputs: values decoded per source, failures as dead letters, event times once."""

from __future__ import annotations

import polars as pl

import lockgate as lg
from lockgate.engine.decode import BatchDecoder
from lockgate.engine.source import RawBatch

SCHEMA = {"user": pl.String, "t": pl.Int64}


def _raw(topic: str | None, values: list[bytes], topics: list[str] | None = None) -> RawBatch:
    n = len(values)
    return RawBatch(topic=topic, topics=topics, partitions=[0] * n, offsets=list(range(n)), timestamps=[5] * n,
                    keys=[None] * n, values=values)


def test_each_topics_records_go_to_its_sources_and_failures_to_the_dead_letters_by_topic_offset_and_reason(tmp_path):
    pipe = lg.Pipeline("dec", brokers="127.0.0.1:1", state=str(tmp_path))
    pipe.source("a", format=lg.JSON(schema=SCHEMA), event_time="t").to_table("ta")
    pipe.source("b", format=lg.JSON(schema=SCHEMA)).to_table("tb")
    values = [b'{"user": "x", "t": 1}', b'{"user": "y", "t": 2}', b"{", b'{"user": "z", "t": null}']
    batch = BatchDecoder(pipe.plan()).decode(_raw(None, values, topics=["a", "b", "b", "a"]))
    assert batch.inputs["a"].select("_offset", "user").rows() == [(0, "x")]
    assert batch.inputs["b"].select("_offset", "user").rows() == [(1, "y")]
    assert batch.dead.select("_topic", "_offset", "reason", "operator").sort("_offset").rows() == [
        ("b", 2, "decode", "b"), ("a", 3, "event_time", "a"),
    ]
    assert batch.dead.filter(pl.col("_offset") == 2)["value"].to_list() == [b"{"]  # the original bytes, nothing lost
    assert batch.records_in == {"a": 2, "b": 2}
    assert set(batch.event_times) == {"a"} and batch.event_times["a"]["__lg_t"].to_list() == [1]
    assert batch.event_times_ms().tolist() == [1]


def test_chunks_decoded_on_the_decode_thread_join_into_the_same_batch(tmp_path):
    pipe = lg.Pipeline("dec", brokers="127.0.0.1:1", state=str(tmp_path))
    pipe.source("a", format=lg.JSON(schema=SCHEMA), event_time="t").to_table("ta")
    decoder = BatchDecoder(pipe.plan(), threaded=True)
    try:
        first, second = _raw("a", [b'{"user": "x", "t": 1}', b"nope"]), _raw("a", [b'{"user": "y", "t": 2}'])
        whole = RawBatch.concat([first, second], ["a"])
        prepared = RawBatch(**{**whole.__dict__, "prepared": [(0, decoder.start(first)), (2, decoder.start(second))]})
        threaded, plain = decoder.decode(prepared), BatchDecoder(pipe.plan()).decode(whole)
        assert threaded.inputs["a"].equals(plain.inputs["a"]) and threaded.dead.equals(plain.dead)
        assert threaded.inputs["a"]["user"].to_list() == ["x", "y"] and threaded.dead["_offset"].to_list() == [1]
    finally:
        decoder.close()
    assert BatchDecoder(pipe.plan()).start(first) is None, "without a decode thread nothing is decoded ahead"


def test_arrow_ipc_rows_keep_their_own_records_metadata_when_a_value_holds_two_rows_and_another_none(tmp_path):
    # as many rows as records, but not one row per record: a bad value, then a value of two rows
    fmt = lg.ArrowIPC(schema=SCHEMA)
    two = fmt.encode(pl.DataFrame({"user": ["x", "y"], "t": [1, 2]}, schema=SCHEMA))
    assert len(two) == 1
    pipe = lg.Pipeline("ipc", brokers="127.0.0.1:1", state=str(tmp_path))
    pipe.source("a", format=fmt).to_table("ta")
    batch = BatchDecoder(pipe.plan()).decode(_raw("a", [b"not arrow", two[0]]))
    assert batch.inputs["a"].select("_offset", "user").rows() == [(1, "x"), (1, "y")]
    assert batch.dead.select("_offset", "reason").rows() == [(0, "decode")]

    pipe.source("b", format=lg.JSON(schema=SCHEMA)).to_table("tb")  # two topics: the rows of "a" are picked out first
    batch = BatchDecoder(pipe.plan()).decode(_raw(None, [b"not arrow", b'{"user": "z", "t": 3}', two[0]], topics=["a", "b", "a"]))
    assert batch.inputs["a"].select("_offset", "user").rows() == [(2, "x"), (2, "y")]
    assert batch.inputs["b"].select("_offset", "user").rows() == [(1, "z")]
