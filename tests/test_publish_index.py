"""make publish PYPI_URL=…, judged by a real package index: pypiserver on loopback, with uploads
behind a password that only twine's environment carries. After publishing, pip installs
imds-shim==VERSION from that index alone, every file checked against its hash, and it runs. The
registry half of make publish needs root and engines: tests/e2e/test_publish.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import build_version, clean_env, closed_port

ROOT = Path(__file__).resolve().parent.parent
PUBLISH = str(ROOT / "scripts" / "make-publish")
USER, PASSWORD = "releaser", "an-upload-password-for-this-test"


@pytest.fixture
def index(tmp_path: Path, wheelhouse: Path) -> Iterator[tuple[str, Path]]:
    """pypiserver with uploads behind a password, no fallback to PyPI, and imds-shim's
    dependencies already on it (from the wheelhouse): (its URL, its package folder)."""
    from passlib.apache import HtpasswdFile

    packages = tmp_path / "packages"
    packages.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("imds_shim-"):
            shutil.copy(wheel, packages)
    htpasswd = HtpasswdFile(str(tmp_path / "htpasswd"), new=True)
    htpasswd.set_password(USER, PASSWORD)
    htpasswd.save()
    port = closed_port()
    server = subprocess.Popen(
        [
            *(str(Path(sys.executable).parent / "pypi-server"), "run", "-i", "127.0.0.1", "-p", str(port)),
            *("-a", "update", "-P", str(tmp_path / "htpasswd"), "--disable-fallback", str(packages)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "pypiserver exited"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "pypiserver did not answer within 60 s"
                time.sleep(0.1)
        yield url, packages
    finally:
        server.terminate()
        server.wait(timeout=30)


def publish(url: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """make publish PYPI_URL=URL, as the script that make runs, with twine's credentials in the
    environment only."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TWINE_")}
    environment.pop("REGISTRY", None)
    return subprocess.run(
        [PUBLISH],
        env=dict(environment, PYTHON=sys.executable, PYPI_URL=url, **extra),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_publish_uploads_the_wheel_and_sdist_and_pip_installs_it_by_hash(
    index: tuple[str, Path], wheelhouse: Path, tmp_path: Path
) -> None:
    url, packages = index
    version = build_version()
    published = publish(url, TWINE_USERNAME=USER, TWINE_PASSWORD=PASSWORD)
    assert published.returncode == 0, published.stderr
    wheel, sdist = f"dist/imds_shim-{version}-py3-none-any.whl", f"dist/imds_shim-{version}.tar.gz"
    assert published.stdout.splitlines() == [wheel, sdist]  # the index's part alone: no image
    assert "PASSED" in published.stderr  # twine check
    assert {path.name for path in packages.glob("imds_shim-*")} == {Path(wheel).name, Path(sdist).name}

    # The release page's pins: imds-shim's wheel by its hash, and its dependencies' (the wheelhouse's).
    digest = hashlib.sha256((ROOT / wheel).read_bytes()).hexdigest()
    pins = [f"imds-shim=={version} --hash=sha256:{digest}"]
    pins += [
        line
        for line in (wheelhouse / "requirements.txt").read_text().splitlines()
        if line[:1] not in ("#", "") and not line.startswith("imds-shim==")
    ]
    (tmp_path / "requirements.txt").write_text("\n".join(pins) + "\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"),
            *("--disable-pip-version-check", "--no-cache-dir", "--isolated", "--index-url", f"{url}/simple/"),
            *("--only-binary=:all:", "--require-hashes", "-r", str(tmp_path / "requirements.txt")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    said = subprocess.run(
        [str(venv / "bin" / "imds-shim"), "--version"], env=clean_env(), capture_output=True, text=True
    )
    assert said.stdout.startswith(f"imds-shim {version} (CPython ")


def test_an_upload_without_credentials_fails_and_says_so(index: tuple[str, Path]) -> None:
    """No TWINE_PASSWORD: twine does not prompt (--non-interactive); the upload fails, and the
    index holds nothing of imds-shim."""
    url, packages = index
    published = publish(url)
    assert published.returncode != 0
    assert list(packages.glob("imds_shim-*")) == []


def test_publish_without_a_destination_is_one_line() -> None:
    """Neither REGISTRY nor PYPI_URL: a usage line and exit 2, nothing built."""
    environment = {key: value for key, value in os.environ.items() if key not in ("REGISTRY", "PYPI_URL")}
    completed = subprocess.run([PUBLISH], capture_output=True, text=True, env=environment, timeout=60)
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1
    assert completed.stderr.startswith("make-publish: name where: REGISTRY=HOST[:PORT]/NAME")


def test_a_registry_that_is_not_host_and_name_is_refused() -> None:
    completed = subprocess.run(
        [PUBLISH], capture_output=True, text=True, env=dict(os.environ, REGISTRY="imds-shim"), timeout=60
    )
    assert completed.returncode == 2
    assert completed.stderr == (
        "make-publish: REGISTRY must be HOST[:PORT]/NAME, say ghcr.io/owner/imds-shim, not imds-shim\n"
    )


@pytest.mark.parametrize(
    ("installed", "chosen", "said"),
    [
        (("docker", "podman"), None, "docker"),
        (("podman",), None, "podman"),
        (("docker", "podman"), "podman", "podman (ENGINE)"),
    ],
)
def test_make_image_says_which_engine_and_prefers_docker(
    tmp_path: Path, installed: tuple[str, ...], chosen: str | None, said: str
) -> None:
    """With both installed it builds into docker unless ENGINE says otherwise, and says so; an
    engine that does not answer stops it at once, before any bundle is built."""
    # A PATH with only what the script needs besides the engines (this machine may have both).
    for tool in ("bash", "dirname", "uname", "git", "sh"):
        found = shutil.which(tool)
        assert found, tool
        (tmp_path / tool).symlink_to(found)
    (tmp_path / "python3").symlink_to(sys.executable)
    for name in installed:
        engine = tmp_path / name
        engine.write_text("#!/bin/sh\nexit 1\n")
        engine.chmod(0o755)
    environment = {key: value for key, value in os.environ.items() if key not in ("ENGINE", "DOCKER_HOST")}
    environment["PATH"] = str(tmp_path)
    if chosen:
        environment["ENGINE"] = chosen
    completed = subprocess.run(
        [str(ROOT / "scripts" / "make-image")], capture_output=True, text=True, env=environment, timeout=60
    )
    assert completed.returncode == 1
    name = said.split()[0]
    assert completed.stderr.splitlines() == [
        f"make-image: building with {said}; ENGINE=podman or ENGINE=docker to choose",
        f"make-image: {name} does not answer (`{name} version` fails: is its daemon running?)",
    ]
