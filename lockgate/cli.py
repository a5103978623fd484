"""The ``lockgate`` command: ``broker start|stop|status``, ``run FILE``, ``demo``, ``state list|show|export``."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from pathlib import Path

from lockgate.operators.errors import LockgateError

__all__ = ["main"]


def _broker(args: argparse.Namespace) -> int:
    from lockgate.engine import broker

    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.action == "start":
        info = broker.start(data_dir=data_dir, port=args.port)
        print(info.bootstrap)
    elif args.action == "stop":
        print("stopped" if broker.stop(data_dir=data_dir) else "no broker was running")
    else:
        info = broker.status(data_dir=data_dir)
        if info is None:
            print("not running")
            return 3
        print(f"running pid={info.pid} bootstrap={info.bootstrap} data_dir={info.data_dir}")
    return 0


class JsonLines(logging.Formatter):
    """One JSON object per log event: ``ts``, ``level``, ``logger``, ``message`` (and ``error``)."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import UTC, datetime

        event = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            event["error"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def _run(args: argparse.Namespace) -> int:
    import os

    from lockgate.engine.service import load_pipeline, serve

    if args.config is not None:
        if not Path(args.config).is_file():
            raise LockgateError(f"--config {args.config}: no such file")
        os.environ["LOCKGATE_CONFIG"] = str(Path(args.config).resolve())  # read when the file creates its lg.Pipeline
    pipe = load_pipeline(args.file, args.pipeline)
    if args.metrics_port is not None:
        from lockgate.engine.prometheus import serve_metrics

        serve_metrics(pipe.name, pipe._metrics, args.metrics_port)
        logging.getLogger("lockgate.service").info("metrics: http://0.0.0.0:%d/metrics", args.metrics_port)
    summary = serve(pipe, until=args.until, max_batches=args.max_batches)
    logging.getLogger("lockgate.service").info("stopped: %s", summary)
    print(f"lockgate run: {summary.batches} batches, {summary.records} records, stopped ({summary.stopped_because})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lockgate.engine.demo import run_demo

    brokers = args.brokers
    if brokers is None:
        from lockgate.engine import broker

        print("starting the local Kafka broker (first time: Maven fetches Apache Kafka's jars) ...")
        brokers = broker.start().bootstrap
        print(f"broker at {brokers}")
    run_demo(brokers, args.state, args.records)
    return 0


def _state_frame(args: argparse.Namespace):  # -> pl.LazyFrame
    """The committed rows of a table (``NAME``) or a window's state (``PIPELINE/OPERATOR``)."""
    from datetime import datetime

    import polars as pl

    from lockgate.operators.errors import PipelineDefinitionError
    from lockgate.storage.state import read_state
    from lockgate.storage.tables import read_table

    as_of: int | datetime | None = None
    if args.as_of is not None:
        try:
            as_of = int(args.as_of)
        except ValueError:
            try:
                as_of = datetime.fromisoformat(args.as_of)
            except ValueError:
                raise PipelineDefinitionError(
                    f"--as-of {args.as_of!r}: give an epoch number (e.g. 42) or an ISO datetime (e.g. 2026-11-25T13:00:00)"
                ) from None
    if "/" in args.name:
        pipeline, operator = args.name.split("/", 1)
        frame = read_state(args.state, pipeline, operator, as_of=as_of)
    else:
        frame = read_table(args.state, args.name, as_of=as_of)
    if getattr(args, "where", None):
        try:
            frame = frame.filter(pl.sql_expr(args.where))
            frame.collect_schema()
        except Exception as exc:  # noqa: BLE001 - Polars raises several kinds for a bad predicate
            first = str(exc).strip().splitlines()[0]
            raise PipelineDefinitionError(
                f"--where {args.where!r}: {first}; give a SQL predicate, e.g. --where \"page = '/home' AND n > 3\" "
                "(double-quote a column whose name is an SQL word: \"user\" = 'u1')"
            ) from None
    return frame


def _state(args: argparse.Namespace) -> int:
    import polars as pl

    from lockgate.storage.state import list_states
    from lockgate.storage.tables import list_tables

    if args.action == "list":
        for name in list_tables(args.state):
            print(f"table  {name}")
        for pipeline, operator in list_states(args.state):
            print(f"state  {pipeline}/{operator}")
        return 0
    frame = _state_frame(args)
    if args.action == "export":
        out = Path(args.out)
        frame.collect().write_parquet(out)
        print(f"wrote {out}")
        return 0
    # not frame.head(n): Polars turns filter + head into one Lance head(n, filter=...) call, after which
    # this process aborts at exit (polars 2.1 + pylance 14, seen here); a full filtered read does not
    shown = frame.collect().head(args.limit)
    with pl.Config(tbl_rows=args.limit, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200):
        print(shown)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lockgate", description="A columnar micro-batch stream engine: Kafka, Polars, LanceDB, exactly once.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("broker", help="start, stop or check the local Kafka broker (KRaft, one node)")
    b.add_argument("action", choices=["start", "stop", "status"])
    b.add_argument("--data-dir", help="broker data directory (default ~/.lockgate/broker)")
    b.add_argument("--port", type=int, help="client port (default 9092)")
    b.set_defaults(fn=_broker)

    r = sub.add_parser("run", help="run the lg.Pipeline a .py file or a notebook (.ipynb) defines, until SIGTERM/SIGINT")
    r.add_argument("file")
    r.add_argument("--pipeline", help="the pipeline's name, when the file defines several")
    r.add_argument("--until", choices=["caught_up"], help="stop when the lag is 0")
    r.add_argument("--max-batches", type=int)
    r.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (/metrics)")
    r.add_argument("--config", help="a TOML file with [pipeline], [batch] and [kafka] tables; LOCKGATE_* variables win over it")
    r.set_defaults(fn=_run)

    s = sub.add_parser("state", help="list, show or export committed tables and window state")
    s_sub = s.add_subparsers(dest="action", required=True)
    s_list = s_sub.add_parser("list", help="the tables and window states under STATE")
    s_list.add_argument("state", help="the pipeline's state directory or URI")
    s_show = s_sub.add_parser("show", help="print committed rows of a table NAME or a window state PIPELINE/OPERATOR")
    s_show.add_argument("state")
    s_show.add_argument("name", help="a table name, or PIPELINE/OPERATOR for a window's open state")
    s_show.add_argument("--as-of", help="an epoch number or an ISO datetime: the rows committed by then")
    s_show.add_argument("--where", help="a SQL predicate, e.g. \"page = '/home' AND n > 3\"")
    s_show.add_argument("--limit", type=int, default=20)
    s_export = s_sub.add_parser("export", help="write committed rows of NAME to a Parquet file")
    s_export.add_argument("state")
    s_export.add_argument("name")
    s_export.add_argument("out", help="the .parquet file to write")
    s_export.add_argument("--as-of")
    s_export.add_argument("--where")
    s.set_defaults(fn=_state)

    d = sub.add_parser("demo", help="produce a sample clickstream, process it exactly once, print the committed output")
    d.add_argument("--brokers", help="Kafka bootstrap servers (default: start the local broker)")
    d.add_argument("--state", default="./lockgate-demo-state", help="LanceDB state directory")
    d.add_argument("--records", type=int, default=50_000)
    d.set_defaults(fn=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lockgate`` command."""
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if args.log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to stderr
    try:
        return args.fn(args)
    except LockgateError as exc:
        print(f"lockgate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
