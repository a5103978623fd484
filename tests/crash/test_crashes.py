"""Exactly once under crashes: real SIGKILLs at every step of the commit, then restarts.

Each test runs a windowed pipeline (tumbling + session windows, into ``to_kafka`` and
``to_table``) as ``lockgate run`` in a subprocess.  ``T_REPARTITION=1`` (the kill
matrix) sends both windows' rows through repartition topics: the kill points then
also hit the stage after the hop (an epoch reads the input and the repartition
topics together); without it the windows keep one state for the topic
(``repartition=False``).  ``LOCKGATE_CRASH_AT`` makes the
process SIGKILL itself at a step of the commit protocol; the test restarts it until a
run ends by itself, then compares the read_committed output topics, ``read_table``
and ``read_state`` with the Polars oracle over the same input.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import confluent_kafka as ck
import lance
import polars as pl
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from lockgate.engine import faults
from lockgate.storage.compaction import compact
from lockgate.storage.commit_log import CommitLog

import lockgate as lg
from tests.conftest import same_rows
from tests.integration.test_windows_on_kafka import (
    BASE,
    FLUSH_T,
    MINUTE,
    from_kafka,
    make_events,
    oracle_minutes,
    oracle_sessions,
    produce_events,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]  # kills, restarts and oracles: tens of seconds each

PIPELINE_FILE = textwrap.dedent(
    """
    import os
    import polars as pl
    import lockgate as lg

    name = os.environ["T_NAME"]
    pipe = lg.Pipeline(
        name, brokers=os.environ["T_BROKERS"], state=os.environ["T_STATE"],
        batch=lg.BatchPolicy(max_records=int(os.environ.get("T_BATCH", "5000")), max_wait="50ms"),
        compact_every=int(os.environ.get("T_COMPACT_EVERY", "3")),
        commit_timeout=os.environ.get("T_COMMIT_TIMEOUT", "60s"),
        kafka={
            "session.timeout.ms": int(os.environ.get("T_SESSION_MS", "6000")), "heartbeat.interval.ms": 500,
            **({"debug": os.environ["T_DEBUG"]} if os.environ.get("T_DEBUG") else {}),
        },
    )
    schema = {"user": pl.String, "url": pl.String, "amount": pl.Int64, "ts": pl.Datetime("ms")}
    events = pipe.source(
        os.environ["T_SOURCE"], format=lg.JSON(schema=schema), event_time="ts", watermark="5s", key=os.environ.get("T_KEY") or None
    )
    if os.environ.get("T_SLOW"):  # the zombie test: a slow step, and a file that says a batch is in it
        import pathlib, time
        beat = pathlib.Path(os.environ["T_BEAT"])

        def slowly(df: pl.DataFrame) -> pl.DataFrame:
            beat.write_text(str(time.monotonic()))
            time.sleep(float(os.environ["T_SLOW"]))
            return df

        events = events.map_batches(slowly)
    hop = os.environ.get("T_REPARTITION") == "1"  # without key=: through a repartition topic, or one state for the topic
    per_minute = events.window(lg.Tumbling("1m"), by="user", name="per_minute", repartition=hop).agg(
        n=pl.len(), total=pl.col("amount").sum(), biggest=pl.col("amount").max()
    )
    per_minute.to_kafka(f"{name}-minutes", key="user")
    per_minute.to_table("per_minute")
    sessions = events.window(lg.Session("30s"), by="user", name="sessions", repartition=hop).agg(
        clicks=pl.len(), pages=pl.col("url").n_unique()
    )
    sessions.to_kafka(f"{name}-sessions", key="user")
    sessions.to_table("sessions")
    """
)

KILLED = -9


class Service:
    """``lockgate run`` of the crash pipeline, started again and again on one input."""

    def __init__(self, brokers: str, topic: str, name: str, tmp_path: Path, **env: str) -> None:
        self.path = tmp_path / "pipeline.py"
        self.path.write_text(PIPELINE_FILE)
        self.state = str(tmp_path / "state")
        self.name = name
        self.env = {**os.environ, "T_NAME": name, "T_BROKERS": brokers, "T_STATE": self.state, "T_SOURCE": topic, **env}
        self.env.pop("LOCKGATE_CRASH_AT", None)
        self.log: list[tuple[str | None, int]] = []

    def run(self, crash_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """One run until caught up (or until the armed crash point kills it)."""
        env = dict(self.env)
        if crash_at is not None:
            env["LOCKGATE_CRASH_AT"] = crash_at
        done = subprocess.run(
            [sys.executable, "-m", "lockgate.cli", "run", str(self.path), "--until", "caught_up"],
            env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
        self.log.append((crash_at, done.returncode))
        assert done.returncode in (0, KILLED), f"run crash_at={crash_at} exited {done.returncode}:\n{done.stderr[-3000:]}"
        return done

    def until_done(self, max_runs: int = 10) -> None:
        """Restart without faults until one run ends by itself (caught up)."""
        for _ in range(max_runs):
            if self.run().returncode == 0:
                return
        raise AssertionError(f"no clean run in {max_runs}: {self.log}")


def assert_exact(brokers: str, service: Service, events: list[dict], flush_at: int = FLUSH_T, per_partition: bool = False) -> None:
    """Outputs, tables and state each equal the Polars oracle: no duplicate, no loss.

    ``per_partition``: the windows keep state per input partition, and the flush
    records are of users ``__flush0`` .. ``__flush3`` (one per partition, as a topic
    keyed by user has them): four open windows stay.
    """
    minutes, sessions = oracle_minutes(events), oracle_sessions(events)
    name, state = service.name, service.state
    got_m = from_kafka(brokers, f"{name}-minutes", dict(minutes.schema)).filter(~pl.col("user").str.starts_with("__flush"))
    got_s = from_kafka(brokers, f"{name}-sessions", dict(sessions.schema)).filter(~pl.col("user").str.starts_with("__flush"))
    assert got_m.height == minutes.height and same_rows(got_m, minutes), f"minutes topic: {got_m.height} rows, oracle {minutes.height}"
    assert got_s.height == sessions.height and same_rows(got_s, sessions), f"sessions topic: {got_s.height} rows, oracle {sessions.height}"
    assert same_rows(lg.read_table(state, "per_minute").collect(), minutes)
    assert same_rows(lg.read_table(state, "sessions").collect(), sessions)
    # what stays open: the windows of the flush records only (one per partition, same minute)
    open_minutes = lg.read_state(state, name, "per_minute").collect()
    if per_partition:
        flush_m, flush_s = [(f"__flush{p}", 1, 0, 0) for p in range(4)], [(f"__flush{p}", 1, 1) for p in range(4)]
    else:
        flush_m, flush_s = [("__flush", 4, 0, 0)], [("__flush", 4, 1)]
    assert sorted(open_minutes.select("user", "n", "total", "biggest").rows()) == flush_m, open_minutes
    open_sessions = lg.read_state(state, name, "sessions").collect()
    assert sorted(open_sessions.select("user", "clicks", "pages").rows()) == flush_s, open_sessions
    assert {t.timestamp() * 1000 for t in open_sessions["window_start"]} == {flush_at}


@pytest.fixture(scope="module")
def crash_input(brokers: str) -> tuple[str, list[dict]]:
    """100,000 events over 4 partitions, shared by the crash matrix (each run is its own pipeline)."""
    topic = f"crash-in-{os.getpid()}-{random.randrange(1 << 30)}"
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
    events = make_events(100_000, seed=4)
    produce_events(brokers, topic, events)
    return topic, events


@pytest.mark.parametrize("point", faults.POINTS)
def test_a_kill_at_each_commit_step_then_restart_is_exactly_the_oracle(brokers, crash_input, tmp_path, unique, point):
    # Both windows go through their repartition topics (the default for a window grouped by a column the
    # input is not keyed by): an epoch reads the input and the repartition topics together, so each kill
    # hits the upstream stage and the stage after the hop.  The other crash tests keep one state per topic.
    topic, events = crash_input
    service = Service(brokers, topic, f"crash-{point.replace('_', '-')}-{unique}", tmp_path, T_REPARTITION="1")
    # the 4th time: state, tables and commit marks already exist when the kill comes
    nth = 1 if point == "during_compaction" else 4
    first = service.run(crash_at=f"{point}:{nth}")
    assert first.returncode == KILLED, f"{point}:{nth} was never reached:\n{first.stderr[-2000:]}"
    service.until_done()
    assert_exact(brokers, service, events)


def test_a_paused_instance_whose_partitions_moved_is_fenced_and_commits_nothing(brokers, crash_input, tmp_path, unique):
    topic, events = crash_input
    beat = tmp_path / "beat"
    service = Service(brokers, topic, f"zombie-{unique}", tmp_path, T_BATCH="2000")
    zombie_env = {**service.env, "LOCKGATE_INSTANCE": "0", "T_SLOW": "0.3", "T_BEAT": str(beat)}
    stderr = (tmp_path / "zombie.err").open("w")
    zombie = subprocess.Popen(
        [sys.executable, "-m", "lockgate.cli", "--log-level", "INFO", "run", str(service.path)],
        env=zombie_env, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _committed_rows(service.state) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _committed_rows(service.state), "the first instance committed nothing in 120 s"
        seen = beat.read_text()
        while beat.read_text() == seen:  # wait for the start of a batch, then freeze the process inside it
            time.sleep(0.005)
        zombie.send_signal(signal.SIGSTOP)
        frozen_at = _committed_rows(service.state)

        # another instance takes the partitions once the frozen one's session (6 s) expires, and finishes
        done = subprocess.run(
            [sys.executable, "-m", "lockgate.cli", "run", str(service.path), "--until", "caught_up"],
            env={**service.env, "LOCKGATE_INSTANCE": "1"}, capture_output=True, text=True, timeout=300, check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert _committed_rows(service.state) > frozen_at
        assert_exact(brokers, service, events)

        zombie.send_signal(signal.SIGCONT)  # it wakes up inside a batch of partitions it no longer owns
        deadline = time.monotonic() + 60
        while "fenced:" not in (tmp_path / "zombie.err").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # let it go on after the fence (it rejoins the group; nothing is left to read)
        zombie.send_signal(signal.SIGTERM)
        assert zombie.wait(60) == 0
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
            zombie.kill()
        stderr.close()
    report = (tmp_path / "zombie.err").read_text()
    assert "fenced: the consumer group gave this instance's partitions to another instance" in report, report[-3000:]
    assert_exact(brokers, service, events)
    # the batch the zombie woke up in never committed in Kafka, so none of its rows reached LanceDB: an epoch's
    # rows are written from its prepare record after its commit (the batches it had committed before the pause
    # are written by it and by the new owner's recovery, and read once)
    assert _uncommitted_rows(service.state) == 0, "rows of a batch that never committed were written"
    assert compact(_tables(service.state), commit_log=CommitLog(service.state)).dead_batches == 0
    assert_exact(brokers, service, events)


def _tables(state: str) -> list[str]:
    """Every Lance table under the state directory (sinks, window state, the commit log)."""
    return sorted(str(p) for p in Path(state).rglob("*.lance") if p.is_dir() and (p / "_versions").is_dir())


def test_an_instance_that_gets_its_partitions_back_continues_from_the_state_another_instance_committed(
    brokers, make_topic, tmp_path, unique
):
    events = make_events(60_000, seed=8)
    topic = make_topic(f"handback-in-{unique}", partitions=4)
    produce_events(brokers, topic, events[:20_000], flush_at=None)
    service = Service(brokers, topic, f"handback-{unique}", tmp_path)
    first = subprocess.Popen(
        [sys.executable, "-m", "lockgate.cli", "--log-level", "INFO", "run", str(service.path)],
        env={**service.env, "LOCKGATE_INSTANCE": "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_until_quiet(service.state)  # the first instance read everything there is and idles
        first.send_signal(signal.SIGSTOP)
        produce_events(brokers, topic, events[20_000:40_000], flush_at=None)
        # meanwhile another instance owns the partitions and moves the windows on
        done = subprocess.run(
            [sys.executable, "-m", "lockgate.cli", "run", str(service.path), "--until", "caught_up"],
            env={**service.env, "LOCKGATE_INSTANCE": "1"}, capture_output=True, text=True, timeout=300, check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        first.send_signal(signal.SIGCONT)  # its session has expired: it rejoins and gets the partitions back
        produce_events(brokers, topic, events[40_000:])
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _only_flush_windows_open(service):
            time.sleep(0.5)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    assert_exact(brokers, service, events)


def _wait_until_quiet(state: str, quiet: float = 3.0, timeout: float = 120.0) -> None:
    """Until the committed rows of ``per_minute`` have not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        rows = _committed_rows(state)
        if rows != last:
            last, since = rows, time.monotonic()
        elif rows > 0 and time.monotonic() - since > quiet:
            return
        time.sleep(0.2)
    raise AssertionError(f"the pipeline did not settle within {timeout}s")


