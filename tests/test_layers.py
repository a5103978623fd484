"""The layer direction of docs/architecture.md ("Layers"), enforced by import-linter over the installed package layout.

import-linter walks a package's directory, and lockgate's subpackages live in
top-level folders mapped by setuptools, so the test lays the package out as a
wheel would (lockgate/engine, lockgate/storage, ...) in a temporary folder.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
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
        ("lockgate/errors.py", "import lockgate.operators.stateless  # the errors, below every layer, reaching up\n"),
    ],
)
def test_an_upward_or_forbidden_import_breaks_the_contracts(tmp_path: Path, module: str, source: str) -> None:
    tree = _lay_out(tmp_path)
    (tree / module).write_text(source)
    result = _lint(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout


#: confluent-kafka's client classes: only lockgate.engine.kafka_clients builds one (librdkafka's options in one place)
CLIENTS = {"Consumer", "Producer", "AdminClient", "DeserializingConsumer", "SerializingProducer"}
FACTORY = "engine/kafka_clients.py"


def _names_a_client(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id in CLIENTS) or (isinstance(node, ast.Attribute) and node.attr in CLIENTS)


def _client_sites(path: Path) -> Iterator[tuple[int, str]]:
    """Where ``path`` builds a Kafka client itself: calls, subclasses, aliases or passes one of the classes on.

    Annotations (``consumer: ck.Consumer``) and ``isinstance`` checks are no construction.
    """
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            if _names_a_client(node.func):
                yield node.lineno, f"calls {ast.unparse(node.func)}(...)"
            elif not (isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass")):
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    if _names_a_client(arg):
                        yield node.lineno, f"passes {ast.unparse(arg)} to {ast.unparse(node.func)}"
        elif isinstance(node, ast.ClassDef):
            yield from ((node.lineno, f"subclasses {ast.unparse(b)}") for b in node.bases if _names_a_client(b))
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None and _names_a_client(node.value):
            yield node.lineno, f"aliases {ast.unparse(node.value)}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("confluent_kafka"):
            yield from ((node.lineno, f"imports {a.name} as {a.asname}") for a in node.names if a.name in CLIENTS and a.asname)


def _sites_outside_the_factory(root: Path) -> list[str]:
    found = []
    for folder in sorted(set(MAPPING.values())):
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative != FACTORY:
                found += [f"{relative}:{line}: {what}" for line, what in sorted(_client_sites(path))]
    return found


def test_only_kafka_clients_builds_a_librdkafka_client() -> None:
    sites = _sites_outside_the_factory(ROOT)
    assert not sites, (
        "build Kafka clients with lockgate.engine.kafka_clients.consumer/producer/admin (they set the logger, the log level "
        f"and serve an admin client's log lines), not directly: {sites}"
    )
    assert list(_client_sites(ROOT / FACTORY)), "the check sees the factory's own clients"


@pytest.mark.parametrize(
    "source",
    [
        "import confluent_kafka as ck\nconsumer = ck.Consumer({'group.id': 'g'})\n",
        "from confluent_kafka.admin import AdminClient\nadmin = AdminClient({})\n",
        "from confluent_kafka import Producer as P\n",
        "import confluent_kafka as ck\nmake = ck.Producer\n",
        "from confluent_kafka.admin import AdminClient\nclass Mine(AdminClient): ...\n",
    ],
)
def test_a_client_built_outside_kafka_clients_is_found(tmp_path: Path, source: str) -> None:
    for folder in MAPPING.values():  # the repository's layout (engine/, storage/, ...), as the check reads it
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    assert not _sites_outside_the_factory(tmp_path)
    (tmp_path / "storage" / "_bad.py").write_text(source)
    assert [site.split(":")[0] for site in _sites_outside_the_factory(tmp_path)] == ["storage/_bad.py"]
