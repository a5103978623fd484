"""Protobuf topics with a real schema registry: an older writer read by field number, bad records to the DLQ, a sink confluent-kafka reads."""

from __future__ import annotations

import polars as pl
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import message_factory

import lockgate as lg
from lockgate.engine.protobuf_format import compile_proto
from tests.conftest import ordered_producer, read_committed

pytestmark = pytest.mark.kafka

V1 = """syntax = "proto3";
package shop;
message Order {
  int64 id = 1;
  string user = 2;
  double amount = 3;
  int64 ts = 4;
}
"""
#: the latest, the reader's: adds a field (an older writer's values read with its default)
V2 = V1.replace("  int64 ts = 4;\n", "  int64 ts = 4;\n  string country = 5;\n")
#: a writer whose field 3 is text: the reader cannot read it
CLASH = V1.replace("double amount = 3;", "string amount = 3;")


@pytest.fixture
def client(registry):
    with SchemaRegistryClient({"url": registry}) as registry_client:
        yield registry_client


def _cls(text: str):
    return message_factory.GetMessageClass(compile_proto(text).FindMessageTypeByName("shop.Order"))


def _framed(schema_id: int, message) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + b"\x00" + message.SerializeToString()


def test_a_protobuf_topic_reads_into_the_latest_schema_and_bad_records_go_to_the_dlq(brokers, registry, client, make_topic, state_dir, unique):
    topic, out = make_topic(f"porders-{unique}", partitions=2), f"pbig-{unique}"
    v1_id = client.register_schema(f"{topic}-value", Schema(V1, "PROTOBUF"))
    v2_id = client.register_schema(f"{topic}-value", Schema(V2, "PROTOBUF"))
    clash_id = client.register_schema(f"pclash-{unique}", Schema(CLASH, "PROTOBUF"))
    old, new, clash = _cls(V1), _cls(V2), _cls(CLASH)
    producer = ordered_producer(brokers)
    expected = []
    for i in range(400):
        fields = {"id": i, "user": f"u{i % 5}", "amount": float(i % 40), "ts": 1_767_225_600_000 + i}
        if i % 2:
            producer.produce(topic, _framed(v1_id, old(**fields)), partition=i % 2)
            expected.append({**fields, "country": ""})                      # proto3: the default of a field the writer did not have
        else:
            producer.produce(topic, _framed(v2_id, new(**fields, country="DE")), partition=i % 2)
            expected.append({**fields, "country": "DE"})
    bad = [
        (b"\x00\x00\x01\x86\x9f\x00\x08\x01", "schema", 99_999),                                    # an unknown schema id
        (_framed(clash_id, clash(id=1, user="x", amount="12", ts=1)), "schema", clash_id),           # field 3 of another wire kind
        (b"\x00" + v2_id.to_bytes(4, "big") + b"\x00\x0a\xff\xff\x01", "decode", v2_id),              # a corrupt message
    ]
    for value, _, _ in bad:
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0

    pipe = lg.Pipeline(f"proto-{unique}", brokers=brokers, state=state_dir)
    orders = pipe.source(topic, format=lg.Protobuf(registry=registry, message="shop.Order"), event_time="ts")
    assert [c for c in orders.schema.names() if not c.startswith("_")] == ["id", "user", "amount", "ts", "country"]
    orders.filter(pl.col("amount") >= 20).select("id", "user", "amount", "country").to_kafka(out, format=lg.Protobuf(registry=registry))
    pipe.run(until="caught_up", timeout=120)

    # the output, read by confluent-kafka's own deserializer with the class of the schema lockgate registered
    written = client.get_latest_version(f"{out}-value").schema.schema_str
    reader = ProtobufDeserializer(message_factory.GetMessageClass(next(iter(
        compile_proto(written).FindFileByName("schema.proto").message_types_by_name.values()))), {"use.deprecated.format": False})
    got = [reader(m.value(), SerializationContext(out, MessageField.VALUE)) for m in read_committed(brokers, out)]
    rows = sorted((g.id, g.user, g.amount, g.country) for g in got)
    assert rows == sorted((r["id"], r["user"], r["amount"], r["country"]) for r in expected if r["amount"] >= 20)

    dead = read_committed(brokers, f"proto-{unique}-dlq")
    headers = [dict(m.headers()) for m in dead]
    assert sorted((h["lockgate.reason"].decode(), int(h["lockgate.schema_id"])) for h in headers) == sorted((r, s) for _, r, s in bad)
    assert sorted(m.value() for m in dead) == sorted(v for v, _, _ in bad)                 # the bytes as they came, nothing lost


def test_a_protobuf_source_names_a_message_its_schema_does_not_have_at_definition(registry, client, unique):
    client.register_schema(f"pnames-{unique}-value", Schema(V1, "PROTOBUF"))
    pipe = lg.Pipeline(f"proto-names-{unique}", brokers="unused:9092")
    with pytest.raises(lg.PipelineDefinitionError, match="no message 'shop.Missing'"):
        pipe.source(f"pnames-{unique}", format=lg.Protobuf(registry=registry, message="shop.Missing"))
