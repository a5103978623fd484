"""A secret in the configuration stays secret through a real run: no log line, repr or error quotes it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import json_values, produce
from tests.integration.test_service import PIPELINE_FILE


SECRET = "s3cr3t-Pa55-9f1c"


@pytest.mark.kafka
def test_a_secret_in_the_configuration_appears_in_no_log_line_repr_or_error(brokers, make_topic, tmp_path, unique):
    source = make_topic(f"cfg-in-{unique}", partitions=1)
    produce(brokers, source, json_values([{"n": i} for i in range(2_000)]))
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE_FILE + "\nprint(repr(pipe), pipe.config)\n")
    env = {**os.environ, "T_NAME": f"cfg-{unique}", "T_BROKERS": brokers, "T_STATE": str(tmp_path / "state"), "T_SOURCE": source,
           "T_OUT": f"cfg-out-{unique}", "LOCKGATE_KAFKA__SASL_PASSWORD": SECRET, "LOCKGATE_KAFKA__SASL_USERNAME": "svc"}
    cli = [sys.executable, "-m", "lockgate.cli", "--log-level", "DEBUG"]
    ok = subprocess.run([*cli, "run", str(path), "--until", "caught_up"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "SecretStr('**********')" in ok.stdout, "the repr was printed, masked"
    # a configuration the clients refuse, quoting the value they refuse: it is the secret's value here
    bad_env = {**env, "LOCKGATE_KAFKA__SECURITY_PROTOCOL": SECRET}
    plain = tmp_path / "plain.py"  # no repr printed: the refused value sits in a non-secret option here
    plain.write_text(PIPELINE_FILE)
    bad = subprocess.run([*cli, "run", str(plain), "--until", "caught_up"], env=bad_env, capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and re.search(r"lockgate: pipeline '[^']+': the Kafka \w+( client)? refused an option", bad.stderr), bad.stderr[-3000:]
    assert "***" in bad.stderr, "librdkafka quoted the value; lockgate masked it"
    for output in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert SECRET not in output
