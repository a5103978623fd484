"""The commit protocol (engine/commit.py): the order of an epoch's steps, and a hung commit cut loose."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from lockgate.engine.commit import run_epoch



class _Steps:
    """Stands in for an EpochTransaction: records the order of its steps."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.closable = threading.Event()
        self.closable_before_commit: bool | None = None

    def produce(self) -> None:
        self.done.append("produce")

    def commit_kafka(self) -> None:
        self.closable_before_commit = self.closable.is_set()
        self.done.append("commit")

    def materialize(self) -> None:
        self.done.append("materialize")


def test_an_epochs_kafka_commit_follows_its_produce_and_never_waits_for_lancedb():
    steps = _Steps()
    run_epoch(steps)  # type: ignore[arg-type]
    assert steps.done == ["produce", "commit"], "no LanceDB write before (or in) the Kafka commit: the rows are in the transaction"
    assert steps.closable_before_commit is True, "once only the Kafka commit is left, the next batch may close"


class _Table:
    """Stands in for a SinkTable: its append waits for the other table's to start, and says when it ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.uri = f"/state/{name}.lance"
        self.started = threading.Event()
        self.ended = threading.Event()
        self.other: _Table | None = None

    def rows_of(self, frame: Any, *, batch_id: int, epoch: int) -> Any:
        return frame.to_arrow()

    def append_rows(self, rows: object) -> int:
        self.started.set()
        assert self.other is not None and self.other.started.wait(10), "the other table's append never started while this one ran"
        self.ended.set()
        return 1


class _Log:
    """Stands in for the CommitLog: its write checks that every table's rows were written before it."""

    def __init__(self, *tables: _Table) -> None:
        self.tables = tables
        self.written: list[Any] = []

    def prepare_rows(self, pipeline: str, **kwargs: Any) -> Any:
        from lockgate.storage.commit_log import CommitLog

        return CommitLog("/nowhere").prepare_rows(pipeline, **kwargs)  # builds rows, writes nothing

    def mark_rows(self, pipeline: str, marks: Any) -> Any:
        from lockgate.storage.commit_log import CommitLog

        return CommitLog("/nowhere").mark_rows(pipeline, marks)

    def write(self, rows: Any) -> None:
        assert all(t.ended.is_set() for t in self.tables), "the commit log (with the epoch's mark) was written before a table's rows"
        self.written.append(rows)


def test_a_committed_epochs_tables_are_written_side_by_side_then_its_prepare_rows_and_mark_in_one_append():
    import polars as pl
    from lockgate.engine.transaction import Epoch, EpochTransaction
    from lockgate.errors import CommitError
    from lockgate.storage.commit_log import PartitionRange

    views, counts = _Table("views"), _Table("counts")
    views.other, counts.other = counts, views
    log = _Log(views, counts)
    frame = pl.DataFrame({"n": [1]})
    epoch = Epoch(number=3, ranges=(PartitionRange("in", 0, 0, 1),), tables=((views, frame), (counts, frame)))  # type: ignore[arg-type]
    txn = EpochTransaction("pipe", epoch, log_=log, producer=None, group=None, prepares_topic="pipe-lockgate-prepares")  # type: ignore[arg-type]
    txn.build_rows()
    with pytest.raises(CommitError, match="only after its Kafka transaction committed"):
        txn.materialize()
    txn.record_sent = True  # the prepare record went in the transaction, which committed
    txn.materialize()  # one after the other, each table would wait 10 s for the other and fail
    [rows] = log.written
    assert rows.column("kind").to_pylist() == ["prepare", "commit"] and set(rows.column("batch_id").to_pylist()) == {epoch.batch_id}
    with pytest.raises(CommitError, match="twice"):
        txn.materialize()


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
    uri = "/state/window_1.lance"

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

    def mark_rows(self, pipeline: str, marks: Any) -> Any:
        from lockgate.storage.commit_log import CommitLog

        return CommitLog("/nowhere").mark_rows(pipeline, marks)  # builds rows, writes nothing

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
    from lockgate.storage.prepare_record import decode

    epoch, store = _state_epoch()
    committer = Committer.__new__(Committer)  # no producer: only what start() does on the runner's thread
    committer.pipeline, committer.log, committer.producer = "pipe", _NoLog(), None
    committer.inflight, committer.lead_estimate, committer.prepares_topic = None, None, "pipe-lockgate-prepares"
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
    txn.record_sent = True  # committed
    txn.materialize()
    assert [r for _, r in store.written] == [rows], "the appender wrote the rows built before, and nothing else"
    assert decode(txn.record).tables == ((store.uri, rows),), "the same rows travel in the prepare record"


