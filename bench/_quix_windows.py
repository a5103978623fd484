"""The Quix Streams side of bench/windows.py: one exactly-once run, result as one JSON line.

Run by bench/windows.py in a subprocess with an interpreter that has ``quixstreams``
(by default its own venv: quixstreams pins ``confluent-kafka<2.13``, which would
downgrade the client that lockgate runs on).  It imports neither lockgate nor polars.

The pipeline is the Quix equivalent of the lockgate one::

    app.dataframe(app.topic(input, value_deserializer="json", timestamp_extractor=<value["ts"]>))
       .tumbling_window(timedelta(minutes=1), grace_ms=timedelta(seconds=5))
       .agg(count=Count(), total=Sum("amount"), biggest=Max("amount"))
       .final(closing_strategy="partition")
       .to_topic(output)

with ``processing_guarantee="exactly-once"`` (the default commit_interval of 5 s: one
Kafka transaction per checkpoint), RocksDB state backed by changelog topics (the
default).  Quix has no table sink, so it writes only the topic.

It stops itself: ``on_message_processed`` counts the input records; after the
``--records``-th the app is asked to stop, which commits the last checkpoint
(a transaction) and closes the consumer before ``app.run()`` returns.

Timing (seconds, ``time.perf_counter``):

steady
    from the first processed record to the return of ``app.run()`` (last checkpoint
    committed, clients closed): the same span as lockgate's ``seconds_from_first_record``.
wall
    from before ``Application(...)`` to the return of ``app.run()``: includes creating
    the clients, topic checks, the group join and ``init_transactions``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--records", type=int, required=True, help="stop after processing this many input records")
    parser.add_argument("--closing", default="partition", choices=["partition", "key"],
                        help="Quix window closing strategy (partition: stream time per partition, like a watermark)")
    parser.add_argument("--grace-ms", type=int, default=5_000)
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    parser.add_argument("--loglevel", default="WARNING")
    args = parser.parse_args(argv)

    import confluent_kafka
    import quixstreams
    from quixstreams import Application
    from quixstreams.dataframe.windows.aggregations import Count, Max, Sum

    t_start = time.perf_counter()
    seen = 0
    t_first: float | None = None
    app: Application | None = None

    def on_processed(_topic: str, _partition: int, _offset: int) -> None:
        nonlocal seen, t_first
        if t_first is None:
            t_first = time.perf_counter()
        seen += 1
        if seen >= args.records:
            assert app is not None
            app.stop()
        elif time.perf_counter() - t_start > args.timeout:
            assert app is not None
            app.stop(fail=True)

    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        processing_guarantee="exactly-once",
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        on_message_processed=on_processed,
        loglevel=args.loglevel,
    )

    def event_time(value, _headers, _timestamp_ms, _timestamp_type) -> int:
        return value["ts"]

    source = app.topic(args.input, value_deserializer="json", timestamp_extractor=event_time)
    sink = app.topic(args.output, value_serializer="json")
    sdf = app.dataframe(source)
    sdf = (
        sdf.tumbling_window(timedelta(minutes=1), grace_ms=args.grace_ms)
        .agg(count=Count(), total=Sum("amount"), biggest=Max("amount"))
        .final(closing_strategy=args.closing)
    )
    sdf.to_topic(sink)
    app.run()
    t_end = time.perf_counter()
    if t_first is None or seen < args.records:
        print(json.dumps({"error": f"processed {seen} of {args.records} records before the app stopped"}))
        return 1
    steady = t_end - t_first
    wall = t_end - t_start
    print(json.dumps({
        "records": seen,
        "steady_seconds": round(steady, 3),
        "wall_seconds": round(wall, 3),
        "join_seconds": round(t_first - t_start, 3),
        "steady_rps": round(seen / steady),
        "wall_rps": round(seen / wall),
        "quixstreams": quixstreams.__version__,
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "python": sys.version.split()[0],
        "closing_strategy": args.closing,
        "grace_ms": args.grace_ms,
        "commit_interval_s": 5.0,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
