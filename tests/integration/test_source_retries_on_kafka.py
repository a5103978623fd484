"""Committed offsets through a new client when the consumer keeps timing out, on the real broker."""

from __future__ import annotations

import confluent_kafka as ck
import pytest
from tests.unit.engine.test_source_retries import _Coordinator, _source


@pytest.mark.kafka
def test_committed_offsets_come_through_a_new_client_when_the_consumer_keeps_timing_out(brokers, make_topic, unique):
    topic, group = make_topic(f"offsets-{unique}", partitions=2), f"offsets-{unique}"
    committer = ck.Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    committer.commit(offsets=[ck.TopicPartition(topic, 0, 5, metadata="lockgate:9:3")], asynchronous=False)
    committer.close()
    stuck = _Coordinator(99, ck.KafkaError(ck.KafkaError._TIMED_OUT))  # as seen after a broker restart in CI
    source = _source(stuck)
    source.group, source.admin_options = group, {"bootstrap.servers": brokers}
    assert source.committed({(topic, 0), (topic, 1)}, timeout=5) == {(topic, 0): (5, "lockgate:9:3")}
    assert stuck.calls == 2  # the consumer twice, then the new client
    assert source.starts == {(topic, 0): 5, (topic, 1): None}
