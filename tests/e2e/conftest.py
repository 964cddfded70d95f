"""A private EC2 look-alike made of network namespaces, created and removed by the suite.

    imds ns        169.254.169.254 (the simulator on port 80), link-local to the host
      | veth
    host ns        "EC2 host": routes between IMDS and the container bridge, forwarding on
      | veth
    container ns   one router hop behind the host; default route via the host

    offec2 ns ---- router ns: a default route into a blackhole (drops silently, no ICMP)

No namespace has a route off the machine: the only default routes point at the host namespace or
at the blackhole router. The real metadata address is used only inside these namespaces, as
DEVELOPERS.md allows. Everything is removed when the session ends.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from .netns import IMDS_ADDRESS, SHIM, TIMINGS, StartImds, Topology, why_no_namespaces


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    """The namespaces, built once per session and always removed."""
    reason = why_no_namespaces()
    if reason:
        pytest.skip(reason)
    net = Topology(f"imsh{os.getpid() % 100000}")
    try:
        net.build()
    except (subprocess.CalledProcessError, OSError) as error:
        net.remove()
        pytest.skip(f"cannot build network namespaces here: {error}")
    yield net
    net.remove()


@pytest.fixture
def imds(topology: Topology) -> Iterator[StartImds]:
    """Start the simulator on 169.254.169.254:80 inside the IMDS namespace: imds(*knobs)."""
    running: list[subprocess.Popen[str]] = []

    def start(*knobs: str) -> None:
        process = subprocess.Popen(
            ["ip", "netns", "exec", topology.imds, SHIM, "simulate", "--host", IMDS_ADDRESS,
             "--port", "80", *knobs],
            stderr=subprocess.PIPE, text=True,
        )
        running.append(process)
        assert process.stderr is not None
        line = process.stderr.readline()
        assert re.search(r"serving on http://169\.254\.169\.254:80", line), line

    yield start
    for process in running:
        process.terminate()
        process.wait(timeout=10)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("end-to-end timings")
        for scenario, seconds in TIMINGS:
            terminalreporter.write_line(f"{seconds:7.3f} s  {scenario}")
