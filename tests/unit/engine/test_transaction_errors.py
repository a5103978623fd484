"""A Kafka error inside an epoch's transaction is classified as librdkafka means it: abort-and-redo, or fatal."""

from __future__ import annotations

import confluent_kafka as ck
import pytest
from lockgate.engine.transaction import Epoch, EpochTransaction, OutgoingTopic, TransactionAborted, TransactionalProducer
from lockgate.errors import CommitError


class _Client:
    """Stands in for ``ck.Producer``: ``produce`` raises ``error``; records the aborts."""

    def __init__(self, error: ck.KafkaError) -> None:
        self.error = error
        self.aborts = 0

    def begin_transaction(self) -> None:
        pass

    def produce(self, *args: object, **kwargs: object) -> None:
        raise ck.KafkaException(self.error)

    def poll(self, timeout: float) -> int:
        return 0

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1


def _produce_with(error: ck.KafkaError) -> tuple[EpochTransaction, _Client]:
    client = _Client(error)
    producer = TransactionalProducer.__new__(TransactionalProducer)  # no broker: only produce() is exercised
    producer.producer, producer.transactional_id, producer.call_timeout, producer.call = client, "pipe-0", 1.0, None
    producer.transaction_timeout_s = 60.0
    epoch = Epoch(number=40, ranges=(), outgoing=(OutgoingTopic("out", [b"{}"]),))
    txn = EpochTransaction("pipe", epoch, log_=None, producer=producer, group=None, prepares_topic="pipe-lockgate-prepares")  # type: ignore[arg-type]
    return txn, client  # the Kafka side only: the outputs' produce fails before the prepare record would go


def test_a_fenced_producers_produce_error_is_fatal_though_librdkafka_leaves_its_fatal_flag_unset():
    # what produce() raises once another producer took the transactional.id (seen in CI): code _FATAL, fatal() False
    error = ck.KafkaError(ck.KafkaError._FATAL, "Unable to produce message: Local: Fatal error")
    assert not error.fatal()
    txn, client = _produce_with(error)
    with pytest.raises(CommitError, match=r"epoch 40: the Kafka transaction of 'pipe-0' failed \(fatal\): .*nothing of this batch is committed"):
        txn.produce()
    assert txn.state == "failed"
    assert client.aborts == 0  # a fatal producer is never asked to abort


def test_an_abortable_produce_error_aborts_and_asks_for_the_batch_again():
    txn, client = _produce_with(ck.KafkaError(ck.KafkaError._STATE, "abortable", txn_requires_abort=True))
    with pytest.raises(TransactionAborted):
        txn.produce()
    assert (txn.state, client.aborts) == ("aborted", 1)


def test_a_fatal_flag_wins_over_txn_requires_abort():
    txn, client = _produce_with(ck.KafkaError(ck.KafkaError._FENCED, "fenced", fatal=True, txn_requires_abort=True))
    with pytest.raises(CommitError, match=r"\(fatal\)"):
        txn.produce()
    assert (txn.state, client.aborts) == ("failed", 0)


def test_a_fence_that_comes_after_the_transaction_outlived_its_timeout_is_an_abort_with_a_new_producer():
    # the coordinator aborted a transaction open longer than transaction.timeout.ms (the instance
    # stalled) and bumped the epoch: librdkafka then says "fenced by a newer instance", fatal
    txn, client = _produce_with(ck.KafkaError(ck.KafkaError._FENCED, "fenced by a newer instance", fatal=True))
    txn.producer.transaction_timeout_s = 0.0  # any open transaction has outlived it
    with pytest.raises(TransactionAborted, match=r"longer than transaction.timeout.ms .* this instance stalled") as caught:
        txn.produce()
    assert caught.value.needs_new_producer and txn.state == "aborted"
    assert client.aborts == 0  # a fenced producer is never asked to abort
