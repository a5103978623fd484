"""The per-record floor of the Python Kafka client on this machine, without a broker.

Why ``bench/stateless.py`` cannot reach b/a >= 0.6: (a) there is ``consume`` plus
``value()`` per record and nothing else, while every exactly-once copy also calls
``produce`` once per output record, a C call that holds the GIL.  This script measures
that call in isolation (the messages only go to librdkafka's local queue; the
producer points at an unused port), next to ``produce_batch`` (which takes a list
of dicts, so it costs more in Python, not less).

Ceiling of b/a for a pipeline that produces a fraction ``f`` of its input, if
everything else were free: ``a_us / (a_us + f * produce_us)``, with ``a_us`` the
per-record time of (a) measured by ``bench/stateless.py`` in the same session.

Usage::

    python bench/client_floor.py [--records 200000] [--runs 5] [--a-us 0.7] [--keep 0.85] [--out bench/results]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import confluent_kafka as ck

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

_OPTIONS = {
    "bootstrap.servers": "127.0.0.1:9",  # discard port: nothing is ever delivered
    "queue.buffering.max.messages": 2_000_000,
    "queue.buffering.max.kbytes": 2_000_000,
    "log_level": 0,
}


def _values(n: int) -> tuple[list[bytes], list[bytes]]:
    values = [b'{"user":"u%d","url":"/p/%d","n":%d,"ts":%d,"ref":"x"}' % (i, i % 100, i % 1000, i) for i in range(n)]
    keys = [b"u%d" % (i % 1000) for i in range(n)]
    return values, keys


def _produce(values: list[bytes], keys: list[bytes]) -> float:
    producer = ck.Producer(_OPTIONS)
    produce = producer.produce
    t0 = time.perf_counter()
    for v, k in zip(values, keys, strict=True):
        produce("t", v, k)
    elapsed = time.perf_counter() - t0
    producer.purge()
    return elapsed / len(values) * 1e6


def _produce_batch(values: list[bytes], keys: list[bytes]) -> float:
    producer = ck.Producer(_OPTIONS)
    t0 = time.perf_counter()
    producer.produce_batch("t", [{"value": v, "key": k} for v, k in zip(values, keys, strict=True)])
    elapsed = time.perf_counter() - t0
    producer.purge()
    return elapsed / len(values) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--a-us", type=float, default=None, help="per-record µs of (a) from bench/stateless.py, for the ceiling")
    parser.add_argument("--keep", type=float, default=0.85, help="fraction of the input the pipeline produces")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    values, keys = _values(args.records)
    single, batch = [], []
    for _ in range(args.runs):  # interleaved
        single.append(_produce(values, keys))
        batch.append(_produce_batch(values, keys))
    produce_us, batch_us = common.median(single), common.median(batch)
    payload = {
        "benchmark": "client_floor",
        "machine": common.machine(),
        "records": args.records,
        "runs": args.runs,
        "produce_us_per_record": round(produce_us, 3),
        "produce_batch_us_per_record": round(batch_us, 3),
        "all_produce_us": [round(x, 3) for x in single],
        "all_produce_batch_us": [round(x, 3) for x in batch],
    }
    ceiling = "-"
    if args.a_us:
        payload["ceiling_b_over_a"] = round(args.a_us / (args.a_us + args.keep * produce_us), 3)
        ceiling = f"{payload['ceiling_b_over_a']:.2f}"
    path = common.write_json(args.out, "client_floor", payload)
    print(common.markdown_table(
        ["benchmark", "records", "produce() µs/rec", "produce_batch() µs/rec", "ceiling b/a (if all else free)"],
        [[f"client floor (median of {args.runs})", f"{args.records:,}", f"{produce_us:.2f}", f"{batch_us:.2f}", ceiling]],
    ))
    print(f"\n# written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
