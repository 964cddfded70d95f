"""Static checks are part of the suite: ruff clean, ruff-formatted and mypy --strict clean.

`make lint` runs the same three outside pytest, for a venv whose interpreter is too old for them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "shim", "tests", "bench", "scripts", "setup.py"],
        ["ruff", "format", "--check", "shim", "tests", "bench", "scripts", "setup.py"],
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


def _imports(path: Path) -> set[str]:
    """The shim modules a module imports: at the top, inside functions, and for type checking only
    (a cycle through a type-only import is still two modules that lean on each other)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shim."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("shim.")}
    return found


def _module_name(path: Path) -> str:
    """``shim/imds/client.py`` -> ``shim.imds.client``; a package's ``__init__`` is the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in (ROOT / "shim").rglob("*.py")}


def test_package_has_no_import_cycles() -> None:
    """No shim module imports, however lazily (or for types only), a module that imports it back."""
    graph = _import_graph()

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


# What each part of the shim may import from outside itself (its __init__ docstring says the
# same in words): the IMDS client and the command line never reach up into the modes and verbs,
# and the simulator shares only the protocol facts with the client it is a stand-in for.
MAY_IMPORT = {
    "shim.command_line": {"shim.errors", "shim.log", "shim.imds.protocol"},
    "shim.imds": {
        "shim.errors",
        "shim.log",
        "shim.credentials",
        "shim.variables",
        "shim.command_line.config",
        "shim.command_line.values",
    },
    "shim.simulator": {
        "shim.errors",
        "shim.log",
        "shim.runtime",
        "shim.execute",
        "shim.command_line.config",
        "shim.command_line.exit_codes",
        "shim.command_line.parse",
        "shim.command_line.values",
        "shim.imds.protocol",
    },
    "shim.lifetime": {
        "shim.errors",
        "shim.command_line.exit_codes",
        "shim.log",
        "shim.runtime",
        "shim.execute",
        "shim.credentials",
        "shim.variables",
        "shim.command_line.config",
        "shim.command_line.values",
        "shim.imds.answers",
        "shim.imds.fetch",
        "shim.imds.protocol",
    },
}


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_part_imports_only_what_it_may(package: str) -> None:
    """A subpackage's modules import, from outside it, only what MAY_IMPORT allows it."""
    outside = {
        f"{module} imports {target}"
        for module, targets in _import_graph().items()
        if module == package or module.startswith(f"{package}.")
        for target in targets
        if not target.startswith(f"{package}.") and target not in MAY_IMPORT[package]
    }
    assert sorted(outside) == []


def test_the_top_of_the_package_stays_small() -> None:
    """At most 12 modules sit directly in shim/; the parts live in subpackages (docs/development.md)."""
    top = sorted(path.name for path in (ROOT / "shim").glob("*.py"))
    parts = sorted(init.parent.name for init in (ROOT / "shim").glob("*/__init__.py"))
    assert len(top) <= 12, top
    assert parts == ["command_line", "imds", "lifetime", "simulator"]


@pytest.mark.parametrize("path", ["Dockerfile.example", "examples/any-image/Dockerfile", "README.md"])
def test_recipes_name_this_version(path: str) -> None:
    """Every `imds-shim==X` and `imds-shim:X` in the recipes and the README is the latest release,
    the newest dated heading in CHANGELOG.md."""
    import re

    found = re.search(
        r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", (ROOT / "CHANGELOG.md").read_text(), re.M
    )
    assert found, "CHANGELOG.md has no release"
    named = set(re.findall(r"imds-shim(?:==|:)(\d+\.\d+\.\d+)", (ROOT / path).read_text()))
    assert named <= {found[1]}
    assert path != "examples/any-image/Dockerfile" or named == {found[1]}


def test_the_readmes_python_recipe_is_dockerfile_example() -> None:
    """Each line of the README's Dockerfile recipe for images with Python is a line of
    Dockerfile.example (which the end-to-end suite builds), and so are its two commands'."""
    readme = (ROOT / "README.md").read_text()
    recipe = readme[readme.index("## In a Dockerfile") : readme.index("## In an image without Python")]
    blocks = recipe.split("```")[1::2]
    dockerfile = {line.strip() for line in (ROOT / "Dockerfile.example").read_text().splitlines()}
    lines = [
        line.strip() for block in blocks if block.startswith("dockerfile") for line in block.splitlines()[1:]
    ]
    assert "--require-hashes ${source} -r /tmp/imds-shim-wheelhouse/requirements.txt \\" in lines
    assert [line for line in lines if line and line not in dockerfile] == []
    commented = {line.lstrip("#").strip() for line in dockerfile if line.startswith("#")}
    commands = [line.strip() for block in blocks if block.startswith("sh") for line in block.splitlines()[1:]]
    assert 'make -C /path/to/imds-shim wheelhouse WHEELHOUSE="$PWD/imds-shim-wheelhouse"' in commands
    assert [line for line in commands if line and line not in commented] == []