def _only_flush_windows_open(service: Service) -> bool:
    try:
        users = lg.read_state(service.state, service.name, "per_minute").collect()["user"].unique().to_list()
    except lg.StorageError:
        return False
    return bool(users) and all(u.startswith("__flush") for u in users)


def _uncommitted_rows(state: str) -> int:
    """Rows in the sink and state tables that belong to no committed batch."""
    committed = CommitLog(state).committed_batches().implode()
    count = 0
    for uri in _tables(state):
        ds = lance.dataset(uri)
        if "_lg_batch" in ds.schema.names:
            raw = pl.from_arrow(ds.to_table(columns=["_lg_batch"]))
            count += raw.filter(~pl.col("_lg_batch").is_in(committed)).height
    return count


def test_a_broker_stopped_for_20_seconds_mid_run_is_waited_for_and_the_result_is_exact(tmp_path, unique):
    from lockgate.engine import broker

    data_dir = tmp_path / "kafka"
    port = broker.free_port()
    bootstrap = broker.start(data_dir, port).bootstrap
    try:
        topic = f"outage-in-{unique}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
        events = make_events(100_000, seed=6)
        produce_events(bootstrap, topic, events)
        service = Service(
            bootstrap, topic, f"outage-{unique}", tmp_path, T_BATCH="2000", T_SLOW="0.2", T_BEAT=str(tmp_path / "beat"),
            T_SESSION_MS="45000", T_COMMIT_TIMEOUT="10s",
        )
        err_path = tmp_path / "service.err"
        with err_path.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lockgate.cli", "--log-level", "INFO", "run", str(service.path), "--until", "caught_up"],
                env=service.env, stdout=subprocess.DEVNULL, stderr=err, text=True,
            )
            try:
                deadline = time.monotonic() + 120
                while _committed_rows(service.state) == 0 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert proc.poll() is None, "the run ended before the outage"
                assert broker.stop(data_dir)
                time.sleep(20)
                assert proc.poll() is None, "the pipeline gave up while the broker was away:\n" + err_path.read_text()[-3000:]
                broker.start(data_dir, port)
                assert proc.wait(300) == 0, err_path.read_text()[-3000:]
            finally:
                if proc.poll() is None:
                    proc.kill()
        report = err_path.read_text()
        assert "waiting for Kafka" in report, report[-3000:]
        assert_exact(bootstrap, service, events)
    finally:
        broker.stop(data_dir)


