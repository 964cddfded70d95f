"""make wheelhouse: imds-shim and its dependencies as wheels with their hashes, which pip installs
with ``--require-hashes`` and nothing else, and refuses as soon as one byte of one wheel changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env, made_once

from shim import __version__

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheelhouse for this interpreter and machine, made once per run by the script that make
    wheelhouse runs."""

    def make(folder: Path) -> None:
        completed = subprocess.run(
            [str(ROOT / "scripts" / "make-wheelhouse")],
            env=dict(os.environ, PYTHON=sys.executable, WHEELHOUSE=str(folder)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr

    return made_once(tmp_path_factory, "wheelhouse", make)


def install(wheelhouse: Path, venv: Path) -> subprocess.CompletedProcess[str]:
    """The README's install command, into a fresh virtualenv."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"),
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
    assert f"imds-shim=={__version__}" in {line.split()[0] for line in lines}
    assert {"requests", "tenacity", "urllib3", "idna"} <= {line.split("==")[0] for line in lines}


def test_installs_with_require_hashes_and_fetches(wheelhouse: Path, tmp_path: Path) -> None:
    """The wheelhouse installs into a fresh venv with no index, and that imds-shim works."""
    venv = tmp_path / "venv"
    completed = install(wheelhouse, venv)
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
