"""Dockerfile.example built and run by a real container engine (rootful podman with runc).

No registry is reachable, so the base image is a minimal Debian made with debootstrap and
imported. imds-shim goes in from wheels built on the host. The containers join the namespaces of
conftest.py (``--network ns:``), so they meet IMDS one router hop away, or no IMDS at all, and
everything goes through the image's real ENTRYPOINT.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import StartImds, Topology, record

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/imds-shim-example:e2e"
BASE_IMAGE = "localhost/imds-shim-base:e2e"
MIRROR = os.environ.get("IMDS_SHIM_E2E_MIRROR", "http://deb.debian.org/debian")
ENV_REPORT = ["python3", "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


def _why_no_engine() -> str | None:
    if os.geteuid() != 0:
        return "rootful podman needs root (CI runs as root)"
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages podman, runc, debootstrap)"
    return None


class Podman:
    """Rootful podman as these machines run it: runc, cgroupfs, no default ulimits."""

    def __init__(self, work: Path) -> None:
        conf = work / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))

    def __call__(self, *args: str, timeout: float = 120,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check and completed.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {completed.stderr}")
        return completed


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """The example image, built from a debootstrapped base and wheels built on the host."""
    reason = _why_no_engine()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("podman")
    engine = Podman(work)
    rootfs = work / "rootfs"
    bootstrap = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,passwd", "bookworm",
         str(rootfs), MIRROR], capture_output=True, text=True, timeout=900,
    )
    if bootstrap.returncode != 0:
        pytest.skip(f"debootstrap could not build a base image: {bootstrap.stderr[-300:]}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "import", "-",
                    BASE_IMAGE], stdin=tar.stdout, env=engine.env, check=True,
                   capture_output=True, timeout=300)
    tar.wait()
    context = work / "context"
    context.mkdir()
    shutil.copy(ROOT / "Dockerfile.example", context / "Dockerfile")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", str(ROOT), "-w",
                    str(context / "wheels")], check=True, timeout=300)
    engine("build", "--quiet", "--network", "none", "--build-arg", f"BASE={BASE_IMAGE}",
           "--build-arg", "IMDS_SHIM=--no-index --find-links /src/wheels imds-shim",
           "-t", IMAGE, str(context), timeout=600)
    yield engine
    engine("rmi", "--force", IMAGE, BASE_IMAGE, check=False)


def run_container(podman: Podman, namespace: str, *args: str,
                  env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    flags = [item for name, value in (env or {}).items() for item in ("-e", f"{name}={value}")]
    started = time.monotonic()
    completed = podman("run", "--rm", "--network", f"ns:/run/netns/{namespace}", *flags, IMAGE,
                       *args, check=False)
    return time.monotonic() - started, completed


def test_entrypoint_exports_credentials_and_command_is_pid_1(
    podman: Podman, topology: Topology, imds: StartImds
) -> None:
    """Through the image's ENTRYPOINT: credentials in the container, the command as PID 1."""
    imds("--hop-limit", "2", "--imds-v2-required")
    _, completed = run_container(podman, topology.container, *ENV_REPORT)
    assert completed.returncode == 0, completed.stderr
    env = json.loads(completed.stdout)
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    assert env["AWS_SECURITY_TOKEN"] == env["AWS_SESSION_TOKEN"]
    assert env["AWS_REGION"] == "eu-west-1"
    _, pid = run_container(podman, topology.container, "sh", "-c", "echo $$")
    assert pid.stdout.strip() == "1"
    _, default_cmd = run_container(podman, topology.container)
    assert default_cmd.stdout.startswith("credentials for ASIA…")


def test_stop_sends_sigterm_to_the_command(
    podman: Podman, topology: Topology, imds: StartImds
) -> None:
    """`podman stop` (like `docker stop`) delivers SIGTERM to the command, which exits by it."""
    imds("--hop-limit", "2")
    script = 'trap "echo got-TERM; exit 42" TERM; echo ready; while :; do sleep 0.1; done'
    name = f"imds-shim-stop-{os.getpid()}"
    podman("run", "-d", "--name", name, "--network", f"ns:/run/netns/{topology.container}",
           IMAGE, "sh", "-c", script)
    try:
        for _ in range(200):
            if "ready" in podman("logs", name).stdout:
                break
            time.sleep(0.05)
        started = time.monotonic()
        podman("stop", "--time", "10", name)
        stopped = time.monotonic() - started
        record("container: podman stop -> SIGTERM handled by the command", stopped)
        assert "got-TERM" in podman("logs", name).stdout
        state = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert state == "42"
        assert stopped < 5  # not the 10 s grace period: the signal got through
    finally:
        podman("rm", "--force", name, check=False)


def test_hop_limit_1_is_diagnosed_in_the_container(
    podman: Podman, topology: Topology, imds: StartImds
) -> None:
    """Hop limit 1 and IMDSv2 required: the container exits 125 with the diagnosis."""
    imds("--hop-limit", "1", "--imds-v2-required")
    seconds, completed = run_container(podman, topology.container, "true")
    record("container: hop limit 1, IMDSv2 required (podman run, total)", seconds)
    assert completed.returncode == 125
    assert "hop limit is probably 1" in completed.stderr
    assert "--http-put-response-hop-limit 2" in completed.stderr


def test_optional_off_ec2_runs_the_command(podman: Podman, topology: Topology) -> None:
    """Off EC2 with IMDS_SHIM_OPTIONAL=1 the container's command runs without credentials."""
    seconds, completed = run_container(podman, topology.offec2, *ENV_REPORT,
                                       env={"IMDS_SHIM_OPTIONAL": "1"})
    record("container: not on EC2, --optional (podman run, total)", seconds)
    assert completed.returncode == 0, completed.stderr
    assert "AWS_ACCESS_KEY_ID" not in json.loads(completed.stdout)
    assert "unreachable" in completed.stderr
