"""The notebook progress line: shown in a Jupyter kernel only, at no cost elsewhere."""

from __future__ import annotations

import subprocess
import sys


def test_a_script_learns_it_is_not_in_a_notebook_without_importing_ipython():
    code = "import sys; from lockgate.engine.progress import in_notebook; print(in_notebook(), 'IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]  # IPython is installed here (the notebook tests use it), yet not imported


def test_an_ipython_shell_outside_a_kernel_is_not_a_notebook():
    code = (
        "import sys; from IPython.testing.globalipapp import start_ipython; start_ipython(); "
        "from lockgate.engine.progress import in_notebook; print(in_notebook(), 'IPython' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split()[-2:] == ["False", "True"]
