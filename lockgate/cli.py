"""The ``lockgate`` command: ``broker start|stop|status``, ``registry start|stop|status``, ``run FILE``, ``demo``, ``sample clicks``, ``state list|show|export``.

Every command and option explains itself: ``lockgate --help``, ``lockgate COMMAND --help``.

Examples
--------
>>> from lockgate.cli import _parser
>>> args = _parser().parse_args(["sample", "clicks", "--brokers", "localhost:9092", "--records", "1000"])
>>> args.kind, args.topic, args.records
('clicks', None, 1000)
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from pathlib import Path

from lockgate.errors import LockgateError

__all__ = ["main"]

CLICKS_TOPIC = "lockgate-demo-clicks"  # engine.demo.CLICKS, named here so that --help imports no engine


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


def _registry(args: argparse.Namespace) -> int:
    from lockgate.engine import registry

    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.action == "start":
        print(registry.start(data_dir=data_dir, port=args.port).url)
    elif args.action == "stop":
        print("stopped" if registry.stop(data_dir=data_dir) else "no registry was running")
    else:
        info = registry.status(data_dir=data_dir)
        if info is None:
            print("not running")
            return 3
        print(f"running pid={info.pid} url={info.url} data_dir={info.data_dir}")
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


def _brokers(given: str | None) -> str:
    """``given``, or the local broker's address (started unless it runs)."""
    if given is not None:
        return given
    from lockgate.engine import broker

    print("starting the local Kafka broker (first time: Maven fetches Apache Kafka's jars) ...")
    brokers = broker.start().bootstrap
    print(f"broker at {brokers}")
    return brokers


def _demo(args: argparse.Namespace) -> int:
    from lockgate.engine.demo import run_demo

    run_demo(_brokers(args.brokers), args.state, args.records)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from lockgate.engine.demo import produce_clicks

    brokers = _brokers(args.brokers)
    topic = args.topic or args.kind
    produce_clicks(brokers, args.records, topic, partitions=args.partitions)
    print(f"produced {args.records:,} sample {args.kind} to {topic!r} on {brokers}")
    return 0


def _state_frame(args: argparse.Namespace):  # -> pl.LazyFrame
    """The committed rows of a table (``NAME``) or a window's state (``PIPELINE/OPERATOR``)."""
    from datetime import datetime

    import polars as pl

    from lockgate.errors import PipelineDefinitionError
    from lockgate.storage.sink_tables import read_table
    from lockgate.storage.state import read_state

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

    from lockgate.engine.config import overrides, plain_storage_options
    from lockgate.storage.lance_io import use_storage_options
    from lockgate.storage.sink_tables import list_tables
    from lockgate.storage.state import list_states

    given = overrides().get("storage_options", {})  # a state on S3: LOCKGATE_STORAGE_OPTIONS__ENDPOINT ...
    use_storage_options(args.state, plain_storage_options(given))
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


_RUN_FILE_HELP = (
    "a Python file (.py) or a Jupyter notebook (.ipynb) that defines an lg.Pipeline. A .py file runs with "
    "__name__ == '__lockgate__', so its `if __name__ == '__main__':` block does not; a notebook's code cells run "
    "in order, except cells tagged skip-in-service and IPython %%magic / !shell lines"
)


