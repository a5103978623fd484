"""Decoding the same records as JSON and as Avro (Confluent wire format, a real registry), a batch at a time, beside Quix Streams' Avro deserializer.

One frame of Nexmark bids (``--records``, default 1,000,000: ``auction``, ``bidder``,
``price``, ``channel``, ``url``, ``date_time``) becomes Kafka values twice: JSON lines
(what ``lg.JSON`` sources read) and Avro in the Confluent wire format, its schema
registered in the local registry (``lockgate registry``, started if ``--registry`` is
not given).  Each engine then decodes every value into columns, timed alone (the
broker's fetch is the same for all and is left out), in batches of ``--batch``
values, as a source's decode step gets them:

- ``lockgate json``: ``lg.JSON(schema=...).decode(values)`` (one ``pl.read_ndjson`` per batch);
- ``lockgate avro``: ``lg.Avro(registry=...)``'s decode (one ``pl.read_avro`` per writer schema and batch);
- ``lockgate protobuf``: ``lg.Protobuf(registry=..., message=...)``'s decode (one ptars call per batch: Rust,
  messages to an Arrow record batch); ``date_time`` is an int64 of epoch ms there (a proto3 scalar);
- ``protobuf loop``: the other honest way to read Protobuf in Python (it has no container
  format to wrap bodies in, so the Avro trick does not apply): protobuf's own
  ``ParseFromString`` per message (upb, C) into column lists, then one frame;
- ``quix avro``: Quix Streams' ``AvroDeserializer`` with the same registry (fastavro per
  record, in Quix's own venv: ``bench/windows.py`` makes it), into dicts, Quix's own form of
  a record (no frame is built: that would only add to its time).

The table gives records/s
(median of ``--runs``) and each one's ratio to lockgate's JSON decode: the ratio of the
medians, and the median of each run's own ratio (the runs are interleaved, so a run's
decoders saw the same machine; on a noisy machine that is the steadier figure).

Usage::

    python bench/formats.py [--registry URL] [--records 1000000] [--batch 10000] [--runs 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lockgate as lg  # noqa: E402
from bench import _common as common  # noqa: E402
from bench.nexmark.generator import BID_SCHEMA, generate  # noqa: E402
from bench.windows import quix_python  # noqa: E402
from lockgate.engine import avro_codec, schema_registry  # noqa: E402
from lockgate.engine.protobuf_format import compile_proto  # noqa: E402

QUIX_WORKER = r'''
import struct, sys, time
from quixstreams.models.serializers.avro import AvroDeserializer
from quixstreams.models.serializers import SerializationContext
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig

path, url, topic, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = open(path, "rb").read()
count = struct.unpack_from("<q", data, 0)[0]
lengths = struct.unpack_from(f"<{count}q", data, 8)
values, at = [], 8 + 8 * count
for n in lengths:
    values.append(data[at:at + n]); at += n
deserialize = AvroDeserializer(schema_registry_client_config=SchemaRegistryClientConfig(url=url))
ctx = SerializationContext(topic=topic, field="value")
deserialize(values[0], ctx)  # the writer schema fetched once, as a running consumer has it
start = time.perf_counter()
rows = 0
for lo in range(0, len(values), batch):
    records = [deserialize(v, ctx) for v in values[lo:lo + batch]]  # Quix's own form of a record: a dict
    rows += len(records)
print(f"{rows} {time.perf_counter() - start:.6f}")
'''


def _values(records: int) -> tuple[pl.DataFrame, dict[str, pl.DataType]]:
    bids = generate(int(records * 50 / 46) + 50, seed=3).bids.head(records)
    schema = {**BID_SCHEMA, "date_time": pl.Datetime("ms")}
    return bids.with_columns(pl.col("date_time").cast(pl.Datetime("ms"))), schema


def _timed(decode: Any, values: list[bytes], batch: int) -> float:
    start = time.perf_counter()
    rows = 0
    for lo in range(0, len(values), batch):
        out = decode(values[lo:lo + batch])
        assert not out.errors and not out.schema_errors, (out.errors[:3], out.schema_errors[:3])
        rows += out.frame.height
    seconds = time.perf_counter() - start
    assert rows == len(values), (rows, len(values))
    return seconds


def _proto_loop(text: str, message_name: str) -> Any:
    """protobuf's own parser, a message at a time, into columns (the alternative ptars was measured against)."""
    from google.protobuf import message_factory

    descriptor = compile_proto(text).FindMessageTypeByName(message_name)
    message = message_factory.GetMessageClass(descriptor)()
    names = [f.name for f in descriptor.fields]

    def decode(values: list[bytes]) -> Any:
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for value in values:                      # the per-record loop being measured
            message.ParseFromString(value[6:])    # the 5-byte header and the message index 0
            for n in names:
                columns[n].append(getattr(message, n))
        return SimpleNamespace(frame=pl.DataFrame(columns), errors=[], schema_errors=[])

    return decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registry", help="the registry's URL (default: the local one, started if it does not run)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="values per decode call (a source's batch)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quix-python", help="the interpreter with quixstreams (default: the bench venv)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if args.registry:
        url = args.registry
    else:
        from lockgate.engine import registry

        url = registry.start().url
    frame, schema = _values(args.records)
    topic = f"bench-formats-{time.time_ns()}"
    avro = avro_codec.avro_schema(schema, f"{topic}-value")
    schema_id = schema_registry.register(url, f"{topic}-value", json.dumps(avro), "AVRO", "bench/formats.py")
    json_values = frame.with_columns(pl.col("date_time").dt.epoch("ms")).write_ndjson().encode().splitlines()
    avro_values = avro_codec.encode_rows(frame, avro, schema_id)
    flat = frame.with_columns(pl.col("date_time").dt.epoch("ms"))
    proto_sink = lg.Protobuf(registry=url).for_sink(f"{topic}-proto", dict(flat.schema), "bench/formats.py")
    proto_values = proto_sink.encode(flat)
    sizes = {k: sum(map(len, v)) / len(v) for k, v in (("json", json_values), ("avro", avro_values), ("protobuf", proto_values))}
    print(f"# {args.records:,} records, mean value {sizes['json']:.0f} bytes as JSON, {sizes['avro']:.0f} as Avro, "
          f"{sizes['protobuf']:.0f} as Protobuf", file=sys.stderr)

    json_fmt = lg.JSON(schema=schema)
    avro_fmt = lg.Avro(registry=url).for_source(topic)
    proto_fmt = lg.Protobuf(registry=url).for_source(f"{topic}-proto")
    # the same rows each way
    assert avro_fmt.decode(avro_values[:1000]).frame.equals(json_fmt.decode(json_values[:1000]).frame)
    assert proto_fmt.decode(proto_values[:1000]).frame.equals(flat.head(1000))
    proto_loop = _proto_loop(proto_sink.schema, proto_sink.message)
    assert proto_loop(proto_values[:1000]).frame.equals(flat.head(1000))
    python = quix_python(args.quix_python)
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        lengths = np.fromiter(map(len, avro_values), dtype=np.int64)
        f.write(np.int64(len(avro_values)).tobytes() + lengths.tobytes() + b"".join(avro_values))
        path = f.name
    runs: dict[str, list[float]] = {"lockgate json": [], "lockgate avro": [], "lockgate protobuf": [], "protobuf loop": [], "quix avro": []}
    for run in range(1, args.runs + 1):  # interleaved
        runs["lockgate json"].append(args.records / _timed(json_fmt.decode, json_values, args.batch))
        runs["lockgate avro"].append(args.records / _timed(avro_fmt.decode, avro_values, args.batch))
        runs["lockgate protobuf"].append(args.records / _timed(proto_fmt.decode, proto_values, args.batch))
        runs["protobuf loop"].append(args.records / _timed(proto_loop, proto_values, args.batch))
        done = subprocess.run([python, "-c", QUIX_WORKER, path, url, topic, str(args.batch)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the Quix Streams side failed: {done.stderr[-3000:]}")
        rows, seconds = done.stdout.split()
        assert int(rows) == args.records, done.stdout
        runs["quix avro"].append(args.records / float(seconds))
        print(f"# run {run}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in runs.items()), file=sys.stderr)
    Path(path).unlink(missing_ok=True)
    medians = {k: common.median(v) for k, v in runs.items()}
    base = medians["lockgate json"]
    # each run's ratio to the JSON decode of the same run (interleaved, so paired), then their median
    paired = {k: common.median([x / j for x, j in zip(v, runs["lockgate json"], strict=True)]) for k, v in runs.items()}
    result = {"benchmark": "formats", "records": args.records, "batch": args.batch, "runs": args.runs, "machine": common.machine(),
              "value_bytes": sizes, "records_per_s": runs, "median_records_per_s": medians,
              "ratio_to_lockgate_json": {k: round(v / base, 2) for k, v in medians.items()},
              "median_of_run_ratios_to_lockgate_json": {k: round(v, 2) for k, v in paired.items()}}
    out = common.write_json(args.out, "formats", result)
    print(common.markdown_table(
        ["decoder", f"records/s (median of {args.runs})", "/ lockgate JSON (of the medians)", "/ lockgate JSON (median of the runs' ratios)"],
        [[k, f"{v:,.0f}", f"{v / base:.2f}", f"{paired[k]:.2f}"] for k, v in medians.items()],
    ))
    print(f"\n# written to {out}")


if __name__ == "__main__":
    main()
