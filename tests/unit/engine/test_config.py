"""Configuration: LOCKGATE_* variables and a TOML file override the code's options; secrets never show."""

from __future__ import annotations

from datetime import timedelta

import pytest
from lockgate.engine import pipeline as pipeline_module
from lockgate.engine.config import Settings, overrides
from pydantic import SecretStr

import lockgate as lg


SECRET = "s3cr3t-Pa55-9f1c"


def test_environment_variables_win_over_the_toml_file_which_wins_over_the_code(tmp_path, monkeypatch):
    config = tmp_path / "prod.toml"
    config.write_text(
        '[pipeline]\nbrokers = "toml:9092"\nstate = "s3://bucket/state"\ncommit_timeout = "30s"\n'
        '[batch]\nmax_records = 2000\n[kafka]\n"security.protocol" = "SASL_SSL"\n"sasl.mechanism" = "PLAIN"\n'
    )
    monkeypatch.setenv("LOCKGATE_CONFIG", str(config))
    monkeypatch.setenv("LOCKGATE_BROKERS", "env:9092")
    monkeypatch.setenv("LOCKGATE_KAFKA__SASL_PASSWORD", SECRET)
    monkeypatch.setenv("LOCKGATE_BATCH__MAX_WAIT", "250ms")
    pipe = lg.Pipeline("p", brokers="code:9092", state="./here", batch=lg.BatchPolicy(max_records=10), kafka={"client.id": "mine"})
    c = pipe.config
    assert (c.brokers, c.state, c.commit_timeout) == ("env:9092", "s3://bucket/state", timedelta(seconds=30))
    assert (c.batch.max_records, c.batch.max_wait_s) == (2000, 0.25)
    options = c.producer_options()
    assert options["security.protocol"] == "SASL_SSL" and options["client.id"] == "mine"
    assert options["sasl.password"] == SECRET, "the secret reaches librdkafka"
    for text in (repr(pipe), repr(c), str(c), str(pipe.plan()), c.model_dump_json()):
        assert SECRET not in text


def test_a_bad_option_from_the_environment_is_a_clear_error_naming_it(monkeypatch):
    monkeypatch.setenv("LOCKGATE_COMPACT_EVERY", "often")
    with pytest.raises(lg.PipelineDefinitionError, match="compact_every"):
        lg.Pipeline("p")
    assert overrides({"LOCKGATE_TEST_BROKERS": "x", "PATH": "/bin"}) == {}, "other variables are not options"


def test_the_settings_model_reads_the_environment_and_a_wrong_type_is_pydantics_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCKGATE_BATCH__MAX_RECORDS", "500")
    monkeypatch.setenv("LOCKGATE_COMMIT_TIMEOUT", "30s")
    settings = Settings()
    assert (settings.batch.max_records, settings.commit_timeout, settings.brokers) == (500, timedelta(seconds=30), None)
    assert lg.Pipeline("p").config.batch.max_records == 500

    monkeypatch.setenv("LOCKGATE_BATCH__MAX_RECORDS", "lots")
    with pytest.raises(lg.PipelineDefinitionError, match=r"LOCKGATE_BATCH__MAX_RECORDS \(batch\.max_records\): Input should be a valid integer"):
        lg.Pipeline("p")
    monkeypatch.delenv("LOCKGATE_BATCH__MAX_RECORDS")
    config = tmp_path / "bad.toml"
    config.write_text('[batch]\nmax_records = "lots"\n')
    monkeypatch.setenv("LOCKGATE_CONFIG", str(config))
    with pytest.raises(lg.PipelineDefinitionError, match=rf"\[batch\] max_records of {config}: Input should be a valid integer"):
        lg.Pipeline("p")


def test_a_secret_read_from_the_environment_is_a_secretstr_from_the_start_and_no_error_quotes_it(monkeypatch):
    monkeypatch.setenv("LOCKGATE_KAFKA__SASL_PASSWORD", SECRET)
    given = overrides()
    assert isinstance(given["kafka"]["sasl.password"], SecretStr) and given["kafka"]["sasl.password"].get_secret_value() == SECRET
    assert SECRET not in repr(given) and SECRET not in repr(Settings()) and SECRET not in str(Settings())
    monkeypatch.setenv("LOCKGATE_SNAPSHOT_ROWS", SECRET)  # a secret pasted into the wrong variable
    with pytest.raises(lg.PipelineDefinitionError, match="LOCKGATE_SNAPSHOT_ROWS") as err:
        lg.Pipeline("p")
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)


