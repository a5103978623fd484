"""The layer direction of STYLE.md, enforced by import-linter over the installed package layout.

import-linter walks a package's directory, and lockgate's subpackages live in
top-level folders mapped by setuptools, so the test lays the package out as a
wheel would (lockgate/engine, lockgate/storage, ...) in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"lockgate": "lockgate", "lockgate/engine": "engine", "lockgate/storage": "storage", "lockgate/operators": "operators"}


def _lay_out(target: Path) -> Path:
    for dest, src in MAPPING.items():
        shutil.copytree(ROOT / src, target / dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    return target


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
         "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300,
    )


def test_import_contracts_hold_for_the_package(tmp_path: Path) -> None:
    result = _lint(_lay_out(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("lockgate/operators/_bad.py", "import lockgate.engine.runner\n"),
        ("lockgate/storage/_bad.py", "import confluent_kafka\n"),
        ("lockgate/operators/_bad.py", "import lance\n"),
    ],
)
def test_an_upward_or_forbidden_import_breaks_the_contracts(tmp_path: Path, module: str, source: str) -> None:
    tree = _lay_out(tmp_path)
    (tree / module).write_text(source)
    result = _lint(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
