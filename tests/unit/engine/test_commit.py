"""The commit protocol (engine/commit.py): the order of an epoch's steps, and a hung commit cut loose."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from lockgate.engine.commit import run_epoch



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


class _Table:
    """Stands in for a SinkTable: its append says that it started, then waits for the commit log's."""

    name = "per_minute"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.log_started = threading.Event()
        self.built: list[str] = []

    def rows_of(self, frame: object, *, batch_id: int, epoch: int) -> object:
        self.built.append(threading.current_thread().name)
        return ("rows of", frame, batch_id)

    def append_rows(self, rows: object) -> int:
        self.started.set()
        assert self.log_started.wait(10), "the commit-log append never started while this one ran"
        return 1


class _Log:
    """Stands in for the CommitLog: its write waits for the table append to have started."""

    def __init__(self, table: _Table) -> None:
        self.table = table
        self.tables: object = None
        self.written: list[object] = []

    def prepare_rows(self, pipeline: str, **kwargs: Any) -> object:
        self.tables = kwargs["tables"]
        return ("log rows", kwargs["batch_id"])

    def write(self, rows: object) -> None:
        self.table.log_started.set()
        assert self.table.started.wait(10), "the table append never started while the commit log's ran"
        self.written.append(rows)


def test_a_prepares_table_state_and_commit_log_appends_run_side_by_side():
    import polars as pl
    from lockgate.engine.transaction import Epoch, EpochTransaction

    table = _Table()
    log = _Log(table)
    epoch = Epoch(number=3, ranges=(), tables=((table, pl.DataFrame({"n": [1]})),))  # type: ignore[arg-type]
    txn = EpochTransaction("pipe", epoch, log_=log, producer=None, group=None)  # type: ignore[arg-type]
    txn.prepare()  # one after the other, each would wait 10 s for the other and fail
    assert txn.prepared and log.tables == {"per_minute": None} and log.written == [("log rows", epoch.batch_id)]


def test_the_next_batch_closes_when_the_epoch_in_flight_should_finish_within_the_batchs_lead():
    from concurrent.futures import Future

    from lockgate.engine.commit import Committer

    committer = Committer.__new__(Committer)  # no producer: only the closing decision is exercised
    committer.min_interval_s = 0.0
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


def test_min_interval_counts_commit_start_to_commit_start_so_the_batch_closes_its_lead_earlier():
    from lockgate.engine.commit import Committer

    committer = Committer.__new__(Committer)  # no producer: only the closing decision is exercised
    committer.inflight, committer.min_interval_s = None, 0.4
    committer.lead_estimate = 0.25  # a closed batch needs 0.25 s (decode, operators) before its commit can start
    committer.started_at = time.monotonic()
    assert committer.wait_ready(0.0) is False  # 0.4 - 0.25 = 0.15 s to go
    assert committer.wait_ready(5.0) is True
    closed = time.monotonic() - committer.started_at
    # closed 0.15 s after the last start, so its commit starts about 0.4 s after it; closing at 0.4 s would start it at 0.65 s
    assert 0.14 <= closed < 0.3


def test_a_batch_closes_no_sooner_than_min_interval_after_the_last_epoch_started_even_with_no_epoch_in_flight():
    from lockgate.engine.commit import Committer

    committer = Committer.__new__(Committer)  # no producer: only the closing decision is exercised
    committer.inflight, committer.min_interval_s = None, 0.3  # the last epoch has finished: without the floor, close now
    committer.lead_estimate = None  # no batch measured yet: the whole 0.3 s
    committer.started_at = time.monotonic()
    assert committer.wait_ready(0.0) is False
    asked = time.monotonic()
    assert committer.wait_ready(0.1) is False  # 0.3 s not passed: waited all of the 0.1 s, no more
    assert 0.09 <= time.monotonic() - asked < 0.25
    assert committer.wait_ready(5.0) is True  # waits out the rest of the 0.3 s, then nothing is in flight
    assert time.monotonic() - committer.started_at >= 0.3
    committer.min_interval_s = 0.0
    committer.started_at = time.monotonic()
    assert committer.wait_ready(0.0) is True  # min_interval "0ms": as soon as the commit before allows


class _Store:
    """Stands in for a WindowStore: it only writes rows built before (records them and the thread that wrote them)."""

    name = "window_1"

    def __init__(self) -> None:
        import pyarrow as pa

        self.arrow_schema = pa.schema([("k", pa.int64()), ("count", pa.int64()), ("_lg_deleted", pa.bool_()),
                                       ("_lg_batch", pa.int64()), ("_lg_epoch", pa.int64()), ("_lg_order", pa.int64())])
        self.written: list[tuple[str, object]] = []

    def append_rows(self, rows: object) -> int:
        self.written.append((threading.current_thread().name, rows))
        return 2


