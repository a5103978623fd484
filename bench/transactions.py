"""Back-to-back Kafka transactions on confluent-kafka: what ``retry.backoff.ms`` costs when the coordinator is busy.

An exactly-once runner opens its next transaction right after the last one's commit.  The
transaction coordinator answers ``CONCURRENT_TRANSACTIONS`` while it still writes the last
one's markers, and librdkafka retries ``AddOffsetsToTxn`` (``send_offsets_to_transaction``)
after ``retry.backoff.ms``: 100 ms by default (``AddPartitionsToTxn`` has its own 20 ms).
lockgate's producer sets 10 ms (``engine/config.py``).

Each configuration runs ``--transactions`` transactions, one after the other with no pause,
each producing ``--records`` small records to a 4-partition topic, then
``send_offsets_to_transaction`` (4 partitions of an input topic, a real consumer group) and
``commit_transaction``; runs are interleaved.  The table gives the p50/p99/max of
``send_offsets_to_transaction`` and of ``commit_transaction`` (ms, medians over the runs)
and how many transactions waited more than 50 ms to add their offsets.

``--fill-ms`` keeps each transaction open that long, producing 250 records every 5 ms
(as a 50k ev/s stream fills a 100 ms epoch), and ``--load`` runs a producer of that many
records/s to another topic meanwhile; the produced records are then flushed before
``send_offsets_to_transaction``, so ``flush`` (the produce acks), ``send_offsets`` and the
commit (``EndTxn``) are timed apart: where a commit's tail goes.

Usage::

    python bench/transactions.py [--brokers 127.0.0.1:9092] [--transactions 300] [--records 1000] [--runs 3]
                                 [--backoffs 100,10] [--fill-ms 0] [--load 0] [--out bench/results]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _common as common  # noqa: E402


def _load(brokers: str, topic: str, rate: int, stop: threading.Event) -> None:
    """Produce ``rate`` small records/s to ``topic`` until ``stop`` (the broker's other work while transactions commit)."""
    producer = ck.Producer({"bootstrap.servers": brokers, "linger.ms": 1, "enable.idempotence": True,
                            "queue.buffering.max.messages": 1_000_000})
    start, sent = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            try:
                producer.produce(topic, b'{"k": 1, "v": 2, "ts": 3}', str(sent % 1000).encode())
                sent += 1
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        time.sleep(0.01)
    producer.flush(30)


def _run(brokers: str, backoff_ms: int, transactions: int, records: int, fill_ms: int = 0, load: int = 0) -> dict[str, Any]:
    """One configuration: ``transactions`` back-to-back transactions; the times of their two calls."""
    tag = uuid.uuid4().hex[:8]
    source, sink = f"bench-txn-in-{tag}", f"bench-txn-out-{tag}"
    common.create_topic(brokers, source, 4)
    common.create_topic(brokers, sink, 4)
    stop = threading.Event()
    if load:
        common.create_topic(brokers, f"bench-txn-load-{tag}", 4)
        threading.Thread(target=_load, args=(brokers, f"bench-txn-load-{tag}", load, stop), daemon=True).start()
    seed = ck.Producer({"bootstrap.servers": brokers})
    for i in range(100):
        seed.produce(source, b"x", partition=i % 4)
    seed.flush(30)
    consumer = ck.Consumer({"bootstrap.servers": brokers, "group.id": f"bench-txn-{tag}", "auto.offset.reset": "earliest",
                            "enable.auto.commit": False})
    consumer.subscribe([source])
    deadline = time.monotonic() + 30
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.1)
    producer = ck.Producer({"bootstrap.servers": brokers, "transactional.id": f"bench-txn-{tag}", "linger.ms": 5,
                            "retry.backoff.ms": backoff_ms})
    producer.init_transactions(60)
    offsets_ms, commit_ms, flush_ms = [], [], []
    for n in range(transactions):
        producer.begin_transaction()
        if fill_ms:
            opened = time.perf_counter()
            while time.perf_counter() - opened < fill_ms / 1000:
                for i in range(250):
                    producer.produce(sink, b"v", partition=i % 4)
                producer.poll(0)
                time.sleep(0.005)
            before = time.perf_counter()
            producer.flush(30)
            flush_ms.append((time.perf_counter() - before) * 1000)
        else:
            for i in range(records):
                producer.produce(sink, b"v", partition=i % 4)
        t0 = time.perf_counter()
        producer.send_offsets_to_transaction([ck.TopicPartition(source, p, n + 1) for p in range(4)], consumer.consumer_group_metadata())
        t1 = time.perf_counter()
        producer.commit_transaction()
        commit_ms.append((time.perf_counter() - t1) * 1000)
        offsets_ms.append((t1 - t0) * 1000)
    stop.set()
    consumer.close()
    common.delete_topics(brokers, [source, sink] + ([f"bench-txn-load-{tag}"] if load else []))
    o, c, f = np.array(offsets_ms), np.array(commit_ms), np.array(flush_ms or [0.0])
    return {"flush_p50": float(np.percentile(f, 50)), "flush_p99": float(np.percentile(f, 99)),"offsets_p50": float(np.percentile(o, 50)), "offsets_p99": float(np.percentile(o, 99)), "offsets_max": float(o.max()),
            "commit_p50": float(np.percentile(c, 50)), "commit_p99": float(np.percentile(c, 99)), "commit_max": float(c.max()),
            "offsets_over_50ms": int((o > 50).sum()), "transactions": transactions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers")
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--records", type=int, default=1000, help="records per transaction")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backoffs", default="100,10", help="retry.backoff.ms values, comma-separated")
    parser.add_argument("--fill-ms", type=int, default=0, help="keep each transaction open this long, producing (0: back to back)")
    parser.add_argument("--load", type=int, default=0, help="records/s of a background producer to another topic")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    brokers = common.resolve_brokers(args.brokers)
    backoffs = [int(b) for b in args.backoffs.split(",")]
    runs: dict[int, list[dict[str, Any]]] = {b: [] for b in backoffs}
    for run in range(1, args.runs + 1):  # interleaved
        for backoff in backoffs:
            runs[backoff].append(_run(brokers, backoff, args.transactions, args.records, args.fill_ms, args.load))
            r = runs[backoff][-1]
            print(f"# run {run} retry.backoff.ms {backoff}: send_offsets p50 {r['offsets_p50']:.1f} p99 {r['offsets_p99']:.1f} "
                  f"max {r['offsets_max']:.1f} ms, over 50 ms {r['offsets_over_50ms']}/{args.transactions}; "
                  f"commit p50 {r['commit_p50']:.1f} p99 {r['commit_p99']:.1f} ms", file=sys.stderr)
    medians = {b: {k: common.median([r[k] for r in rs]) for k in rs[0]} for b, rs in runs.items()}
    out = common.write_json(args.out, "transactions", {
        "benchmark": "transactions", "transactions": args.transactions, "records": args.records, "runs": args.runs,
        "fill_ms": args.fill_ms, "load": args.load,
        "machine": common.machine(), "runs_by_backoff": {str(b): rs for b, rs in runs.items()},
        "medians": {str(b): m for b, m in medians.items()}})
    print(common.markdown_table(
        ["retry.backoff.ms", "flush p50 / p99 ms", "send_offsets p50 / p99 / max ms", "commit p50 / p99 ms",
         f"send_offsets over 50 ms (of {args.transactions})"],
        [[b, f"{m['flush_p50']:.1f} / {m['flush_p99']:.1f}" if args.fill_ms else "-",
          f"{m['offsets_p50']:.1f} / {m['offsets_p99']:.1f} / {m['offsets_max']:.1f}", f"{m['commit_p50']:.1f} / {m['commit_p99']:.1f}",
          f"{m['offsets_over_50ms']:.0f}"] for b, m in medians.items()],
    ))
    print(f"\n# written to {out}")


if __name__ == "__main__":
    main()
