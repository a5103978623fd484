"""Stateless throughput: lockgate against the bare confluent-kafka client.

N JSON records (~120 bytes) in 8 partitions are read end to end

(a) by a bare confluent-kafka ``consume`` loop that touches every value: the ceiling
    of the client on this machine;
(b) by a lockgate pipeline ``filter`` (keeps 85 %) + ``with_columns`` (2 columns) +
    ``to_kafka`` with transactions (exactly once, one transaction per micro-batch).

Runs are interleaved (a1 c1 b1 a2 c2 b2 ...) so that noise hits all, each in a fresh
process (``_common.isolated``).  Two rates per run:

steady
    records / seconds from the moment the first records came back from ``consume``
    to the end: (a) the last record read; (b) the end of the last committed
    transaction (the consumer's ``close``).  The group join is left out of both.
wall
    records / seconds including creating the clients and joining the group (and,
    for lockgate, the topic checks and ``init_transactions``), to the consumer's close.

The headline is the ratio of the steady medians; target: b/a >= 0.6.

Usage::

    python bench/stateless.py [--brokers HOST:PORT] [--records 2000000] [--runs 3] [--out bench/results]

Without ``--brokers`` the local broker is started (``lockgate.engine.broker.start()``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import polars as pl
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

import lockgate as lg

PARTITIONS = 8
TARGET = 0.6
BATCH = lg.BatchPolicy(max_records=50_000, max_wait="100ms")

#: the copy loop's producer: lockgate's producer tuning (engine/config.py), without its transactional id and time-out
COPY_PRODUCER = {
    k: v for k, v in lg.Pipeline("copy", brokers="unused:1", state="/tmp/unused").config.producer_options().items()
    if k not in ("transactional.id", "transaction.timeout.ms", "bootstrap.servers")
}

SCHEMA = {"user": pl.String, "url": pl.String, "n": pl.Int64, "ts": pl.Int64, "ref": pl.String}
KEEP_FROM = 150  # filter n >= 150, n uniform in 0..999: keeps 85 %
_SLUGS = ("shoes", "red-jacket", "laptop-stand", "coffee", "garden-hose", "desk-lamp", "headphones", "backpack")


def record(i: int) -> tuple[bytes, bytes, bool]:
    """The ``i``-th input record: (key, value of ~120 bytes, kept by the filter)."""
    user = f"u{(i * 7919) % 50_000:05d}"
    n = (i * 2_654_435_761) % 1000
    page = (i * 31) % 1000
    slug = _SLUGS[i % len(_SLUGS)]
    ref = f"https://www.example.com/s?q={slug}&page={i % 97}"
    value = f'{{"user":"{user}","url":"/p/{page}/{slug}","n":{n},"ts":{1_700_000_000_000 + i},"ref":"{ref}"}}'
    return user.encode(), value.encode(), n >= KEEP_FROM


def setup(brokers: str, topic: str, records: int, compression: str) -> dict[str, Any]:
    """Create the input topic and fill it (not timed)."""
    t0 = time.perf_counter()
    common.create_topic(brokers, topic, PARTITIONS)
    producer = ck.Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": compression,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "enable.idempotence": True,  # a retried request never lands after later ones (the oracle assumes write order)
            "acks": "all",
        }
    )
    errors: list[str] = []

    def on_delivery(err: ck.KafkaError | None, _msg: ck.Message) -> None:
        if err is not None:
            errors.append(err.str())

    kept = nbytes = 0
    for i in range(records):
        key, value, keep = record(i)
        kept += keep
        nbytes += len(value)
        common.produce_waiting(producer, topic, value, key, on_delivery=on_delivery)
        if i % 20_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or errors:
        raise RuntimeError(f"setup: {left} records not delivered, {len(errors)} errors (first: {errors[:1]})")
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "kept_by_filter": kept,
        "value_bytes_mean": round(nbytes / records, 1),
    }


def run_copy(brokers: str, topic: str, records: int, run: int, timeout: float) -> dict[str, Any]:
    """(c): the client's ceiling for any exactly-once pipeline with Kafka output: no decoding at all.

    A bare consume loop that produces 85 % of the records (as the lockgate filter keeps)
    to an output topic with their keys, one transaction with ``send_offsets_to_transaction``
    per 50,000 records, with lockgate's producer settings.
    """
    group = f"bench-copy-{uuid.uuid4().hex[:8]}-r{run}"
    out_topic = f"{group}-out"
    admin = AdminClient({"bootstrap.servers": brokers})
    admin.create_topics([NewTopic(out_topic, num_partitions=8, replication_factor=1)])[out_topic].result(30)
    t_start = time.perf_counter()
    consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": group, **common.BASELINE_CONSUMER})
    producer = ck.Producer({"bootstrap.servers": brokers, "transactional.id": group, **COPY_PRODUCER})
    producer.init_transactions(60)
    consumer.subscribe([topic])
    consume, produce = consumer.consume, producer.produce
    n = in_txn = 0
    t_first: float | None = None
    deadline = time.monotonic() + timeout
    producer.begin_transaction()
    try:
        while n < records:
            msgs = consume(10_000, 1.0)
            if not msgs:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"copy: read {n} of {records} records in {timeout}s")
                continue
            if t_first is None:
                t_first = time.perf_counter()
            for m in msgs:
                v = m.value()
                if v is None:
                    continue  # an event, not a record
                if n % 20 >= 3:
                    while True:
                        try:
                            produce(out_topic, v, m.key())
                            break
                        except BufferError:
                            producer.poll(0.05)
                n += 1
                in_txn += 1
            if in_txn >= 50_000 or n >= records:
                producer.send_offsets_to_transaction(consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 60)
                producer.commit_transaction(60)
                in_txn = 0
                if n < records:
                    producer.begin_transaction()
        t_last = time.perf_counter()
    finally:
        consumer.close()
    t_end = time.perf_counter()
    assert t_first is not None
    return {"run": run, "records": n, "output_topic": out_topic, **common.rates(n, t_start, t_first, t_last, t_end)}


def build_pipeline(name: str, brokers: str, state: str, topic: str, out_topic: str) -> lg.Pipeline:
    """filter (85 %) + with_columns (2 columns) + to_kafka with transactions."""
    pipe = lg.Pipeline(name, brokers=brokers, state=state, batch=BATCH)
    clicks = pipe.source(topic, format=lg.JSON(schema=SCHEMA))
    (
        clicks.filter(pl.col("n") >= KEEP_FROM)
        .with_columns(url_len=pl.col("url").str.len_bytes(), minute=pl.col("ts") // 60_000)
        .to_kafka(out_topic, key="user")
    )
    return pipe


def run_lockgate(brokers: str, topic: str, records: int, run: int, tag: str, state_root: Path, timeout: float) -> dict[str, Any]:
    """(b): a fresh pipeline (fresh group, output topic and state) runs until caught up."""
    name = f"bench-stateless-{tag}-r{run}"
    out_topic = f"{name}-out"
    state = state_root / f"r{run}"
    pipe = build_pipeline(name, brokers, str(state), topic, out_topic)
    timings, metrics = common.timed_run(pipe, records, run, timeout)
    return {
        **timings,
        "output_topic": out_topic,
        "records_out": metrics["records_out"].get(out_topic, 0),
        "dead_letters": sum(metrics["dlq"].values()),
    }


def _rate(x: float) -> str:
    return f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", help="Kafka bootstrap servers (default: start the local broker)")
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench/results", help="directory for the JSON result")
    parser.add_argument("--compression", default="lz4", choices=["none", "lz4", "snappy", "zstd", "gzip"],
                        help="compression of the input topic (lockgate's own producer always uses lz4)")
    parser.add_argument("--check-all", action="store_true", help="check the output count of every run, not only the first")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the benchmark's topics at the end")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    args = parser.parse_args(argv)

    brokers = common.resolve_brokers(args.brokers)
    tag = f"{common.stamp().lower()}-{uuid.uuid4().hex[:4]}"
    topic = f"bench-stateless-in-{tag}"
    created = [topic]
    state_root = Path(tempfile.mkdtemp(prefix="lockgate-bench-stateless-"))
    print(f"# brokers {brokers}; input topic {topic}: {args.records:,} records, {PARTITIONS} partitions, "
          f"compression {args.compression}", file=sys.stderr)
    try:
        prepared = setup(brokers, topic, args.records, args.compression)
        print(f"# setup: {prepared}", file=sys.stderr)
        baseline: list[dict[str, Any]] = []
        lockgate_runs: list[dict[str, Any]] = []
        copies: list[dict[str, Any]] = []
        checks: list[dict[str, Any]] = []
        for run in range(1, args.runs + 1):
            a = common.isolated(common.bare_consume, brokers, topic, args.records, run, args.timeout)
            baseline.append(a)
            print(f"# a{run} bare consumer: {_rate(a['steady_rps'])} rec/s steady, {_rate(a['wall_rps'])} rec/s wall "
                  f"({a['steady_seconds']}s + join {a['join_seconds']}s)", file=sys.stderr)
            c = common.isolated(run_copy, brokers, topic, args.records, run, args.timeout)
            copies.append(c)
            created.append(c["output_topic"])
            print(f"# c{run} bare EOS copy: {_rate(c['steady_rps'])} rec/s steady", file=sys.stderr)
            b = common.isolated(run_lockgate, brokers, topic, args.records, run, tag, state_root, args.timeout)
            lockgate_runs.append(b)
            created += [b["output_topic"], f"{b['pipeline']}-dlq"]
            print(f"# b{run} lockgate:      {_rate(b['steady_rps'])} rec/s steady, {_rate(b['wall_rps'])} rec/s wall "
                  f"({b['steady_seconds']}s + join {b['join_seconds']}s, {b['batches']} batches, "
                  f"{b['records_out']:,} out)", file=sys.stderr)
            if run == 1 or args.check_all:  # correctness guard, not timed
                seen = common.count_committed(brokers, b["output_topic"])
                check = {"run": run, "expected": prepared["kept_by_filter"], "read_committed": seen,
                         "ok": seen == prepared["kept_by_filter"] and b["dead_letters"] == 0}
                checks.append(check)
                print(f"# check r{run}: output topic holds {seen:,} committed records, expected "
                      f"{prepared['kept_by_filter']:,}, dead letters {b['dead_letters']}: {'OK' if check['ok'] else 'MISMATCH'}",
                      file=sys.stderr)
    finally:
        if not args.keep_topics:
            common.delete_topics(brokers, created)
        shutil.rmtree(state_root, ignore_errors=True)

    a_steady = common.median([r["steady_rps"] for r in baseline])
    b_steady = common.median([r["steady_rps"] for r in lockgate_runs])
    a_wall = common.median([r["wall_rps"] for r in baseline])
    b_wall = common.median([r["wall_rps"] for r in lockgate_runs])
    c_steady = common.median([r["steady_rps"] for r in copies])
    ratio = b_steady / a_steady
    ratio_wall = b_wall / a_wall
    result = {
        "benchmark": "stateless",
        "records": args.records,
        "partitions": PARTITIONS,
        "runs": args.runs,
        "input": {"compression": args.compression, **prepared},
        "pipeline": "source JSON(user, url, n, ts: Int64, ref) -> filter(n >= 150) -> "
                    "with_columns(url_len, minute) -> to_kafka(key=user, JSON), transactional",
        "batch_policy": {"max_records": BATCH.max_records, "max_wait_s": BATCH.max_wait_s},
        "baseline_consumer": common.BASELINE_CONSUMER,
        "brokers": brokers,
        "machine": common.machine(),
        "baseline": {"steady_rps_median": a_steady, "wall_rps_median": a_wall, "per_run": baseline},
        "bare_eos_copy": {"steady_rps_median": c_steady, "per_run": copies},
        "ratio_copy_over_baseline": round(c_steady / a_steady, 3),
        "ratio_lockgate_over_copy": round(b_steady / c_steady, 3),
        "lockgate": {"steady_rps_median": b_steady, "wall_rps_median": b_wall, "per_run": lockgate_runs},
        "ratio": round(ratio, 3),
        "ratio_wall": round(ratio_wall, 3),
        "target": TARGET,
        "meets_target": ratio >= TARGET,
        "checks": checks,
    }
    path = common.write_json(args.out, "stateless", result)
    print(json.dumps(result, indent=2))
    print()
    print(common.markdown_table(
        ["benchmark", "records", "baseline rec/s (a)", "bare EOS copy rec/s (c)", "lockgate rec/s (b)", "ratio b/a", "ratio c/a", "ratio b/c", "target b/a"],
        [
            ["stateless (steady, median of %d)" % args.runs, f"{args.records:,}", _rate(a_steady), _rate(c_steady), _rate(b_steady),
             f"{ratio:.2f}", f"{c_steady / a_steady:.2f}", f"{b_steady / c_steady:.2f}", f">= {TARGET} {'met' if ratio >= TARGET else 'NOT met'}"],
            ["stateless (incl. group join)", f"{args.records:,}", _rate(a_wall), "-", _rate(b_wall), f"{ratio_wall:.2f}", "-", "-", "-"],
        ],
    ))
    print(f"\n# written to {path}", file=sys.stderr)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