def test_an_epochs_commit_log_and_table_rows_are_built_when_the_runner_starts_it_so_the_appenders_only_write(monkeypatch, tmp_path):
    import polars as pl
    from lockgate.engine import commit
    from lockgate.engine.commit import Committer
    from lockgate.engine.transaction import Epoch
    from lockgate.storage.commit_log import CommitLog, PartitionRange
    from lockgate.storage.prepare_record import decode

    class _Sink:
        name = "per_minute"
        uri = "/state/per_minute.lance"

        def __init__(self) -> None:
            self.built: list[str] = []
            self.written: list[tuple[str, object]] = []

        def rows_of(self, frame: pl.DataFrame, *, batch_id: int, epoch: int) -> object:
            self.built.append(threading.current_thread().name)
            return frame.with_columns(pl.lit(batch_id).alias("_lg_batch")).to_arrow()

        def append_rows(self, rows: object) -> int:
            self.written.append((threading.current_thread().name, rows))
            return 2

    log, sink = CommitLog(str(tmp_path)), _Sink()
    epoch = Epoch(number=7, ranges=(PartitionRange("in", 0, 10, 15),), tables=((sink, pl.DataFrame({"n": [1, 2]})),))  # type: ignore[arg-type]
    committer = Committer.__new__(Committer)  # no producer: only what start() does on the runner's thread
    committer.pipeline, committer.log, committer.producer = "pipe", log, None
    committer.inflight, committer.lead_estimate, committer.prepares_topic = None, None, "pipe-lockgate-prepares"
    monkeypatch.setattr(commit, "in_thread", lambda fn, name: None)  # the commit thread is not started here
    committer.start(epoch, None, {"decode": 0.01, "operators": 0.02})
    txn = committer.inflight[0]  # type: ignore[index]
    runner = threading.current_thread().name
    built = txn.table_rows[0][1]
    assert sink.built == [runner] and built.column("_lg_batch").to_pylist() == [epoch.batch_id] * 2
    assert txn.log_rows is not None and txn.log_rows.column("kind").to_pylist() == ["prepare", "commit"], "its prepare rows, then its own mark"
    assert txn.log_rows.column("batch_id").to_pylist() == [epoch.batch_id, epoch.batch_id]
    record = decode(txn.record)
    assert record.tables == ((sink.uri, built),) and record.log_rows.column("kind").to_pylist() == ["prepare"]

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the materializer built rows again")

    monkeypatch.setattr(log, "prepare_rows", no_build)
    monkeypatch.setattr(sink, "rows_of", no_build)
    txn.record_sent = True  # committed
    txn.materialize()
    assert [rows for _, rows in sink.written] == [built] and sink.written[0][0] != runner
    written = log.frame().sort("kind", descending=True)
    assert written["kind"].to_list() == ["prepare", "commit"] and written["batch_id"].to_list() == [epoch.batch_id] * 2
    assert written.filter(pl.col("kind") == "prepare")["next_offset"].to_list() == [15]
    assert log.committed_batches().to_list() == [epoch.batch_id]


