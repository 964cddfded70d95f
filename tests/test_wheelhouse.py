"""make wheelhouse: imds-shim and its dependencies as pure wheels with their hashes, which pip
installs with ``--require-hashes`` and nothing else on every supported Python (one wheelhouse for
every image), and refuses as soon as one byte of one wheel changes."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import build_version, clean_env, missing

# The oldest, a middle and the newest Python that imds-shim supports: the one wheelhouse made
# above (by whichever Python runs the tests) installs on each.
PYTHONS = ("3.9", "3.11", "3.13")


def interpreter(version: str) -> str | None:
    """pythonX.Y under pyenv's root (as .ci/run finds them), else on PATH; None when none starts."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"))
    for candidate in [*found[-1:], shutil.which(f"python{version}")]:
        if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


def install(wheelhouse: Path, venv: Path, python: str | None = None) -> subprocess.CompletedProcess[str]:
    """The README's install command, into a fresh virtualenv: of this Python, by this pip; or of
    another Python, by that venv's own pip (as in an image: this pip may not run on it)."""
    if python is None:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    else:
        subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
    return subprocess.run(
        [
            *pip,
            "install",
            *("--disable-pip-version-check", "--no-index", "--find-links", str(wheelhouse)),
            *("--require-hashes", "-r", str(wheelhouse / "requirements.txt")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_wheelhouse_pins_every_wheel_by_its_hash(wheelhouse: Path) -> None:
    """One requirements line a wheel, imds-shim's own included, each with its sha256."""
    wheels = sorted(path.name for path in wheelhouse.glob("*.whl"))
    lines = [line for line in (wheelhouse / "requirements.txt").read_text().splitlines() if line[:1] != "#"]
    assert len(lines) == len(wheels) >= 4
    assert all(" --hash=sha256:" in line for line in lines)
    assert f"imds-shim=={build_version()}" in {line.split()[0] for line in lines}
    assert {"requests", "tenacity", "urllib3", "idna"} <= {line.split("==")[0] for line in lines}


def test_every_wheel_is_pure(wheelhouse: Path) -> None:
    """Nothing in it is for one interpreter or one architecture: charset-normalizer's pure wheel,
    not its compiled ones."""
    tags = {wheel.name: wheel.name.rsplit("-", 3)[1:] for wheel in wheelhouse.glob("*.whl")}
    assert any(name.startswith("charset_normalizer-") for name in tags)
    assert {name: tag for name, tag in tags.items() if tag[1:] != ["none", "any.whl"]} == {}
    assert all(tag[0] in ("py3", "py2.py3") for tag in tags.values())


@pytest.mark.parametrize("version", PYTHONS)
def test_installs_with_require_hashes_on_every_supported_python(
    wheelhouse: Path, tmp_path: Path, version: str
) -> None:
    """The one wheelhouse installs into a fresh venv of Python 3.9, 3.11 and 3.13 with no index,
    and that imds-shim fetches and says the version it was built as."""
    python = interpreter(version)
    if python is None:
        missing(f"no Python {version} here (CI has it under pyenv)")
    venv = tmp_path / "venv"
    completed = install(wheelhouse, venv, python)
    assert completed.returncode == 0, completed.stderr
    shim = str(venv / "bin" / "imds-shim")
    run = subprocess.run(
        [shim, "simulate", "--", shim, "--", "sh", "-c", 'echo "$AWS_ACCESS_KEY_ID"'],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ASIA")
    said = subprocess.run([shim, "--version"], capture_output=True, text=True, timeout=60)
    assert said.stdout.startswith(f"imds-shim {build_version()} (CPython {version}.")


def test_one_changed_byte_in_any_wheel_fails_the_install(wheelhouse: Path, tmp_path: Path) -> None:
    """For each wheel in turn: one byte changed, and the install fails on its hash."""
    for wheel in sorted(wheelhouse.glob("*.whl")):
        changed = tmp_path / wheel.stem
        shutil.copytree(wheelhouse, changed)
        target = changed / wheel.name
        content = bytearray(target.read_bytes())
        content[len(content) // 2] ^= 0x01
        target.write_bytes(bytes(content))
        completed = install(changed, tmp_path / f"{wheel.stem}-venv")
        assert completed.returncode != 0, wheel.name
        assert "DO NOT MATCH THE HASHES" in completed.stderr, completed.stderr
        assert not (tmp_path / f"{wheel.stem}-venv" / "bin" / "imds-shim").exists()
