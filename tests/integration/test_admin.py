"""lockgate.engine.admin: topics are created through one path, and one made meanwhile by someone else is no error."""

from __future__ import annotations

import pytest
from lockgate.engine import admin, kafka_clients


@pytest.mark.kafka
def test_create_topic_creates_once_then_finds_it(brokers, unique):
    options = {"bootstrap.servers": brokers}
    topic = f"adm-once-{unique}"
    assert admin.create_topic(options, topic, 3) is True
    assert admin.create_topic(options, topic, 3) is False
    assert admin.partition_count(options, topic) == 3


@pytest.mark.kafka
def test_a_topic_created_meanwhile_is_no_error_and_not_counted_as_created(brokers, make_topic, unique):
    """create_topic and ensure_topics share this path: the metadata said missing, the broker says TOPIC_ALREADY_EXISTS."""
    made_meanwhile = make_topic(f"adm-race-{unique}", partitions=1)
    new = f"adm-new-{unique}"
    client = kafka_clients.admin({"bootstrap.servers": brokers})
    assert admin._create(client, {made_meanwhile: 2, new: 2}, "sink topic") == [new]
    assert admin.partition_count({"bootstrap.servers": brokers}, made_meanwhile) == 1


@pytest.mark.kafka
def test_ensure_topics_creates_the_missing_sinks_as_wide_as_the_widest_source(brokers, make_topic, unique):
    options = {"bootstrap.servers": brokers}
    narrow, wide = make_topic(f"adm-src1-{unique}", partitions=1), make_topic(f"adm-src4-{unique}", partitions=4)
    existing = make_topic(f"adm-sink-old-{unique}", partitions=2)
    sink = f"adm-sink-{unique}"
    admin.ensure_topics(options, [narrow, wide], [sink, existing, sink])
    assert admin.partition_count(options, sink) == 4
    assert admin.partition_count(options, existing) == 2
