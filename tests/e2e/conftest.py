"""A private EC2 look-alike made of network namespaces, created and removed by the suite.

    imds ns        169.254.169.254 (the simulator on port 80), link-local to the host
      | veth
    host ns        "EC2 host": routes between IMDS and the container bridge, forwarding on;
      | veth         dockerd runs here too, its docker0 bridge (198.18.1.1/24) another hop
    container ns   one router hop behind the host; default route via the host

    offec2 ns ---- router ns: a default route into a blackhole (drops silently, no ICMP)

No namespace has a route off the machine: the only default routes point at the host namespace or
at the blackhole router. The real metadata address is used only inside these namespaces, as
the project's safety rule allows (README, "Development"). Everything is removed when the session ends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import helpers
import pytest
from helpers import missing
from roots import DEBIAN_ARCHITECTURES, NATIVE

from .netns import IMDS_ADDRESS, TIMINGS, Imds, StartImds, Topology, why_no_namespaces

ROOT = Path(__file__).resolve().parents[2]
MIRROR = os.environ.get("IMDS_SHIM_E2E_MIRROR", "http://deb.debian.org/debian")


class Roots(NamedTuple):
    builder: Path
    bare: Path
    wheels: Path


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    """The namespaces, built once per session and always removed."""
    reason = why_no_namespaces()
    if reason:
        missing(reason)
    net = Topology(f"imsh{os.getpid() % 100000}")
    try:
        net.build()
    except (subprocess.CalledProcessError, OSError) as error:
        net.remove()
        missing(f"cannot build network namespaces here: {error}")
    yield net
    net.remove()


@pytest.fixture
def imds(topology: Topology) -> Iterator[StartImds]:
    """Start the simulator on 169.254.169.254:80 inside the IMDS namespace: imds(*knobs)."""
    running: list[Imds] = []

    def start(*knobs: str) -> Imds:
        process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                topology.imds,
                helpers.under_test().SHIM,
                "simulate",
                "-v",
                "--host",
                IMDS_ADDRESS,
                "--port",
                "80",
                *knobs,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        server = Imds(process, topology.imds)
        running.append(server)
        assert process.stderr is not None
        line = process.stderr.readline()
        assert re.search(r"serving on http://169\.254\.169\.254:80", line), line
        threading.Thread(target=server.drain, daemon=True).start()
        return server

    yield start
    for server in running:
        server.process.terminate()
        server.process.wait(timeout=10)


def _why_no_roots() -> str | None:
    if os.geteuid() != 0:
        return "building Debian roots needs root (CI runs as root)"
    missing = [tool for tool in ("debootstrap", "unshare") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages debootstrap, util-linux)"
    return None


@pytest.fixture(scope="session")
def roots() -> Roots:
    """Debian roots, shared by every engine: the bundle's builder and a bare one.

    The builder is `make bundle`'s own trixie root (python3-venv, libpython3.13, binutils), which
    also leaves the wheels an offline image build needs. The bare root is an older Debian,
    bullseye, with no Python at all: the bundle brings its own C library, so age does not matter.
    """
    reason = _why_no_roots()
    if reason:
        missing(reason)
    bare = ROOT / "build" / "e2e-bare-bullseye"
    bootstrap = None
    if not (bare / "usr" / "bin" / "sh").exists():
        shutil.rmtree(f"{bare}.partial", ignore_errors=True)
        bootstrap = subprocess.Popen(
            ["debootstrap", "--variant=minbase", "bullseye", f"{bare}.partial", MIRROR],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # debootstrap says why on stdout ("E: ...")
            text=True,
        )
    arch = DEBIAN_ARCHITECTURES[NATIVE]
    bundle = subprocess.run(
        [str(ROOT / "scripts" / "make-bundle")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHON=sys.executable, ARCH=arch),  # this machine's: the engines run it
        timeout=1800,
    )
    if bootstrap is not None:
        errors, _ = bootstrap.communicate(timeout=1800)
        if bootstrap.returncode != 0:
            missing(f"debootstrap could not build a bare root: {errors[-300:]}")
        os.rename(f"{bare}.partial", bare)
    if bundle.returncode != 0:
        missing(f"make bundle failed: {bundle.stderr[-500:]}")
    return Roots(
        builder=ROOT / "build" / f"trixie-{arch}",
        bare=bare,
        wheels=ROOT / "build" / f"wheels-{arch}",
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("end-to-end timings")
        for scenario, seconds in TIMINGS:
            terminalreporter.write_line(f"{seconds:7.3f} s  {scenario}")
