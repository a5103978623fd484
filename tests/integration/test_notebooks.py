"""Every notebook in notebooks/ runs top to bottom against the session's broker (nbclient, a real kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_the_notebook_runs_top_to_bottom(path: Path, brokers: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat  # in the test extra: a missing one fails the test, it never skips it
    from nbclient import NotebookClient

    monkeypatch.setenv("LOCKGATE_BROKERS", brokers)  # the kernel inherits it: the notebook uses this broker
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    if "pipe.run(" in "".join(c.source for c in nb.cells if c.cell_type == "code"):
        assert any("<progress" in h and "records" in h and "stopped (" in h for h in html), "pipe.run shows its progress line"
    assert any("<table" in h for h in html), "the pipeline renders its plan as HTML"


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2, NOTEBOOKS