def test_an_unknown_toml_table_or_option_is_a_clear_error(tmp_path, monkeypatch):
    config = tmp_path / "bad.toml"
    config.write_text('[pipeline]\nbroker = "typo:9092"\n')
    monkeypatch.setenv("LOCKGATE_CONFIG", str(config))
    with pytest.raises(lg.PipelineDefinitionError, match=r"unknown options \['broker'\].*\[pipeline\] \(brokers"):
        lg.Pipeline("p")


def test_each_kafka_client_gets_only_the_options_it_has_so_librdkafka_warns_about_none():
    import logging

    import confluent_kafka as ck
    from lockgate.engine.config import PipelineConfig

    config = PipelineConfig(name="x", brokers="127.0.0.1:9", kafka={"session.timeout.ms": 6000, "linger.ms": 10, "client.id": "me"})
    producer, consumer, admin = config.producer_options(), config.consumer_options(), config.admin_options()
    assert "session.timeout.ms" not in producer and producer["linger.ms"] == 10 and producer["client.id"] == "me"
    assert consumer["session.timeout.ms"] == 6000 and "linger.ms" not in consumer and consumer["client.id"] == "me"
    assert set(admin) == {"bootstrap.servers", "client.id"}

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test.rdkafka")
    logger.addHandler(Collect())
    logger.setLevel(logging.DEBUG)
    client = ck.Producer({**producer, "logger": logger})
    client.poll(0.2)
    with_everything = ck.Producer({**producer, "session.timeout.ms": 6000, "logger": logger})  # what lockgate used to do
    with_everything.poll(0.2)
    assert any("session.timeout.ms" in line for line in lines), "the check can see a CONFWARN"
    assert sum("consumer property" in line for line in lines) == 1, lines


@pytest.mark.parametrize(
    ("environ", "hostname", "expected"),
    [
        ({"LOCKGATE_INSTANCE": "hostname"}, "orders-3", "3"),  # asked for: the host name's ordinal
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "orders-12", "12"),  # a StatefulSet pod: no setting needed
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "LOCKGATE_INSTANCE": "5"}, "orders-12", "5"),  # a given id wins
        ({}, "laptop-2", "0"),  # outside Kubernetes a host name decides nothing unless asked
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "orders", "0"),  # a pod without an ordinal (a Deployment)
    ],
)
def test_an_instance_id_comes_from_lockgate_instance_or_a_statefulset_pods_ordinal(monkeypatch, environ, hostname, expected):
    for variable in ("LOCKGATE_INSTANCE", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setattr(pipeline_module.socket, "gethostname", lambda: hostname)
    pipe = lg.Pipeline("orders", brokers="127.0.0.1:1", state="/tmp/unused")
    assert pipe.config.instance == expected
    assert pipe.config.transactional_id == f"orders-{expected}"
    assert pipe.config.consumer_options()["group.instance.id"] == f"orders-{expected}"


def test_an_instance_id_that_cannot_be_resolved_or_named_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("LOCKGATE_INSTANCE", "hostname")
    monkeypatch.setattr(pipeline_module.socket, "gethostname", lambda: "laptop")
    with pytest.raises(lg.PipelineDefinitionError, match=r"host name 'laptop' has no trailing ordinal.*set LOCKGATE_INSTANCE"):
        lg.Pipeline("orders", brokers="127.0.0.1:1", state="/tmp/unused")
    monkeypatch.setenv("LOCKGATE_INSTANCE", "two words")
    with pytest.raises(lg.PipelineDefinitionError, match=r"instance 'two words' must be 1-200 characters"):
        lg.Pipeline("orders", brokers="127.0.0.1:1", state="/tmp/unused")


def test_the_transactional_producer_retries_a_busy_transaction_coordinator_after_10_ms_and_a_user_setting_wins():
    # librdkafka retries AddOffsetsToTxn after retry.backoff.ms when the coordinator still writes the
    # last transaction's markers (CONCURRENT_TRANSACTIONS); its 100 ms default was the produce stage's p99
    assert lg.Pipeline("p", brokers="k:9092").config.producer_options()["retry.backoff.ms"] == 10
    mine = lg.Pipeline("p", brokers="k:9092", kafka={"retry.backoff.ms": 50}).config
    assert mine.producer_options()["retry.backoff.ms"] == 50
    assert "retry.backoff.ms" not in mine.consumer_options()
