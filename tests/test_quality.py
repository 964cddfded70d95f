"""Static checks are part of the suite: ruff clean and mypy --strict clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("command", [["ruff", "check", "shim", "tests", "bench"], ["mypy"]],
                         ids=["ruff", "mypy"])
def test_static_check_is_clean(command: list[str]) -> None:
    """The code passes the project's linters (configured in pyproject.toml)."""
    if sys.version_info < (3, 10):
        pytest.skip("mypy and ruff run on the newest interpreter only (mypy needs 3.10+)")
    completed = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
