"""lockgate.engine.kafka_clients: every client gets lockgate's logger and options; an admin client's lines come out; refused options are clear."""

from __future__ import annotations

import gc
import logging
import socket
import time

import confluent_kafka as ck
import lockgate as lg
import pytest
from confluent_kafka.admin import AdminClient
from lockgate.engine import kafka_clients
from lockgate.engine.kafka_log import kafka_logger

SECRET = "hunter2-do-not-print"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def refused(caplog: pytest.LogCaptureFixture) -> str:
    """A loopback address nothing listens on (librdkafka logs its connection-refused lines); lockgate.kafka captured at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="lockgate.kafka")
    return f"127.0.0.1:{_free_port()}"


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_each_client_gets_its_role_s_logger_and_the_log_level_and_keeps_the_options_it_was_given():
    given = {"bootstrap.servers": "k1:9092", "group.id": "g", "client.id": "me", "fetch.wait.max.ms": 50}
    for role in ("consumer", "producer", "admin"):
        built = kafka_clients.client_options(role, given)
        assert built["logger"] is kafka_logger(role) and built["log_level"] == 6
        assert {k: built[k] for k in given} == given, "passed through unchanged"
    # the logger is lockgate's even if the options bring one; a log level they set stays
    own = logging.getLogger("test.own")
    assert kafka_clients.client_options("producer", {"logger": own, "log_level": 7}) == {"logger": kafka_logger("producer"), "log_level": 7}


def test_a_consumer_gets_enable_partition_eof_as_asked_whatever_its_options_say():
    options = {"bootstrap.servers": "k1:9092", "group.id": "g", "enable.partition.eof": True}
    assert kafka_clients.client_options("consumer", options)["enable.partition.eof"] is False
    assert kafka_clients.client_options("consumer", options, partition_eof=True)["enable.partition.eof"] is True


def test_a_client_s_options_reach_librdkafka_and_its_lines_its_lockgate_kafka_logger(refused, caplog):
    """``client.id`` names the handle in each line librdkafka logs, so the line proves both."""
    producer = kafka_clients.producer({"bootstrap.servers": refused, "client.id": "kc-producer"})
    consumer = kafka_clients.consumer({"bootstrap.servers": refused, "client.id": "kc-consumer", "group.id": "kc"})
    deadline = time.monotonic() + 10
    while not (_lines(caplog, "lockgate.kafka.producer") and _lines(caplog, "lockgate.kafka.consumer")) and time.monotonic() < deadline:
        producer.poll(0.1)
        consumer.poll(0.1)
    consumer.close()
    assert any("[kc-producer#producer-" in line for line in _lines(caplog, "lockgate.kafka.producer")), caplog.records
    assert any("[kc-consumer#consumer-" in line for line in _lines(caplog, "lockgate.kafka.consumer")), caplog.records


def test_an_admin_client_s_lines_reach_python_logging_though_nobody_polls_it(refused, caplog):
    """With debug=broker librdkafka logs each of its connection attempts (every 10-50 ms here): each wait below leaves lines."""
    options = {"bootstrap.servers": refused, "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50, "debug": "broker,admin"}
    admin = kafka_clients.admin(options)
    with pytest.raises(ck.KafkaException):
        admin.list_topics(timeout=1)
    assert any("Connection refused" in line for line in _lines(caplog, "lockgate.kafka.admin")), "served after the call"

    # a request's lines: held while it runs (nothing polls), out at the client's next call
    request = [ck.ConsumerGroupTopicPartitions("kc", [ck.TopicPartition("t", 0)])]
    future = admin.list_consumer_group_offsets(request, request_timeout=1)["kc"]
    caplog.clear()
    with pytest.raises(ck.KafkaException):
        future.result(10)
    assert not _lines(caplog, "lockgate.kafka.admin")
    admin.list_consumer_group_offsets(request, request_timeout=1)
    assert any("LISTCONSUMERGROUPOFFSETS" in line for line in _lines(caplog, "lockgate.kafka.admin")), "served by the next call"

    # the lines left when the client is dropped (a request still running keeps librdkafka connecting)
    pending = admin.list_consumer_group_offsets(request, request_timeout=10)["kc"]
    caplog.clear()
    time.sleep(0.5)
    assert not _lines(caplog, "lockgate.kafka.admin")
    del admin, future, pending
    gc.collect()
    assert any("Connect" in line for line in _lines(caplog, "lockgate.kafka.admin")), "served when dropped"


def test_a_plain_admin_client_would_keep_its_lines_until_polled(refused, caplog):
    """What the factory fixes: confluent-kafka hands an admin client's lines to its logger only in poll()."""
    admin = AdminClient({"bootstrap.servers": refused, "logger": kafka_logger("admin")})
    with pytest.raises(ck.KafkaException):
        admin.list_topics(timeout=1)
    assert not _lines(caplog, "lockgate.kafka.admin")
    admin.poll(0)
    assert any("Connection refused" in line for line in _lines(caplog, "lockgate.kafka.admin"))


@pytest.mark.parametrize(("build", "client"), [
    (kafka_clients.consumer, "consumer"), (kafka_clients.producer, "producer"), (kafka_clients.admin, "admin client"),
])
def test_an_option_librdkafka_refuses_is_a_kafka_options_error_naming_the_client_the_option_and_the_fix(build, client):
    with pytest.raises(lg.KafkaOptionsError) as caught:
        build({"bootstrap.servers": "127.0.0.1:9", "group.id": "g", "fetch.wait.max.msec": 5})
    message = str(caught.value)
    assert message.startswith(f'the Kafka {client} refused an option: No such configuration property: "fetch.wait.max.msec"; correct or remove it')
    assert "kafka={...}" in message and "LOCKGATE_KAFKA__" in message and "CONFIGURATION.md" in message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, lg.LockgateError)


def test_a_refused_value_that_is_also_a_secret_s_value_is_masked():
    options = {"bootstrap.servers": "127.0.0.1:9", "group.id": "g", "sasl.password": SECRET, "security.protocol": SECRET}
    with pytest.raises(lg.KafkaOptionsError, match=r'Invalid value "\*\*\*" for configuration property "security.protocol"') as caught:
        kafka_clients.consumer(options)
    assert SECRET not in str(caught.value) and caught.value.__cause__ is None and caught.value.__suppress_context__