def test_the_backoff_figures_in_the_docs_are_the_policys() -> None:
    """docs/imds.md quotes the retry policy's base, cap and throttled base as the code has them."""
    from shim.imds.backoff import BACKOFF_BASE, BACKOFF_CAP, THROTTLED_BACKOFF_BASE

    text = " ".join((ROOT / "docs" / "imds.md").read_text().split())
    assert (
        f"{BACKOFF_BASE * 1000:g} ms doubling, capped at {BACKOFF_CAP:g} s; after a 429, "
        f"{THROTTLED_BACKOFF_BASE:g} s doubling"
    ) in text


def test_every_package_of_the_shim_is_in_the_wheel() -> None:
    """pyproject's package list names every folder of shim/ (a missing one installs a broken shim)."""
    line = next(
        line for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("packages =")
    )
    listed = sorted(name.strip(' "') for name in line.split("=", 1)[1].strip(" []").split(","))
    found = sorted(
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "shim").rglob("__init__.py")
    )
    assert listed == found


WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
# The jobs that publish something, and so may ask for an OIDC token.
PUBLISHING_JOBS = {"pypi", "image", "release-page"}


def _workflow(path: Path) -> dict[Any, Any]:
    import yaml

    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_there_are_the_two_workflows() -> None:
    """CI on pull requests and main, and the release on tags (make lint would pass with none)."""
    assert [path.name for path in WORKFLOWS] == ["ci.yml", "release.yml"]
    assert _workflow(WORKFLOWS[1])[True] == {"push": {"tags": ["v*"]}}  # YAML reads `on` as True


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_workflow_hygiene(path: Path) -> None:
    """Every action pinned to a full commit SHA with its tag in a comment; no permissions at the
    top; id-token only where a job publishes; no checkout keeps its credentials; full history (the
    version counts commits)."""
    import re

    text = path.read_text()
    uses = re.findall(r"uses: (\S+)(.*)", text)
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r" # v\d+(\.\d+)*", comment), f"{action}: the tag in a comment"
    workflow = _workflow(path)
    assert workflow["permissions"] == {}
    for name, job in workflow["jobs"].items():
        permissions = job.get("permissions", {})
        assert ("id-token" in permissions) == (name in PUBLISHING_JOBS), name
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
                assert step["with"]["fetch-depth"] == 0


# Where actions/attest-build-provenance's `push-to-registry` looks for registry credentials:
# Docker's config (it logs in through @actions/docker's config, not containers' auth.json).
DOCKER_CONFIG = '"$HOME/.docker/config.json"'


def test_the_image_jobs_login_is_where_the_provenance_push_reads_it() -> None:
    """A job that pushes provenance to a registry logs in to Docker's config file: a skopeo login
    into its own auth.json would leave the attestation with "No credentials found for registry"
    after the image was pushed, and the release page would never be made."""
    for name, job in _workflow(WORKFLOWS[1])["jobs"].items():
        steps = job["steps"]
        pushes = [s for s in steps if s.get("uses", "").startswith("actions/attest-build-provenance@")
                  and s.get("with", {}).get("push-to-registry")]  # fmt: skip
        if not pushes:
            continue
        logins = [line for s in steps for line in s.get("run", "").splitlines() if "login" in line]
        assert logins, name
        for line in logins:
            assert f"--authfile {DOCKER_CONFIG}" in line, f"{name}: {line.strip()}"


def test_the_signing_key_is_removed_on_every_way_out() -> None:
    """The step that writes the minisign key sets a trap that removes it before writing it, so a
    failed make release does not leave it on the runner."""
    for job in _workflow(WORKFLOWS[1])["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "")
            if "MINISIGN_SECRET_KEY" not in script:
                continue
            trap = script.index("trap 'rm -f \"$key\"' EXIT")
            assert trap < script.index('>"$key"')


def _cited_names(path: Path) -> set[str]:
    """Every ``shim.x.y`` a module names (its comments and docstrings included), and each
    ``:mod:`.x``` relative to its package, spelled out."""
    import re

    text = path.read_text()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found = {name.rstrip(".") for name in re.findall(r"(?<![\w/.])shim(?:\.\w+)+", text)}
    found |= {f"{package}{name}" for name in re.findall(r":\w+:`(\.\w+(?:\.\w+)*)`", text)}
    # A bare :func:`name` (or :meth:`Class.name`) is the module's own; a bare :meth:`name`, of one
    # of its classes ("*").
    for role, name in re.findall(r":(func|class|data|meth|attr):`(\w+(?:\.\w+)*)`", text):
        if not name.startswith("shim."):
            bare_member = role in ("meth", "attr") and "." not in name
            found.add(f"{_module_name(path)}.{'*.' if bare_member else ''}{name}")
    return found


def _resolves(name: str) -> bool:
    """Whether a dotted name is a module, or an attribute (a class's included) of one."""
    import importlib

    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        if parts[split:][:1] == ["*"]:  # a member of any class of the module
            classes = [value for value in vars(target).values() if isinstance(value, type)]
            return any(hasattr(cls, parts[-1]) for cls in classes)
        for attribute in parts[split:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_every_name_the_code_cites_exists() -> None:
    """No comment or docstring names a module, function or class of the shim that is not there
    (one named ``imds_protocol.hop_limit_fix`` outlived its module)."""
    stale = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "shim").rglob("*.py"))
        for name in _cited_names(path)
        if not _resolves(name)
    )
    assert stale == []