def test_a_committed_epoch_is_written_to_lancedb_after_its_settle_and_a_drain_waits_for_it(monkeypatch):
    from concurrent import futures
    from concurrent.futures import Future

    from lockgate.engine import commit
    from lockgate.engine.commit import Committer
    from lockgate.engine.metrics import Metrics
    from lockgate.engine.transaction import Epoch

    steps = _Steps()
    run_epoch(steps)  # type: ignore[arg-type]
    monkeypatch.setattr(commit, "materialize_together", lambda txns: [t.materialize() for t in txns])
    committer = Committer.__new__(Committer)  # no producer: only the settle of a committed epoch
    committer.metrics, committer.materializing, committer.queued = Metrics(), [], []
    committer.queue_lock, committer.failed = threading.Lock(), None
    committer.materializer = futures.ThreadPoolExecutor(1)
    committer.last_write, committer.hurry = 0.0, threading.Event()
    committer.commit_estimate, committer.started_at, committer.hang_grace_s = None, None, 15.0
    done: Future[None] = Future()
    done.set_result(None)
    for name, value in (("epoch", Epoch(number=4, ranges=())), ("log_append_seconds", 0.002), ("seconds", {}),
                        ("finished_at", None), ("materializing", False), ("commit_seconds", None), ("committed_at", time.time()),
                        ("producer", None)):
        setattr(steps, name, value)
    release = threading.Event()

    def materialize() -> None:
        assert release.wait(10)
        steps.done.append("materialize")
        steps.seconds["prepare"] = 0.01  # type: ignore[attr-defined]

    steps.materialize = materialize  # type: ignore[method-assign]
    committer.inflight = (steps, done)  # type: ignore[assignment]
    assert committer.settle() is not None
    assert steps.done == ["produce", "commit"], "the settle does not wait for LanceDB"
    release.set()
    committer.drain()
    assert steps.done == ["produce", "commit", "materialize"], "the rows are written once the epoch committed; drain waits for them"
    hist = committer.metrics.snapshot()["histograms"]
    assert hist["stage_materialized_seconds"]["count"] == 1 and hist["stage_mark_seconds"]["count"] == 1


def test_epochs_queued_while_lancedb_is_slow_are_written_together_and_nothing_after_a_failed_write(monkeypatch):
    groups: list[list[int]] = []
    first_started, release = threading.Event(), threading.Event()

    def write(txns: list[Any]) -> None:
        groups.append([t.epoch.number for t in txns])
        if len(groups) == 1:
            first_started.set()
            assert release.wait(10)  # LanceDB is slow: epochs 2 and 3 commit meanwhile
        if 4 in groups[-1]:
            raise OSError("disk full")
        for t in txns:
            t.seconds["prepare"] = 0.01

    committer = _materializer_only(monkeypatch, write)
    txn = _committed

    committer._submit(txn(1))
    assert first_started.wait(10)
    committer._submit(txn(2))
    committer._submit(txn(3))
    release.set()
    committer.drain()
    assert groups == [[1], [2, 3]], "the two epochs queued behind the slow write went in one write"
    committer._submit(txn(4))
    committer._submit(txn(5))
    with pytest.raises(OSError, match="disk full"):
        committer.drain()
    assert [4] in groups or [4, 5] in groups
    assert not any(g == [5] for g in groups), "nothing is written after a failed write: epoch 5's mark would pass epoch 4's rows"
    committer._submit(txn(6))
    with pytest.raises(OSError, match="disk full"):
        committer.drain()
    assert 6 not in sum(groups, [])


def test_several_epochs_are_written_with_one_append_per_table_then_one_log_append_with_their_marks():
    import polars as pl
    from lockgate.engine.transaction import Epoch, EpochTransaction, materialize_together
    from lockgate.storage.commit_log import PartitionRange

    class _Counting:
        name, uri = "views", "/state/views.lance"

        def __init__(self) -> None:
            self.appends: list[int] = []

        def rows_of(self, frame: Any, *, batch_id: int, epoch: int) -> Any:
            return frame.with_columns(pl.lit(batch_id).alias("_lg_batch")).to_arrow()

        def append_rows(self, rows: Any) -> int:
            self.appends.append(rows.num_rows)
            return 1

    table = _Counting()
    log = _Log()
    txns = []
    for number in (1, 2, 3):
        epoch = Epoch(number=number, ranges=(PartitionRange("in", 0, number, number + 1),),
                      tables=((table, pl.DataFrame({"n": list(range(number))})),))  # type: ignore[arg-type]
        txn = EpochTransaction("pipe", epoch, log_=log, producer=None, group=None, prepares_topic="pipe-lockgate-prepares")  # type: ignore[arg-type]
        txn.build_rows()
        txn.record_sent = True
        txns.append(txn)
    materialize_together(txns)
    assert table.appends == [1 + 2 + 3], "one append of the three epochs' rows"
    [rows] = log.written
    assert rows.column("kind").to_pylist() == ["prepare", "commit"] * 3
    assert rows.column("batch_id").to_pylist() == [t.epoch.batch_id for t in txns for _ in range(2)]
    assert all(t.materialized and t.seconds["prepare"] >= t.log_append_seconds for t in txns)