class _Help(argparse.HelpFormatter):
    """Appends an option's default to its help, unless there is none or the help names it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    fmt = _Help
    parser = argparse.ArgumentParser(
        prog="lockgate", formatter_class=fmt,
        description="A columnar micro-batch stream engine: Kafka in, Polars operators, LanceDB tables, exactly once.",
        epilog="`lockgate COMMAND --help` explains a command and its options.",
    )
    parser.add_argument("--log-level", default="WARNING", help="the lowest level of log lines written to stderr: DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="text: one readable line per log event; json: one JSON object per line (ts, level, logger, message)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    b = sub.add_parser("broker", formatter_class=fmt, help="start, stop or check the local Kafka broker (KRaft, one node)",
                       description="The local single-node Kafka broker (Apache Kafka in KRaft mode on this machine's JDK; "
                                   "the first start fetches its jars with Maven).")
    b.add_argument("action", choices=["start", "stop", "status"],
                   help="start: start it unless it runs, and print its bootstrap address; stop: stop it; "
                        "status: print its pid and address (exit code 3 when it does not run)")
    b.add_argument("--data-dir", help="the broker's data directory (default ~/.lockgate/broker)")
    b.add_argument("--port", type=int, help="the client port of a broker started now (default: the port this data directory used last, else 9092)")
    b.set_defaults(fn=_broker)

    g = sub.add_parser("registry", formatter_class=fmt, help="start, stop or check the local schema registry (Confluent API)",
                       description="The local schema registry for Avro and Protobuf topics (Apicurio Registry on this machine's JDK, "
                                   "serving the Confluent Schema Registry API; the first start fetches it with Maven).")
    g.add_argument("action", choices=["start", "stop", "status"],
                   help="start: start it unless it runs, and print its URL (for lg.Avro(registry=...)); stop: stop it; "
                        "status: print its pid and URL (exit code 3 when it does not run)")
    g.add_argument("--data-dir", help="the registry's data directory (default ~/.lockgate/registry)")
    g.add_argument("--port", type=int, help="the port of a registry started now (default: the port this data directory used last, else 8081)")
    g.set_defaults(fn=_registry)

    r = sub.add_parser("run", formatter_class=fmt, help="run the lg.Pipeline a .py file or a notebook (.ipynb) defines, until SIGTERM/SIGINT",
                       description="Run the lg.Pipeline that FILE defines, as a service: until SIGTERM or SIGINT, which let the "
                                   "open micro-batch commit before the process exits (or until --until / --max-batches). "
                                   "LOCKGATE_* environment variables (LOCKGATE_BROKERS, LOCKGATE_STATE, LOCKGATE_INSTANCE, ...) "
                                   "override the options the file gives its pipeline.")
    r.add_argument("file", metavar="FILE", help=_RUN_FILE_HELP)
    r.add_argument("--pipeline", metavar="NAME", help="the name of the pipeline to run, when FILE defines several")
    r.add_argument("--until", choices=["caught_up"], help="caught_up: stop once every partition has been read to its end (lag 0); default: run until stopped")
    r.add_argument("--max-batches", type=int, metavar="N", help="stop after N committed micro-batches")
    r.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics")
    r.add_argument("--config", metavar="TOML", help="a TOML file with [pipeline], [batch] and [kafka] tables overriding the file's options; LOCKGATE_* variables win over it")
    r.set_defaults(fn=_run)

    s = sub.add_parser("state", formatter_class=fmt, help="list, show or export committed tables and window state",
                       description="Read what a pipeline committed: its to_table tables and its windows' open state. "
                                   "Only rows of committed micro-batches are shown; safe while the pipeline runs.")
    s_sub = s.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")
    state_help = "the pipeline's state directory or URI (its Pipeline(state=...), e.g. ./lockgate-state)"
    name_help = "a table name (from to_table), or PIPELINE/OPERATOR for a window's open state (`lockgate state list` shows them)"
    as_of_help = "read as of an epoch number (e.g. 42) or an ISO datetime (e.g. 2026-11-25T13:00:00): the rows committed by then"
    where_help = "keep the rows that match this SQL predicate, e.g. \"page = '/home' AND n > 3\""
    s_list = s_sub.add_parser("list", formatter_class=fmt, help="the tables and window states under STATE", description="List the tables and window states under STATE.")
    s_list.add_argument("state", metavar="STATE", help=state_help)
    s_show = s_sub.add_parser("show", formatter_class=fmt, help="print committed rows of a table NAME or a window state PIPELINE/OPERATOR",
                              description="Print committed rows of a table or of a window's open state.")
    s_show.add_argument("state", metavar="STATE", help=state_help)
    s_show.add_argument("name", metavar="NAME", help=name_help)
    s_show.add_argument("--as-of", metavar="EPOCH_OR_TIME", help=as_of_help)
    s_show.add_argument("--where", metavar="SQL", help=where_help)
    s_show.add_argument("--limit", type=int, default=20, metavar="N", help="print at most N rows")
    s_export = s_sub.add_parser("export", formatter_class=fmt, help="write committed rows of NAME to a Parquet file",
                                description="Write committed rows of a table or of a window's open state to a Parquet file.")
    s_export.add_argument("state", metavar="STATE", help=state_help)
    s_export.add_argument("name", metavar="NAME", help=name_help)
    s_export.add_argument("out", metavar="OUT", help="the .parquet file to write")
    s_export.add_argument("--as-of", metavar="EPOCH_OR_TIME", help=as_of_help)
    s_export.add_argument("--where", metavar="SQL", help=where_help)
    s.set_defaults(fn=_state)

    brokers_help = "Kafka bootstrap servers, e.g. localhost:9092 (default: start the local broker, or use it if it runs)"
    d = sub.add_parser("demo", formatter_class=fmt, help="produce a sample clickstream, process it exactly once, print the committed output",
                       description=f"Produce sample clicks to the topic {CLICKS_TOPIC!r}, run a filter/project pipeline over them "
                                   "into a topic and a LanceDB table until it has caught up, print the committed rows and a summary.")
    d.add_argument("--brokers", help=brokers_help)
    d.add_argument("--state", default="./lockgate-demo-state", metavar="DIR", help="the LanceDB state directory of the demo's pipeline")
    d.add_argument("--records", type=int, default=50_000, metavar="N", help="how many sample clicks to produce")
    d.set_defaults(fn=_demo)

    sm = sub.add_parser("sample", formatter_class=fmt, help="create a topic and fill it with sample records (the README example's input)",
                        description="Create a topic (unless it exists) and produce sample records to it. "
                                    "`lockgate sample clicks` gives the README's example its input: JSON clicks with "
                                    "user, url, ms_on_page and ts (epoch ms), keyed by user, in the topic 'clicks'.")
    sm.add_argument("kind", metavar="KIND", choices=["clicks"], help="what to produce (one of: clicks); clicks: JSON objects like {\"user\": \"user-7\", \"url\": \"/p/12\", \"ms_on_page\": 5210, \"ts\": 1700000000000}")
    sm.add_argument("--topic", help="the topic to create and fill (default: KIND, e.g. clicks)")
    sm.add_argument("--brokers", help=brokers_help)
    sm.add_argument("--records", type=int, default=100_000, metavar="N", help="how many records to produce")
    sm.add_argument("--partitions", type=int, default=4, metavar="N", help="partitions of the topic, if it is created now")
    sm.set_defaults(fn=_sample)
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
