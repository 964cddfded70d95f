"""``--serve`` judged by SDKs nobody here wrote, each from its default credential chain, inside a
network namespace that has only loopback, so that none of them can fall back to IMDS itself.

- aws-sdk-go v1 (1.44) and v2 (config 1.17), Debian 12's packages, built offline in GOPATH mode
  (``GO111MODULE=off``, ``GOPATH=...:/usr/share/gocode``): each follows the endpoint through
  renewals of a set that lives 8 s;
- Debian 12's Ruby SDK (aws-sdk-core 3.168) reads only ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``:
  it finds no credentials under ``--serve``, which is what docs/sdks.md says of SDKs too old for
  ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (use ``--refresh`` or static keys for them).

botocore, the AWS CLI and the JavaScript SDK v3 judge ``--serve`` in tests/test_serve.py and the
end-to-end suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import HERE, SHIM, made_once, missing

pytestmark = pytest.mark.behaviour  # each runs for seconds, and holds no time budget

GO_JUDGES = HERE / "data" / "go"
GO_PACKAGES = {
    "v1": "/usr/share/gocode/src/github.com/aws/aws-sdk-go",
    "v2": "/usr/share/gocode/src/github.com/aws/aws-sdk-go-v2",
}
LIFETIME = 8  # seconds a simulated set lives: renewed every 4 s, with room for a loaded machine
FOR = 13  # seconds each judge asks: long enough for at least two renewals


def _why_not(*needed: str) -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "a network namespace of its own needs root and unshare"
    missing = [path for path in needed if not (shutil.which(path) or Path(path).exists())]
    if missing:
        return f"not installed: {', '.join(missing)} (.ci/run installs them from Debian)"
    return None


@pytest.fixture(scope="session")
def go_judges(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both Go judges, built once per run, offline, against Debian's packages."""
    reason = _why_not("go", *GO_PACKAGES.values())
    if reason:
        missing(reason)

    def build(folder: Path) -> None:
        folder.mkdir()
        environment = dict(
            os.environ,
            GO111MODULE="off",
            GOPATH=f"{folder / 'gopath'}:/usr/share/gocode",
            GOCACHE=str(folder / "cache"),
            GOFLAGS="",
            GOPROXY="off",
        )
        for version in GO_PACKAGES:
            subprocess.run(
                ["go", "build", "-o", str(folder / f"judge-{version}"), "."],
                cwd=GO_JUDGES / version,
                env=environment,
                check=True,
                capture_output=True,
                timeout=600,
            )

    return made_once(tmp_path_factory, "go-judges", build)


def in_a_namespace_with_only_loopback(command: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """``imds-shim simulate -- imds-shim --serve -- COMMAND`` where nothing but 127.0.0.1 exists."""
    inner = " ".join(f"'{part}'" for part in command)
    script = (
        f"ip link set lo up && exec '{SHIM}' simulate --expires-in {LIFETIME} -- '{SHIM}' --serve -- {inner}"
    )
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home)},  # no ~/.aws of anyone's
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("version", list(GO_PACKAGES))
def test_the_go_sdk_follows_serve_through_renewals_with_no_route_to_imds(
    go_judges: Path, version: str, tmp_path: Path
) -> None:
    completed = in_a_namespace_with_only_loopback([str(go_judges / f"judge-{version}"), str(FOR)], tmp_path)
    assert completed.returncode == 0, completed.stderr
    asks = [json.loads(line) for line in completed.stdout.splitlines()]
    assert len(asks) > 20, completed.stderr
    assert [ask for ask in asks if "error" in ask] == [], completed.stderr
    assert {ask["provider"] for ask in asks} == {"CredentialsEndpointProvider"}, asks
    keys = list(dict.fromkeys(ask["key"] for ask in asks))
    assert len(keys) >= 3, keys  # the first set and at least two renewals


def test_an_sdk_without_full_uri_support_finds_nothing_under_serve(tmp_path: Path) -> None:
    """Ruby's aws-sdk-core 3.168 knows only the relative URI of ECS: no provider at all here."""
    reason = _why_not("ruby", "/usr/share/rubygems-integration/all/gems/aws-sdk-core-3.168.1")
    if reason:
        missing(reason)
    completed = in_a_namespace_with_only_loopback(["ruby", str(HERE / "data" / "judge.rb")], tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {"provider": None}