class _NoLog:
    def prepare_rows(self, pipeline: str, **kwargs: Any) -> None:
        return None

    def write(self, rows: object) -> None:
        pass


def _state_epoch() -> tuple[Any, _Store]:
    import polars as pl
    from lockgate.engine.stateful import StateDelta
    from lockgate.engine.transaction import Epoch
    from lockgate.operators.windows.state import WindowDelta

    store = _Store()
    delta = WindowDelta(upserts=pl.DataFrame({"k": [1, 2], "count": [3, 4]}), deletes=pl.DataFrame({"k": [5]}))
    return Epoch(number=7, ranges=(), states=(StateDelta(store, delta),)), store  # type: ignore[arg-type]


def test_an_epochs_state_rows_are_built_when_the_runner_starts_it_so_the_appenders_only_write(monkeypatch):
    from lockgate.engine import commit, transaction
    from lockgate.engine.commit import Committer

    epoch, store = _state_epoch()
    committer = Committer.__new__(Committer)  # no producer: only what start() does on the runner's thread
    committer.pipeline, committer.log, committer.producer, committer.pending_marks = "pipe", _NoLog(), None, []
    committer.inflight, committer.lead_estimate = None, None
    monkeypatch.setattr(commit, "in_thread", lambda fn, name: None)  # the commit thread is not started here
    committer.start(epoch, None, {"decode": 0.01, "operators": 0.02})
    txn = committer.inflight[0]  # type: ignore[index]
    rows = txn.state_rows[0]
    assert rows is not None and rows.num_rows == 3, "built on the runner's thread, before the commit thread starts"
    assert rows.column("_lg_deleted").to_pylist() == [False, False, True] and set(rows.column("_lg_batch").to_pylist()) == {epoch.batch_id}
    assert txn.seconds["operators"] >= 0.02, "the build counts as building the epoch"

    def no_build(*args: object) -> None:
        raise AssertionError("the prepare built the state rows again")

    monkeypatch.setattr(transaction, "state_rows", no_build)
    txn.prepare()
    assert [r for _, r in store.written] == [rows], "the appender wrote the rows built before, and nothing else"


def test_an_epochs_commit_log_and_table_rows_are_built_when_the_runner_starts_it_so_the_appenders_only_write(monkeypatch, tmp_path):
    import polars as pl
    from lockgate.engine import commit
    from lockgate.engine.commit import Committer
    from lockgate.engine.transaction import Epoch
    from lockgate.storage.commit_log import CommitLog, PartitionRange

    class _Sink:
        name = "per_minute"

        def __init__(self) -> None:
            self.built: list[str] = []
            self.written: list[tuple[str, object]] = []

        def rows_of(self, frame: pl.DataFrame, *, batch_id: int, epoch: int) -> object:
            self.built.append(threading.current_thread().name)
            return ("rows", frame.height, batch_id)

        def append_rows(self, rows: object) -> int:
            self.written.append((threading.current_thread().name, rows))
            return 2

    log, sink = CommitLog(str(tmp_path)), _Sink()
    before = Epoch(number=6, ranges=())  # committed: its mark travels with the next prepare
    epoch = Epoch(number=7, ranges=(PartitionRange("in", 0, 10, 15),), tables=((sink, pl.DataFrame({"n": [1, 2]})),))  # type: ignore[arg-type]
    committer = Committer.__new__(Committer)  # no producer: only what start() does on the runner's thread
    committer.pipeline, committer.log, committer.producer, committer.pending_marks = "pipe", log, None, [before]
    committer.inflight, committer.lead_estimate = None, None
    monkeypatch.setattr(commit, "in_thread", lambda fn, name: None)  # the commit thread is not started here
    committer.start(epoch, None, {"decode": 0.01, "operators": 0.02})
    txn = committer.inflight[0]  # type: ignore[index]
    runner = threading.current_thread().name
    assert sink.built == [runner] and txn.table_rows == [(sink, ("rows", 2, epoch.batch_id))]
    assert txn.log_rows is not None and txn.log_rows.column("kind").to_pylist() == ["prepare", "commit"]
    assert txn.log_rows.column("batch_id").to_pylist() == [epoch.batch_id, before.batch_id]

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the prepare built rows again")

    monkeypatch.setattr(log, "prepare_rows", no_build)
    monkeypatch.setattr(sink, "rows_of", no_build)
    txn.prepare()
    assert [rows for _, rows in sink.written] == [("rows", 2, epoch.batch_id)] and sink.written[0][0] != runner
    written = log.frame().sort("kind", descending=True)
    assert written["kind"].to_list() == ["prepare", "commit"] and written["batch_id"].to_list() == [epoch.batch_id, before.batch_id]
    assert written.filter(pl.col("kind") == "prepare")["next_offset"].to_list() == [15]
