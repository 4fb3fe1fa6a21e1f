"""The code passes ruff (style, unused names, likely bugs), as configured in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    assert ruff is not None, "ruff is part of the test extra; run ./scripts/setup"
    done = subprocess.run([ruff, "check", ROOT], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
