"""The commit protocol (engine/commit.py): the order of an epoch's steps, and a hung commit cut loose."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from lockgate.engine import commit
from lockgate.engine.commit import run_epoch
from lockgate.engine.transaction import TransactionalProducer

import lockgate as lg
from tests.conftest import same_rows
from tests.engine.test_windows_on_kafka import build, make_events, oracle_minutes, produce_events


class _Steps:
    """Stands in for an EpochTransaction: records the order of its steps; ``prepare`` can wait for the Kafka side or fail."""

    def __init__(self, prepare_waits_for_kafka: bool = False, prepare_fails: bool = False) -> None:
        self.done: list[str] = []
        self.closable = threading.Event()
        self.kafka_started = threading.Event()
        self.prepare_waits_for_kafka = prepare_waits_for_kafka
        self.prepare_fails = prepare_fails
        self.saw_kafka_during_prepare: bool | None = None

    def produce(self) -> None:
        self.kafka_started.set()
        self.done.append("produce")

    def prepare(self) -> None:
        if self.prepare_waits_for_kafka:
            self.saw_kafka_during_prepare = self.kafka_started.wait(10)
        if self.prepare_fails:
            raise OSError("disk full")
        self.done.append("prepare")

    def abort(self) -> None:
        self.done.append("abort")

    def commit_kafka(self) -> None:
        self.done.append("commit")


def test_the_kafka_side_of_an_epoch_runs_while_its_lancedb_prepare_runs_and_the_commit_waits_for_both():
    steps = _Steps(prepare_waits_for_kafka=True)  # run one after the other, prepare would wait 10 s for nothing
    run_epoch(steps)  # type: ignore[arg-type]
    assert steps.saw_kafka_during_prepare is True and steps.closable.is_set()
    assert steps.done[-1] == "commit" and sorted(steps.done[:2]) == ["prepare", "produce"], steps.done


def test_a_failed_prepare_aborts_the_kafka_side_and_never_commits():
    steps = _Steps(prepare_fails=True)
    with pytest.raises(OSError, match="disk full"):
        run_epoch(steps)  # type: ignore[arg-type]
    assert steps.done == ["produce", "abort"], steps.done


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


@pytest.mark.kafka
def test_a_commit_that_hangs_past_its_timeout_gets_a_new_producer_and_the_batch_is_redone_exactly_once(
    brokers, make_topic, state_dir, unique, monkeypatch
):
    # librdkafka#5456/#5511: send_offsets_to_transaction can block for good after the group
    # coordinator moved.  Here the first call blocks 8 s, far past commit_timeout (2 s) + grace (1 s).
    monkeypatch.setattr(commit, "HANG_GRACE_S", 1.0)
    real_retry = TransactionalProducer._retry
    hung: list[str] = []

    def retry(self: TransactionalProducer, what: str, call: Any, attempts: int = 40) -> Any:
        if what == "send_offsets_to_transaction" and not hung:
            hung.append(self.transactional_id)
            self.call = (what, time.monotonic())
            time.sleep(8)  # the replaced producer is fenced meanwhile: what this thread does next is never read
        return real_retry(self, what, call, attempts)

    monkeypatch.setattr(TransactionalProducer, "_retry", retry)
    _redone_exactly_once_with_one_new_producer(brokers, make_topic, state_dir, f"hung-{unique}", 5, hung, commit_timeout="2s")


@pytest.mark.kafka
@pytest.mark.slow
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


class _Table:
    """Stands in for a SinkTable: its append says that it started, then waits for the commit log's."""

    name = "per_minute"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.log_started = threading.Event()

    def append(self, frame: object, *, batch_id: int, epoch: int) -> int:
        self.started.set()
        assert self.log_started.wait(10), "the commit-log append never started while this one ran"
        return 1


class _Log:
    """Stands in for the CommitLog: its prepare waits for the table append to have started."""

    def __init__(self, table: _Table) -> None:
        self.table = table
        self.tables: object = None

    def prepare(self, pipeline: str, **kwargs: Any) -> None:
        self.table.log_started.set()
        assert self.table.started.wait(10), "the table append never started while the commit log's ran"
        self.tables = kwargs["tables"]


def test_a_prepares_table_state_and_commit_log_appends_run_side_by_side():
    import polars as pl
    from lockgate.engine.transaction import Epoch, EpochTransaction

    table = _Table()
    log = _Log(table)
    epoch = Epoch(number=3, ranges=(), tables=((table, pl.DataFrame({"n": [1]})),))  # type: ignore[arg-type]
    txn = EpochTransaction("pipe", epoch, log_=log, producer=None, group=None)  # type: ignore[arg-type]
    txn.prepare()  # one after the other, each would wait 10 s for the other and fail
    assert txn.prepared and log.tables == {"per_minute": None}


def test_the_next_batch_closes_when_the_epoch_in_flight_should_finish_within_the_batchs_lead():
    from concurrent.futures import Future

    from lockgate.engine.commit import Committer

    committer = Committer.__new__(Committer)  # no producer: only the closing decision is exercised
    in_flight = _Steps()  # its steps never finish here: only the estimates can say "close"
    committer.inflight = (in_flight, Future())  # type: ignore[assignment]
    committer.commit_estimate, committer.lead_estimate = 0.5, 0.3  # a commit takes 0.5 s, a batch needs 0.3 s before its own
    committer.started_at = time.monotonic()
    assert committer.wait_ready(0.0) is False  # 0.5 - 0.3 = 0.2 s to go
    assert committer.wait_ready(5.0) is True  # after those 0.2 s, though the epoch has not finished
    committer.commit_estimate = committer.lead_estimate = None  # no estimates yet: only the epoch itself says so
    assert committer.wait_ready(0.1) is False
    in_flight.closable.set()
    assert committer.wait_ready(0.0) is True
