"""Static checks are part of the suite: ruff clean, ruff-formatted and mypy --strict clean.

`make lint` runs the same three outside pytest, for a venv whose interpreter is too old for them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "shim", "tests", "bench"],
        ["ruff", "format", "--check", "shim", "tests", "bench"],
        ["mypy"],
    ],
    ids=["ruff", "ruff format", "mypy"],
)
def test_static_check_is_clean(command: list[str]) -> None:
    """The code passes the project's linters (configured in pyproject.toml)."""
    if sys.version_info < (3, 10):
        pytest.skip("mypy and ruff run on the newest interpreter only (mypy needs 3.10+)")
    completed = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def _run_time_imports(path: Path) -> set[str]:
    """The shim modules a module imports at run time, at the top or inside functions."""
    import ast

    tree = ast.parse(path.read_text())
    type_checking_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shim."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("shim.")}
    return found


def test_package_has_no_import_cycles() -> None:
    """No shim module imports, however lazily, a module that imports it back."""
    graph = {f"shim.{path.stem}": _run_time_imports(path) for path in (ROOT / "shim").glob("*.py")}

    def cycle_from(module: str, trail: tuple[str, ...]) -> tuple[str, ...] | None:
        for target in sorted(graph.get(module, ())):
            if target in trail:
                return (*trail[trail.index(target) :], target)
            found = cycle_from(target, (*trail, target))
            if found:
                return found
        return None

    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(module, (module,)))]
    assert cycles == [], " -> ".join(cycles[0])


@pytest.mark.parametrize("path", ["Dockerfile.example", "examples/any-image/Dockerfile", "README.md"])
def test_recipes_name_this_version(path: str) -> None:
    """Every `imds-shim==X` and `imds-shim:X` in the recipes and the README is this release."""
    import re

    from shim import __version__

    named = set(re.findall(r"imds-shim(?:==|:)(\d+\.\d+\.\d+)", (ROOT / path).read_text()))
    assert named <= {__version__}
    assert path == "README.md" or named == {__version__}
