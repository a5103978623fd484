"""Every docstring example in the package runs (as Polars runs its own)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lockgate


def _modules() -> list[str]:
    names = ["lockgate"]
    for sub in ("lockgate.engine", "lockgate.operators", "lockgate.storage"):
        package = importlib.import_module(sub)
        names.append(sub)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, prefix=f"{sub}.")]  # subpackages too
    names += [f"lockgate.{m.name}" for m in pkgutil.iter_modules(lockgate.__path__)]
    return sorted(set(names))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (run python -m doctest -v on it)"
