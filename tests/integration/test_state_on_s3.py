"""State on S3 (moto's S3 server on 127.0.0.1): tables, window state and the commit log, shared by instances.

Lance commits each table version with a conditional put (``If-None-Match: *`` on
the next manifest); moto enforces it as AWS S3 does, so two writers appending to
one table never overwrite each other's commit: the loser retries on the new version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import polars as pl
import pytest

import lockgate as lg
from lockgate.storage.commit_log import CommitLog, PartitionRange
from lockgate.storage.lance_io import use_storage_options
from lockgate.storage.sink_tables import SinkTable, list_tables
from lockgate.storage.state import list_states
from tests.crash.test_crashes import Service, _only_flush_windows_open, _wait_until_quiet, assert_exact
from tests.integration.test_scale_out import _stop, _wait_for_line
from tests.integration.test_windows_on_kafka import make_events, produce_events


def test_tables_and_the_commit_log_live_on_s3_and_reads_see_committed_batches_only(s3, unique):
    state = s3.state(f"tables-{unique}")
    use_storage_options(state, s3.options)
    log, sink = CommitLog(state), SinkTable(state, "views")
    sink.append(pl.DataFrame({"user": ["a", "b"]}), batch_id=7, epoch=1)
    log.prepare("p", epoch=1, batch_id=7, ranges=[PartitionRange("clicks", 0, 0, 2)], tables={"views": None})
    use_storage_options(state, None)  # another process: only what read_table is given
    assert lg.read_table(state, "views", storage_options=s3.options).collect().height == 0  # prepared, not committed
    log.mark("p", epoch=1, batch_id=7)
    assert lg.read_table(state, "views").collect()["user"].to_list() == ["a", "b"]
    assert list_tables(state) == ["views"] and list_states(state) == []
    shown = subprocess.run(  # the state explorer, given the options as LOCKGATE_STORAGE_OPTIONS__* variables
        [sys.executable, "-m", "lockgate.cli", "state", "list", state], env={**os.environ, **s3.env()},
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert shown.stdout.split() == ["table", "views"], shown.stdout + shown.stderr


def test_two_processes_writing_a_new_commit_log_on_s3_at_once_lose_no_commit(s3, unique):
    # Both create the table on their first write, at the same moment: the loser's create must not become an
    # overwrite of what the winner wrote (Lance committed it as one before tables were created empty first).
    writer = (
        "import json, os, sys, time\n"
        "from lockgate.storage.commit_log import CommitLog\n"
        "from lockgate.storage.lance_io import use_storage_options\n"
        "use_storage_options(sys.argv[1], json.loads(os.environ['T_OPTIONS']))\n"
        "log = CommitLog(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # both start writing at once\n"
        "for i in range(10):\n"
        "    log.mark('p', epoch=i, batch_id=int(sys.argv[2]) * 100 + i)\n"
    )
    env = {**os.environ, "T_OPTIONS": json.dumps(s3.options)}
    for round_ in range(3):
        state = s3.state(f"race-{unique}-{round_}")
        at = str(time.time() + 3.0)
        procs = [subprocess.Popen([sys.executable, "-c", writer, state, str(k), at], env=env, stderr=subprocess.PIPE, text=True)
                 for k in (1, 2)]
        errors = [proc.communicate(timeout=300)[1] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], errors
        use_storage_options(state, s3.options)
        marked = sorted(CommitLog(state).committed_batches().to_list())
        assert marked == sorted([100 + i for i in range(10)] + [200 + i for i in range(10)]), f"round {round_}: {marked}"


def test_no_storage_secret_appears_in_a_repr_or_an_error(s3, unique):
    pipe = lg.Pipeline(f"s3-secret-{unique}", brokers="127.0.0.1:1", state=f"s3://no-such-bucket-{unique}/p", storage_options=s3.options)
    secrets = [s3.options["access_key_id"], s3.options["secret_access_key"]]
    shown = [repr(pipe.config), str(pipe.config.model_dump()), repr(pipe)]
    with pytest.raises(lg.StorageError) as err:
        lg.read_table(pipe.config.state, "t", storage_options=s3.options).collect()
    shown.append(str(err.value))
    assert not [s for s in secrets for text in shown if s in text], shown


@pytest.mark.kafka
@pytest.mark.slow
def test_two_instances_sharing_only_s3_state_hand_a_partitions_windows_to_each_other_exactly(brokers, make_topic, s3, tmp_path, unique):
    events = make_events(40_000, seed=13)
    topic = make_topic(f"s3-in-{unique}", partitions=4)
    service = Service(brokers, topic, f"s3-{unique}", tmp_path, T_KEY="user")
    service.state = s3.state(f"scale-{unique}")
    service.env.update(T_STATE=service.state, **s3.env())
    use_storage_options(service.state, s3.options)  # this process reads the results
    homes = [tmp_path / "host-0", tmp_path / "host-1"]  # each instance its own working directory: they share S3 only
    logs = [home / "instance.log" for home in homes]
    procs: list[subprocess.Popen[bytes]] = []

    def start(instance: int) -> subprocess.Popen[bytes]:
        homes[instance].mkdir(exist_ok=True)
        with logs[instance].open("w") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "lockgate.cli", "--log-level", "INFO", "run", str(service.path)],
                env={**service.env, "LOCKGATE_INSTANCE": str(instance)}, cwd=homes[instance], stdout=subprocess.DEVNULL, stderr=err,
            )

    try:
        procs.append(start(0))
        produce_events(brokers, topic, events[:15_000], flush_at=None)
        _wait_until_quiet(service.state)
        procs.append(start(1))
        loaded = _wait_for_line(logs[1], "window per_minute: loaded")
        assert "of partitions [" in loaded and "[0, 1, 2, 3]" not in loaded, loaded  # it took some, with their windows
        _wait_for_line(logs[0], "revoked")
        produce_events(brokers, topic, events[15_000:30_000], flush_at=None)
        time.sleep(2)
        _wait_until_quiet(service.state)
        _stop(procs[1], logs[1])  # its partitions and their windows go back to instance 0
        produce_events(brokers, topic, events[30_000:], flush_per_partition=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _only_flush_windows_open(service):
            time.sleep(0.5)
        _stop(procs[0], logs[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert "of partitions [0, 1, 2, 3]" in _wait_for_line(logs[0], "window per_minute: loaded")
    local = [str(p) for home in homes for p in home.rglob("*.lance")]
    assert not local, f"state went to a local directory: {local}"
    assert_exact(brokers, service, events, per_partition=True)
