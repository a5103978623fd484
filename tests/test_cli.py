"""The ``lockgate`` command explains itself: every subcommand, argument and option has help text."""

from __future__ import annotations

import argparse
import subprocess
import sys

from lockgate.cli import _parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of the parser and every subparser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_subcommand_argument_and_option_has_help_text():
    missing = []
    commands = list(_walk(_parser()))
    assert {" ".join(p) for p, _ in commands} >= {"", "broker", "run", "state", "state list", "state show", "state export", "demo", "sample"}
    for path, parser in commands:
        where = "lockgate " + " ".join(path)
        if path and not (parser.description or "").strip():
            missing.append(f"{where}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{where} {c.dest}: no help" for c in action._choices_actions if not (c.help or "").strip()]
            elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}: no help")
    assert not missing, missing


def test_run_help_says_what_file_is_and_explains_each_option():
    out = subprocess.run([sys.executable, "-m", "lockgate.cli", "run", "--help"], capture_output=True, text=True, check=True, timeout=60).stdout
    text = " ".join(out.split())
    assert "FILE" in text and ".py" in text and ".ipynb" in text and "lg.Pipeline" in text
    for option, says in [("--pipeline", "when FILE defines several"), ("--until", "read to its end"), ("--max-batches", "committed micro-batches"),
                         ("--metrics-port", "Prometheus"), ("--config", "TOML")]:
        assert option in text and says in text, (option, says)
    assert "(default: None)" not in text, "an option without a default says nothing about it"


def test_the_demo_help_names_the_topic_the_demo_fills():
    from lockgate.cli import CLICKS_TOPIC
    from lockgate.engine.demo import CLICKS

    assert CLICKS_TOPIC == CLICKS  # the CLI names it without importing the engine
