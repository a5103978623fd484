"""Every docstring example in the package runs (as Polars runs its own).

Examples that make sample topics (``lg.sample_clicks``, ``lg.sample_users``) and run
pipelines over them get the session's broker the way a user's shell gives it:
``LOCKGATE_BROKERS``, which an ``lg.Pipeline`` without ``brokers=`` and the sample
helpers use.  Every other ``LOCKGATE_*`` variable is unset for the examples.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil

import pytest

import lockgate
from lockgate.engine.plan import Stream, Table, WindowedStream


def _modules() -> list[str]:
    names = ["lockgate"]
    for sub in ("lockgate.engine", "lockgate.operators", "lockgate.storage"):
        package = importlib.import_module(sub)
        names.append(sub)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, prefix=f"{sub}.")]  # subpackages too
    names += [f"lockgate.{m.name}" for m in pkgutil.iter_modules(lockgate.__path__)]
    return sorted(set(names))


def _makes_topics(module: object) -> bool:
    """True when an example of ``module`` makes sample topics: it needs a broker."""
    return any("lg.sample_" in example.source for test in doctest.DocTestFinder().find(module) for example in test.examples)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(name)
    for variable in [v for v in os.environ if v.startswith("LOCKGATE_") and not v.startswith("LOCKGATE_TEST_")]:
        monkeypatch.delenv(variable)  # a LOCKGATE_STATE or LOCKGATE_BATCH__... of the shell would override the examples' options
    if _makes_topics(module):
        monkeypatch.setenv("LOCKGATE_BROKERS", request.getfixturevalue("brokers"))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, (
        f"{result.failed} docstring example(s) of {name} failed (run python -m doctest -v on it"
        + (", with LOCKGATE_BROKERS=host:port of a broker)" if _makes_topics(module) else ")")
    )


@pytest.mark.parametrize("cls", [lockgate.Pipeline, Stream, Table, WindowedStream])
def test_every_public_method_has_a_docstring(cls: type) -> None:
    undocumented = [
        name
        for name, member in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)) and not inspect.getdoc(member)
    ]
    assert not undocumented, f"{cls.__name__}: give {undocumented} a docstring (one line at least)"


@pytest.mark.parametrize(
    "method",
    [
        lockgate.Pipeline.source, lockgate.Pipeline.run, lockgate.Pipeline.preview, Stream.filter, Stream.window, WindowedStream.agg,
        Stream.join, Stream.to_kafka, Stream.to_table, lockgate.read_table, lockgate.read_state, lockgate.sample_clicks,
    ],
    ids=lambda method: method.__qualname__,
)
def test_the_public_api_has_examples(method: object) -> None:
    assert "Examples\n" in (inspect.getdoc(method) or "") and ">>> " in (inspect.getdoc(method) or ""), f"{method}: add an Examples section"
