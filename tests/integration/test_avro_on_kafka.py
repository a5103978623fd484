"""Avro topics with a real schema registry: evolution into the reader schema, bad records to the DLQ, an Avro sink that confluent-kafka reads."""

from __future__ import annotations

import io
import json

import fastavro
import polars as pl
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import lockgate as lg
from tests.conftest import ordered_producer, read_committed

pytestmark = pytest.mark.kafka

TS = {"type": "long", "logicalType": "timestamp-millis"}
BASE = 1_767_225_600_000
V1 = {"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"}, {"name": "user", "type": "string"}, {"name": "amount", "type": "double"}, {"name": "ts", "type": TS},
]}
#: the newer schema, the subject's latest: the reader's.  It adds a field with a default (a backward-compatible change)
V2 = {**V1, "fields": [*V1["fields"], {"name": "country", "type": "string", "default": "NL"}]}
#: a writer with a field the reader does not have (dropped), registered under another subject
EXTRA = {**V2, "fields": [*V2["fields"], {"name": "coupon", "type": ["null", "string"], "default": None}]}
#: a writer whose amount is text: the reader cannot read it
CLASH = {**V1, "fields": [{"name": "id", "type": "long"}, {"name": "user", "type": "string"}, {"name": "amount", "type": "string"},
                          {"name": "ts", "type": TS}]}


@pytest.fixture
def client(registry):
    """confluent-kafka's own registry client (closed at the end: its HTTP connections would warn)."""
    with SchemaRegistryClient({"url": registry}) as registry_client:
        yield registry_client


def _framed(schema_id: int, schema: dict, record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema, named_schemas={}), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + out.getvalue()


def test_an_avro_topic_of_several_writer_schemas_reads_into_the_reader_schema_and_bad_records_go_to_the_dlq(
    brokers, registry, client, make_topic, state_dir, unique
):
    topic, out = make_topic(f"orders-{unique}", partitions=2), f"big-orders-{unique}"
    ctx = SerializationContext(topic, MessageField.VALUE)
    v1 = AvroSerializer(client, json.dumps(V1))
    v2 = AvroSerializer(client, json.dumps(V2))   # registers V2 under <topic>-value after V1: the latest, the reader's
    extra_id = client.register_schema(f"extra-{unique}", Schema(json.dumps(EXTRA), "AVRO"))
    clash_id = client.register_schema(f"clash-{unique}", Schema(json.dumps(CLASH), "AVRO"))

    def order(i: int) -> dict:
        return {"id": i, "user": f"u{i % 7}", "amount": float(i % 50), "ts": BASE + i * 10}

    producer = ordered_producer(brokers)
    good: list[dict] = []
    bad: dict[int, tuple[str, int]] = {}  # id -> (reason, schema id)
    for i in range(600):
        record = order(i)
        if i % 3 == 0:
            value = v1(record, ctx)                                  # older writer: country gets the reader's default
            good.append({**record, "country": "NL"})
        elif i % 3 == 1:
            value = v2({**record, "country": "BE"}, ctx)
            good.append({**record, "country": "BE"})
        else:
            value = _framed(extra_id, EXTRA, {**record, "country": "FR", "coupon": "x"})   # coupon is dropped
            good.append({**record, "country": "FR"})
        producer.produce(topic, value, key=str(i).encode(), partition=i % 2)
    v2_id = client.get_latest_version(f"{topic}-value").schema_id
    for i, (value, reason, sid) in enumerate([
        (b"\x00\x00\x01\x86\x9f" + b"\x02", "schema", 99_999),                                              # an unknown schema id
        (_framed(clash_id, CLASH, {"id": 1, "user": "x", "amount": "12", "ts": BASE}), "schema", clash_id),  # incompatible
        (b"\x00" + v2_id.to_bytes(4, "big") + b"\x02\x02\x61\xff\xff", "decode", v2_id),                    # a corrupt body
    ]):
        producer.produce(topic, value, key=b"bad", partition=i % 2)
        bad[sid] = (reason, sid)
    producer.produce(topic, b'{"id": 1}', key=b"bad", partition=0)                                           # not Avro at all
    assert producer.flush(30) == 0

    pipe = lg.Pipeline(f"avro-{unique}", brokers=brokers, state=state_dir)
    orders = pipe.source(topic, format=lg.Avro(registry=registry), event_time="ts")
    assert [c for c in orders.schema.names() if not c.startswith("_")] == ["id", "user", "amount", "ts", "country"]
    orders.filter(pl.col("amount") >= 25).select("id", "user", "amount", "country", "ts").to_kafka(out, key="user", format=lg.Avro(registry=registry))
    pipe.run(until="caught_up", timeout=120)

    # the output: the wire format, its schema registered under <out>-value, read by confluent-kafka's own deserializer
    reader = AvroDeserializer(client)
    got = [reader(m.value(), SerializationContext(out, MessageField.VALUE)) for m in read_committed(brokers, out)]
    expected = [r for r in good if r["amount"] >= 25]
    key = lambda r: r["id"]  # noqa: E731
    assert len(got) == len(expected)
    assert [{**r, "ts": int(r["ts"].timestamp() * 1000)} for r in sorted(got, key=key)] == sorted(expected, key=key)
    assert client.get_latest_version(f"{out}-value").schema_id > 0

    # lockgate reads what it wrote (one writer schema: the whole batch in one read), and a corrupt body among them is found
    out_id = client.get_latest_version(f"{out}-value").schema_id
    producer = ordered_producer(brokers)
    producer.produce(out, b"\x00" + out_id.to_bytes(4, "big") + b"\x02\x08", key=b"u1")
    assert producer.flush(30) == 0
    again = lg.Pipeline(f"avro-again-{unique}", brokers=brokers, state=state_dir)
    again.source(out, format=lg.Avro(registry=registry), event_time="ts").select("id", "country").to_table("read_back")
    again.run(until="caught_up", timeout=120)
    read_back = lg.read_table(state_dir, "read_back").collect()
    assert sorted(read_back.rows()) == sorted((r["id"], r["country"]) for r in expected)
    assert [dict(m.headers())["lockgate.reason"] for m in read_committed(brokers, f"avro-again-{unique}-dlq")] == [b"decode"]

    # the dead letters: every bad record, none lost, each with its reason and the schema id its header named
    dead = read_committed(brokers, f"avro-{unique}-dlq")
    headers = [dict(m.headers()) for m in dead]
    assert len(dead) == 4
    framed = sorted((h["lockgate.reason"].decode(), int(h["lockgate.schema_id"])) for h in headers if "lockgate.schema_id" in h)
    assert framed == sorted(bad.values())
    unframed = [h for h in headers if "lockgate.schema_id" not in h]
    assert [h["lockgate.reason"] for h in unframed] == [b"decode"]
    assert b"wire format" in unframed[0]["lockgate.error"]
    errors = {int(h["lockgate.schema_id"]): h["lockgate.error"].decode() for h in headers if "lockgate.schema_id" in h}
    assert "not in the registry" in errors[99_999] and "'amount'" in errors[clash_id] and "not an Avro record" in errors[v2_id]


def test_a_source_of_a_subject_the_registry_does_not_have_is_a_definition_error_naming_it(registry, unique):
    pipe = lg.Pipeline(f"avro-missing-{unique}", brokers="unused:9092")
    with pytest.raises(lg.PipelineDefinitionError, match=f"no subject 'nothing-{unique}-value'"):
        pipe.source(f"nothing-{unique}", format=lg.Avro(registry=registry))