#: run as ``python -c _AS_NON_ROOT_FILES -m ...``: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
#: bounding set, then exec the rest, so that even root obeys file modes (no fork hooks involved)
_AS_NON_ROOT_FILES = """
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # PR_CAPBSET_DROP of CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_a_state_directory_made_read_only_stops_the_pipeline_naming_the_table_and_nothing_half_commits(
    brokers, crash_input, tmp_path, unique
):
    topic, events = crash_input
    service = Service(brokers, topic, f"readonly-{unique}", tmp_path, T_BATCH="2000", T_SLOW="0.1", T_BEAT=str(tmp_path / "beat"))
    proc = subprocess.Popen(
        [sys.executable, "-c", _AS_NON_ROOT_FILES, "-m", "lockgate.cli", "run", str(service.path), "--until", "caught_up"],
        env=service.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    state = Path(service.state)
    try:
        deadline = time.monotonic() + 120
        while _committed_rows(service.state) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before the state directory was made read-only"
        _chmod_tree(state, writable=False)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        _chmod_tree(state, writable=True)
    assert proc.returncode == 2, err[-3000:]
    message = "\n".join(line for line in err.splitlines() if line.startswith("lockgate: "))
    assert re.search(rf"lockgate: .*cannot write the LanceDB table at {re.escape(str(state))}/\S+\.lance: .*[Pp]ermission denied", message), message
    # what was committed is consistent, and a restart with a writable directory completes exactly
    service.until_done()
    assert_exact(brokers, service, events)


def test_a_fenced_producer_is_fatal_the_pipeline_stops_saying_so_and_a_restart_is_exact(brokers, crash_input, tmp_path, unique):
    topic, events = crash_input
    service = Service(brokers, topic, f"fatal-{unique}", tmp_path, T_BATCH="2000", T_SLOW="0.1", T_BEAT=str(tmp_path / "beat"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lockgate.cli", "run", str(service.path), "--until", "caught_up"],
        env=service.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _committed_rows(service.state) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before the fence"
        # another producer with the pipeline's transactional.id: the running one is fenced (a fatal error)
        intruder = ck.Producer({"bootstrap.servers": brokers, "transactional.id": f"{service.name}-0"})
        intruder.init_transactions(30)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err[-3000:]
    message = "\n".join(line for line in err.splitlines() if line.startswith("lockgate: "))
    assert re.search(rf"lockgate: epoch \d+: the Kafka transaction of '{service.name}-0' failed \(fatal\): .*nothing of this batch is committed", message), message
    service.until_done()
    assert_exact(brokers, service, events)


def _chmod_tree(root: Path, *, writable: bool) -> None:
    """Take away (or give back) write permission on ``root`` and everything under it."""
    for path in [root, *root.rglob("*")]:
        try:
            mode = path.stat().st_mode
            path.chmod(mode | 0o200 if writable else mode & ~0o222)
        except FileNotFoundError:  # a temporary file the running pipeline just renamed
            continue


def _committed_rows(state: str) -> int:
    try:
        return lg.read_table(state, "per_minute").collect().height
    except lg.StorageError:
        return 0


def test_twenty_random_kills_during_one_run_end_exactly_the_oracle(brokers, make_topic, tmp_path, unique):
    events = make_events(500_000, seed=7)  # 50 minutes of event time
    flush_at = BASE + 60 * MINUTE
    topic = make_topic(f"chaos-in-{unique}", partitions=4)
    produce_events(brokers, topic, events, flush_at=flush_at)
    service = Service(brokers, topic, f"chaos-{unique}", tmp_path, T_BATCH="4000")
    rng = random.Random(unique)
    kills: dict[str, int] = {}
    while sum(kills.values()) < 20:
        point = rng.choice(faults.POINTS)
        nth = 1 if point == "during_compaction" else rng.randint(1, 3)
        done = service.run(crash_at=f"{point}:{nth}")
        assert done.returncode == KILLED, f"the run ended before kill {sum(kills.values()) + 1} ({point}:{nth}): {service.log}"
        kills[point] = kills.get(point, 0) + 1
    service.until_done()
    print(f"\nchaos kills (seed {unique!r}):", dict(sorted(kills.items())))
    assert_exact(brokers, service, events, flush_at)
