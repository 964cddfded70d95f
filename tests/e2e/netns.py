"""Network namespaces for the end-to-end tests: a private EC2 look-alike (see conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from helpers import emulator_env

IMDS_ADDRESS = "169.254.169.254"
TIMINGS: list[tuple[str, float]] = []
StartImds = Callable[..., "Imds"]  # the imds fixture: imds("--hop-limit", "1", ...)


def why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "the ip command is missing (Debian package iproute2)"
    return None


class Topology:
    """Names of the namespaces; ``run`` executes a command inside one of them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.imds, self.host, self.container = f"{tag}-imds", f"{tag}-host", f"{tag}-ctr"
        self.offec2, self.router = f"{tag}-off", f"{tag}-rtr"
        self.all = (self.imds, self.host, self.container, self.offec2, self.router)

    def ip(self, namespace: str | None, *args: str) -> None:
        prefix = ["ip", "netns", "exec", namespace] if namespace else []
        subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, text=True)

    def build(self) -> None:
        for namespace in self.all:
            subprocess.run(["ip", "netns", "add", namespace], check=True)
            self.ip(namespace, "link", "set", "lo", "up")
        t = self.tag[-6:]  # interface names are at most 15 characters
        self._link(f"i{t}", self.imds, f"h{t}", self.host)
        self._link(f"c{t}", self.container, f"b{t}", self.host)
        self._link(f"o{t}", self.offec2, f"r{t}", self.router)
        self.ip(self.imds, "addr", "add", f"{IMDS_ADDRESS}/16", "dev", f"i{t}")
        self.ip(self.host, "addr", "add", "169.254.0.1/16", "dev", f"h{t}")
        self.ip(self.host, "addr", "add", "198.51.100.1/24", "dev", f"b{t}")
        self.ip(self.container, "addr", "add", "198.51.100.2/24", "dev", f"c{t}")
        self.ip(self.container, "route", "add", "default", "via", "198.51.100.1")
        self.ip(self.imds, "route", "add", "198.51.100.0/24", "via", "169.254.0.1")
        # The way back to containers on a dockerd bridge in the host namespace (engines.py).
        self.ip(self.imds, "route", "add", "198.18.0.0/15", "via", "169.254.0.1")
        self.ip(self.offec2, "addr", "add", "203.0.113.2/24", "dev", f"o{t}")
        self.ip(self.offec2, "route", "add", "default", "via", "203.0.113.1")
        self.ip(self.router, "addr", "add", "203.0.113.1/24", "dev", f"r{t}")
        self.ip(self.router, "route", "add", "blackhole", "default")
        for namespace in (self.host, self.router):
            subprocess.run(
                ["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], check=True
            )

    def _link(self, left: str, left_ns: str, right: str, right_ns: str) -> None:
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                left,
                "netns",
                left_ns,
                "type",
                "veth",
                "peer",
                "name",
                right,
                "netns",
                right_ns,
            ],
            check=True,
        )
        self.ip(left_ns, "link", "set", left, "up")
        self.ip(right_ns, "link", "set", right, "up")

    def remove(self) -> None:
        for namespace in self.all:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)

    def run(
        self,
        namespace: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        timeout: float = 30,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )


def shim_env(**extra: str) -> dict[str, str]:
    """The shim's defaults: no endpoint override, nothing but PATH and the given variables."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **emulator_env(), **extra}


def record(scenario: str, seconds: float) -> None:
    """Keep a scenario's measured time for the summary at the end of the run."""
    TIMINGS.append((scenario, seconds))


SYNC_PATH = "/imds-shim-test-sync"


class Imds:
    """A simulator serving 169.254.169.254:80 in the IMDS namespace; ``requests`` lists what came."""

    def __init__(self, process: subprocess.Popen[str], namespace: str) -> None:
        self.process, self.namespace = process, namespace
        self.lines: list[str] = []

    def drain(self) -> None:
        """Collect the simulator's log lines until it exits (run in a thread)."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def requests(self) -> list[str]:
        """``METHOD PATH`` of every request so far, in order of arrival."""
        marker = "info: request: "
        return [line.split(marker, 1)[1] for line in list(self.lines) if marker in line]

    def settled_requests(self) -> list[str]:
        """Every request that arrived before now, none still in the pipe: a marker request is sent
        and waited for, and the simulator logs in order of arrival."""
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.namespace,
                sys.executable,
                "-c",
                "import urllib.request, urllib.error\n"
                f"try: urllib.request.urlopen('http://{IMDS_ADDRESS}{SYNC_PATH}')\n"
                "except urllib.error.HTTPError: pass",
            ],
            check=True,
            timeout=30,
        )
        marker = f"GET {SYNC_PATH}"
        deadline = time.monotonic() + 30
        while marker not in self.requests:
            assert time.monotonic() < deadline, "the sync request never showed in the log"
            time.sleep(0.01)
        requests = self.requests
        return requests[: requests.index(marker)]

    def wait_for_request(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.requests:
            assert time.monotonic() < deadline, "no request reached IMDS"
            time.sleep(0.02)
