"""The release's signature (scripts/sign-sums, which make release runs): SHA256SUMS signed with
minisign verifies with the public key, and a changed SHA256SUMS does not; without a key the
release says in one line that it is unsigned."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIGN = str(ROOT / "scripts" / "sign-sums")

pytestmark = pytest.mark.skipif(
    shutil.which("minisign") is None, reason="no minisign (Debian package minisign)"
)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A dist/ folder: two artifacts and their SHA256SUMS."""
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "imds-shim-0-linux-x86_64.tar.gz").write_bytes(b"a bundle")
    (dist / "imds_shim-0-py3-none-any.whl").write_bytes(b"a wheel")
    sums = subprocess.run(
        ["sha256sum", *sorted(p.name for p in dist.iterdir())], cwd=dist, capture_output=True, check=True
    )
    (dist / "SHA256SUMS").write_bytes(sums.stdout)
    return dist


def throwaway_key(folder: Path) -> tuple[Path, Path]:
    """A minisign key pair without a password (-W), as a release machine would have: (secret, public)."""
    secret, public = folder / "throwaway.key", folder / "throwaway.pub"
    subprocess.run(
        ["minisign", "-G", "-W", "-s", str(secret), "-p", str(public)], check=True, capture_output=True
    )
    return secret, public


def verify(dist: Path, public: Path) -> subprocess.CompletedProcess[str]:
    """The README's first verification command."""
    return subprocess.run(
        ["minisign", "-Vm", "SHA256SUMS", "-p", str(public)], cwd=dist, capture_output=True, text=True
    )


def test_a_signed_release_verifies_and_a_changed_sums_file_does_not(release: Path, tmp_path: Path) -> None:
    secret, public = throwaway_key(tmp_path)
    signed = subprocess.run(
        [SIGN, str(release)], env=dict(os.environ, SIGNING_KEY=str(secret)), capture_output=True, text=True
    )
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout == f"{release}/SHA256SUMS.minisig\n"
    verified = verify(release, public)
    assert verified.returncode == 0, verified.stderr
    assert "imds-shim" in verified.stdout  # the trusted comment names the release
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=release, capture_output=True).returncode == 0
    sums = release / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("imds_shim-0", "imds_shim-1"))
    assert verify(release, public).returncode != 0


def test_another_key_does_not_verify(release: Path, tmp_path: Path) -> None:
    secret, _ = throwaway_key(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_public = throwaway_key(tmp_path / "other")
    subprocess.run(
        [SIGN, str(release)], env=dict(os.environ, SIGNING_KEY=str(secret)), check=True, capture_output=True
    )
    assert verify(release, other_public).returncode != 0


def test_without_a_key_the_release_says_it_is_unsigned(release: Path) -> None:
    environment = {name: value for name, value in os.environ.items() if name != "SIGNING_KEY"}
    unsigned = subprocess.run([SIGN, str(release)], env=environment, capture_output=True, text=True)
    assert unsigned.returncode == 0
    assert unsigned.stdout == ""
    assert (
        unsigned.stderr
        == "make-release: unsigned: pass SIGNING_KEY=path/to/minisign.key to sign SHA256SUMS\n"
    )
    assert not (release / "SHA256SUMS.minisig").exists()
