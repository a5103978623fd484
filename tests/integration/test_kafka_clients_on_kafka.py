"""Kafka clients built by lockgate against the real broker: partition EOF events and the admin client."""

from __future__ import annotations

import time

import confluent_kafka as ck
import pytest
from confluent_kafka.admin import AdminClient
from lockgate.engine import kafka_clients


@pytest.mark.kafka
def test_partition_eof_events_come_only_to_a_consumer_that_asks_for_them(brokers, make_topic, unique):
    topic = make_topic(f"kc-eof-{unique}", partitions=1)
    got = {}
    for asked in (True, False):
        consumer = kafka_clients.consumer({"bootstrap.servers": brokers, "group.id": f"kc-{unique}"}, partition_eof=asked)
        consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])
        messages, deadline = [], time.monotonic() + (10 if asked else 3)
        while not messages and time.monotonic() < deadline:
            messages = consumer.consume(10, 0.2)
        consumer.close()
        got[asked] = [m.error().code() for m in messages if m.error() is not None]
    assert got == {True: [ck.KafkaError._PARTITION_EOF], False: []}


@pytest.mark.kafka
def test_an_admin_client_answers_as_confluent_kafka_s_own(brokers, make_topic, unique):
    topic = make_topic(f"kc-admin-{unique}", partitions=3)
    admin = kafka_clients.admin({"bootstrap.servers": brokers})
    assert isinstance(admin, AdminClient)
    assert len(admin.list_topics(topic, timeout=30).topics[topic].partitions) == 3
    described = admin.describe_topics(ck.TopicCollection([topic]), request_timeout=30)[topic].result(30)
    assert len(described.partitions) == 3
