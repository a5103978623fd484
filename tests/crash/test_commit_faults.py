"""Faults in the commit path on the real broker: a hung commit and a transaction timed out while the instance stalled are redone exactly once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from lockgate.engine import commit
from lockgate.engine.transaction import TransactionalProducer

import lockgate as lg
from tests.conftest import same_rows
from tests.integration.test_windows_on_kafka import build, make_events, oracle_minutes, produce_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]  # a fault, a new producer and a redo: seconds to tens of seconds


def _redone_exactly_once_with_one_new_producer(
    brokers: str, make_topic: Any, state_dir: str, name: str, seed: int, faulted: list[str], **options: Any
) -> None:
    """Run the windows pipeline over fresh events with the test's fault patched in: one abort, one new producer, exact."""
    events = make_events(6_000, seed=seed)
    topic = make_topic(name, partitions=4)
    produce_events(brokers, topic, events)
    pipe = build(name, brokers, state_dir, topic, batch=lg.BatchPolicy(max_records=1_000), **options)
    pipe.run(until="caught_up", timeout=240)

    metrics = pipe.metrics()
    assert faulted and metrics["producer_replacements"] == 1 and metrics["aborts"] == 1, (faulted, metrics)
    assert same_rows(lg.read_table(state_dir, "per_minute").collect(), oracle_minutes(events))


def _hang_the_first_send_offsets(monkeypatch: Any, seconds: float) -> list[str]:
    """Make the first ``send_offsets_to_transaction`` block ``seconds`` (grace 1 s); returns the ids of the producers it hung."""
    monkeypatch.setattr(commit, "HANG_GRACE_S", 1.0)
    real_retry = TransactionalProducer._retry
    hung: list[str] = []

    def retry(self: TransactionalProducer, what: str, call: Any, attempts: int = 40) -> Any:
        if what == "send_offsets_to_transaction" and not hung:
            hung.append(self.transactional_id)
            self.call = (what, time.monotonic())
            time.sleep(seconds)  # the replaced producer is fenced meanwhile: what this thread does next is never read
        return real_retry(self, what, call, attempts)

    monkeypatch.setattr(TransactionalProducer, "_retry", retry)
    return hung


def test_a_commit_that_hangs_past_its_timeout_gets_a_new_producer_and_the_batch_is_redone_exactly_once(
    brokers, make_topic, state_dir, unique, monkeypatch
):
    # librdkafka#5456/#5511: send_offsets_to_transaction can block for good after the group
    # coordinator moved.  Here the first call blocks 8 s, far past commit_timeout (2 s) + grace (1 s).
    hung = _hang_the_first_send_offsets(monkeypatch, 8)
    _redone_exactly_once_with_one_new_producer(brokers, make_topic, state_dir, f"hung-{unique}", 5, hung, commit_timeout="2s")


def test_a_transaction_timed_out_while_the_instance_stalled_gets_a_new_producer_and_the_batch_is_redone_exactly_once(
    brokers, make_topic, state_dir, unique, monkeypatch
):
    # A SIGSTOPped instance resumed after transaction.timeout.ms: the coordinator has aborted its
    # open transaction and bumped the producer epoch, so its next Kafka call fails with a fatal
    # "fenced by a newer instance", as if another instance had its transactional.id.  The stall is
    # real here: after the first records of a transaction, a sleep past transaction.timeout.ms (1 s)
    # and the broker's time-out sweep (every 10 s).  Before: the run stopped with that fatal error.
    real_produce = TransactionalProducer.produce
    stalled: list[str] = []

    def produce(self: TransactionalProducer, out: Any) -> None:
        real_produce(self, out)
        if not stalled and out.values:  # the transaction is open at the coordinator once it has records
            stalled.append(self.transactional_id)
            self.producer.flush(10)
            time.sleep(14)

    monkeypatch.setattr(TransactionalProducer, "produce", produce)
    _redone_exactly_once_with_one_new_producer(
        brokers, make_topic, state_dir, f"stalled-{unique}", 6, stalled, kafka={"transaction.timeout.ms": 1000}
    )


def test_the_last_epoch_aborted_after_the_input_was_read_to_its_end_is_redone_before_run_until_caught_up_returns(
    brokers, make_topic, state_dir, unique, monkeypatch
):
    # One batch holds every record, the flush records too, so the consumer is at the end of each
    # partition while that epoch's commit is still in flight.  Its commit hangs and is aborted:
    # run(until="caught_up") must redo it rather than return with nothing committed.  Before: the
    # fast caught-up check saw the positions at the end, the loop ended, and the abort came at the
    # last settle: the run returned "caught_up" with an empty table.
    hung = _hang_the_first_send_offsets(monkeypatch, 5)
    events = make_events(2_000, seed=7)
    topic = make_topic(f"last-{unique}", partitions=4)
    produce_events(brokers, topic, events)
    pipe = build(f"last-{unique}", brokers, state_dir, topic, batch=lg.BatchPolicy(max_records=100_000, max_wait="3s"),
                 commit_timeout="2s")
    summary = pipe.run(until="caught_up", timeout=120)

    metrics = pipe.metrics()
    assert hung and metrics["aborts"] == 1 and summary.stopped_because == "caught_up", (hung, metrics, summary)
    assert same_rows(lg.read_table(state_dir, "per_minute").collect(), oracle_minutes(events))
