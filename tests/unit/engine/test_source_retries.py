"""The source asks Kafka again while an answer times out, and gives up at once on a fatal error."""

from __future__ import annotations

import confluent_kafka as ck
import pytest
from lockgate.engine.source import KafkaSource, _Assignment


class _Coordinator:
    """Stands in for the consumer's ``committed``: times out ``failures`` times, then answers."""

    def __init__(self, failures: int, error: ck.KafkaError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def committed(self, tps: list[ck.TopicPartition], timeout: float) -> list[ck.TopicPartition]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ck.KafkaException(self.error)
        return [ck.TopicPartition(tp.topic, tp.partition, 7, metadata="lockgate:1:1") for tp in tps]


def _source(coordinator: object) -> KafkaSource:
    source = KafkaSource.__new__(KafkaSource)  # no broker: only what the stand-in consumer answers is exercised
    source.consumer = coordinator  # type: ignore[assignment]
    source.starts, source.admin_options, source.admin = {}, None, None
    source.assignment = _Assignment()
    return source


def test_committed_offsets_are_asked_again_while_the_coordinator_times_out():
    coordinator = _Coordinator(2, ck.KafkaError(ck.KafkaError._TIMED_OUT))
    assert _source(coordinator).committed({("t", 0), ("t", 1)}) == {("t", 0): (7, "lockgate:1:1"), ("t", 1): (7, "lockgate:1:1")}
    assert coordinator.calls == 3


def test_committed_offsets_give_up_at_once_on_a_fatal_error_and_after_the_last_attempt():
    fatal = _Coordinator(1, ck.KafkaError(ck.KafkaError._FATAL, fatal=True))
    with pytest.raises(ck.KafkaException):
        _source(fatal).committed({("t", 0)})
    assert fatal.calls == 1
    stuck = _Coordinator(99, ck.KafkaError(ck.KafkaError._TIMED_OUT))
    with pytest.raises(ck.KafkaException):
        _source(stuck).committed({("t", 0)}, attempts=3)
    assert stuck.calls == 3


class _Positions:
    """Stands in for the consumer's positions and cached watermarks: nothing returned yet from partition 0."""

    def position(self, tps: list[ck.TopicPartition]) -> list[ck.TopicPartition]:
        return [ck.TopicPartition(tp.topic, tp.partition, {0: -1001, 1: 80, 2: -1001}[tp.partition]) for tp in tps]

    def get_watermark_offsets(self, tp: ck.TopicPartition, cached: bool = False) -> tuple[int, int]:
        return (10, 100)


def test_a_partition_that_returned_no_record_yet_is_read_to_its_committed_offset_else_its_first_one():
    source = _source(_Positions())
    source.assignment.owned = {("t", 0), ("t", 1), ("t", 2)}
    source.starts = {("t", 0): 40, ("t", 2): None}
    assert source.lag() == {("t", 0): 60, ("t", 1): 20, ("t", 2): 90}  # none left out while it waits for its first fetch
    assert source.backlog() == {("t", 0), ("t", 1), ("t", 2)}
    source.starts = {("t", 0): 100, ("t", 2): 100}
    assert source.backlog() == {("t", 1)}
