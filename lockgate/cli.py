"""The ``lockgate`` command: ``broker start|stop|status``, ``run FILE``, ``demo``."""

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


def _run(args: argparse.Namespace) -> int:
    from lockgate.engine.service import load_pipeline, serve

    pipe = load_pipeline(args.file, args.pipeline)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lockgate", description="A columnar micro-batch stream engine: Kafka, Polars, LanceDB, exactly once.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("broker", help="start, stop or check the local Kafka broker (KRaft, one node)")
    b.add_argument("action", choices=["start", "stop", "status"])
    b.add_argument("--data-dir", help="broker data directory (default ~/.lockgate/broker)")
    b.add_argument("--port", type=int, help="client port (default 9092)")
    b.set_defaults(fn=_broker)

    r = sub.add_parser("run", help="run the lg.Pipeline a .py file defines, until SIGTERM/SIGINT")
    r.add_argument("file")
    r.add_argument("--pipeline", help="the pipeline's name, when the file defines several")
    r.add_argument("--until", choices=["caught_up"], help="stop when the lag is 0")
    r.add_argument("--max-batches", type=int)
    r.set_defaults(fn=_run)

    d = sub.add_parser("demo", help="produce a sample clickstream, process it exactly once, print the committed output")
    d.add_argument("--brokers", help="Kafka bootstrap servers (default: start the local broker)")
    d.add_argument("--state", default="./lockgate-demo-state", help="LanceDB state directory")
    d.add_argument("--records", type=int, default=50_000)
    d.set_defaults(fn=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lockgate`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to stderr
    try:
        return args.fn(args)
    except LockgateError as exc:
        print(f"lockgate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