def _materializer_only(monkeypatch: pytest.MonkeyPatch, write: Any) -> Any:
    """A Committer with nothing but its materializer; ``write`` stands for ``materialize_together``."""
    from concurrent import futures

    from lockgate.engine import commit
    from lockgate.engine.commit import Committer
    from lockgate.engine.metrics import Metrics

    monkeypatch.setattr(commit, "materialize_together", write)
    committer = Committer.__new__(Committer)
    committer.metrics, committer.materializing, committer.queued = Metrics(), [], []
    committer.queue_lock, committer.failed = threading.Lock(), None
    committer.materializer = futures.ThreadPoolExecutor(1)
    committer.last_write, committer.hurry = 0.0, threading.Event()
    return committer


def _recording(groups: list[list[int]]) -> Any:
    """A stand-in for ``materialize_together`` that records the epoch numbers of each write in ``groups``."""

    def write(txns: list[Any]) -> None:
        groups.append([t.epoch.number for t in txns])
        for t in txns:
            t.seconds["prepare"] = 0.01

    return write


def _committed(number: int) -> Any:
    from lockgate.engine.transaction import Epoch

    steps = _Steps()
    for name, value in (("epoch", Epoch(number=number, ranges=())), ("seconds", {}), ("log_append_seconds", 0.002),
                        ("committed_at", time.time()), ("materializing", False)):
        setattr(steps, name, value)
    return steps


def test_epochs_committed_within_the_materialize_interval_go_to_lancedb_in_one_write(monkeypatch):
    from lockgate.engine import commit

    groups: list[list[int]] = []
    written = threading.Event()

    def write(txns: list[Any]) -> None:
        groups.append([t.epoch.number for t in txns])
        for t in txns:
            t.seconds["prepare"] = 0.01
        written.set()

    monkeypatch.setattr(commit, "_MATERIALIZE_EVERY_S", 2.0)
    committer = _materializer_only(monkeypatch, write)
    committer._submit(_committed(1))
    assert written.wait(10), "the first write does not wait"
    for number in (2, 3, 4):  # committed right after: within the interval
        committer._submit(_committed(number))
    deadline = time.monotonic() + 10
    while sum(map(len, groups)) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert groups == [[1], [2, 3, 4]], "the epochs committed during the interval went in one write"


def test_a_drain_writes_what_is_queued_at_once_instead_of_waiting_out_the_interval(monkeypatch):
    from lockgate.engine import commit

    groups: list[list[int]] = []
    write = _recording(groups)

    monkeypatch.setattr(commit, "_MATERIALIZE_EVERY_S", 3600.0)  # without the hurry, a drain would wait an hour
    committer = _materializer_only(monkeypatch, write)
    committer._submit(_committed(1))
    committer._submit(_committed(2))
    drained = threading.Thread(target=committer.drain, daemon=True)
    drained.start()
    drained.join(10)
    assert not drained.is_alive() and groups[0] == [1] and sum(groups, []) == [1, 2]
    assert not committer.hurry.is_set(), "after the drain, writes wait for the interval again"


def test_a_full_materializer_queue_writes_at_once_instead_of_holding_the_runner_for_the_interval(monkeypatch):
    from lockgate.engine import commit

    groups: list[list[int]] = []
    write = _recording(groups)

    monkeypatch.setattr(commit, "_MATERIALIZE_EVERY_S", 3600.0)
    monkeypatch.setattr(commit, "_MATERIALIZE_QUEUE", 2)
    committer = _materializer_only(monkeypatch, write)
    committer._materialize(_committed(1))  # the first write does not wait
    deadline = time.monotonic() + 10
    while not all(f.done() for f in committer.materializing) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert groups == [[1]]

    def settle_three() -> None:
        for number in (2, 3, 4):  # 2 and 3 wait out the interval; 4 finds the queue full and waits for 2
            committer._materialize(_committed(number))

    runner = threading.Thread(target=settle_three, daemon=True)
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "the runner waited for the oldest queued epoch, which was written at once"
    assert groups == [[1], [2, 3]], "the epochs queued meanwhile went in that one write"
