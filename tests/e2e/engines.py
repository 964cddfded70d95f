"""Real container engines for the end-to-end tests: rootful podman, and a dockerd of the suite's own.

No registry is reachable, so base images are debootstrapped Debian roots imported into each engine,
``imds-shim:VERSION`` is made by ``make image`` from the bundle, and pip installs from wheels that
``make bundle`` prepared, served on loopback in the EC2-host namespace (``build_network``).

Where the containers meet IMDS:

- podman joins the namespaces of conftest.py directly (``--network ns:``): one router hop from
  IMDS, or the machine whose default route is a blackhole;
- dockerd runs *inside* the topology's "EC2 host" namespace, so its own ``docker0`` bridge
  (198.18.1.1/24) is the router hop, exactly as on EC2. Off EC2 is a blackhole route for the
  metadata address in that namespace. It is started with ``nsenter --net=`` (``ip netns exec``
  remounts /sys and hides the cgroup mounts), without iptables or masquerading, and stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .netns import IMDS_ADDRESS, Topology

ROOT = Path(__file__).resolve().parents[2]

ON_EC2, OFF_EC2 = "on EC2", "off EC2"
DOCKER_BRIDGE = "198.18.1.1/24"
# Debian's docker.io client matches its daemon; a newer client elsewhere on PATH wants buildx.
DOCKER_CLIENT = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")


class Engine:
    """What the tests need of an engine: import, build, run, and where a container sits."""

    name = ""
    init = False  # whether `run` puts an init (tini) in front of the entrypoint, as users should

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command, self.env = command, env
        self.tags: list[str] = []  # what make image made

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            [*self.command, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and completed.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)}: {completed.stderr[-2000:]}")
        return completed

    def import_root(self, root: Path, image: str) -> None:
        tar = subprocess.Popen(["tar", "-C", str(root), "--exclude=./src", "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [*self.command, "import", "-", image],
            stdin=tar.stdout,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        tar.wait()

    def build(
        self,
        dockerfile: Path,
        context: Path,
        tag: str,
        network: str = "none",
        platform: str | None = None,
        **build_args: str,
    ) -> None:
        flags = [item for name, value in build_args.items() for item in ("--build-arg", f"{name}={value}")]
        if platform:
            flags += ["--platform", platform]
        self(
            "build", "--network", network, "-f", str(dockerfile), *flags, "-t", tag, str(context), timeout=900
        )

    def make_image(self) -> list[str]:
        """`make image` with this engine: the tags it made, imds-shim:VERSION first."""
        completed = subprocess.run(
            [str(ROOT / "scripts" / "make-image")],
            env=dict(self.env, ENGINE=" ".join(self.command)),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if completed.returncode != 0:
            raise AssertionError(f"make image with {self.name}: {completed.stderr[-2000:]}")
        return completed.stdout.split()

    @property
    def build_network(self) -> str:
        """The --network for a build that reaches loopback in the topology's EC2-host namespace."""
        raise NotImplementedError

    def network(self, where: str) -> list[str]:
        raise NotImplementedError

    @contextmanager
    def placed(self, where: str) -> Iterator[list[str]]:
        """The `run` flags that put a container on EC2 or off it, for as long as it runs."""
        yield self.network(where)

    def run(
        self,
        image: str,
        *command: str,
        where: str = ON_EC2,
        env: dict[str, str] | None = None,
        flags: tuple[str, ...] = (),
        timeout: float = 60,
    ) -> tuple[float, subprocess.CompletedProcess[str]]:
        """`run --rm IMAGE COMMAND...` through the image's ENTRYPOINT; returns (seconds, result)."""
        variables = [item for name, value in (env or {}).items() for item in ("-e", f"{name}={value}")]
        init = ["--init"] if self.init else []
        with self.placed(where) as network:
            started = time.monotonic()
            completed = self(
                "run",
                "--rm",
                *init,
                *network,
                *variables,
                *flags,
                image,
                *command,
                check=False,
                timeout=timeout,
            )
            return time.monotonic() - started, completed

    def start_detached(self, name: str, image: str, *command: str) -> None:
        init = ["--init"] if self.init else []
        self("run", "-d", "--name", name, *init, *self.network(ON_EC2), image, *command)

    def stop(self) -> None:
        """Release what the engine holds for the tests."""


class Podman(Engine):
    """Rootful podman as these machines run it: runc, cgroupfs, no default ulimits; with storage of
    its own, so that the tests' imds-shim:VERSION never replaces one the machine already has."""

    name = "podman"

    def __init__(self, work: Path, topology: Topology) -> None:
        conf = work / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        self.storage = work / "storage"
        super().__init__(
            [
                "podman",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--root",
                str(self.storage / "root"),
                "--runroot",
                str(self.storage / "run"),
            ],
            dict(os.environ, CONTAINERS_CONF=str(conf)),
        )
        self.topology = topology

    @property
    def build_network(self) -> str:
        return f"ns:/run/netns/{self.topology.host}"

    def network(self, where: str) -> list[str]:
        namespace = self.topology.container if where == ON_EC2 else self.topology.offec2
        return ["--network", f"ns:/run/netns/{namespace}"]

    def stop(self) -> None:
        self("rm", "--all", "--force", check=False)
        self("rmi", "--all", "--force", check=False)
        # The storage driver may keep its folders mounted (private bind mounts): deepest first.
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(self.storage))), reverse=True):
            subprocess.run(["umount", "--lazy", mount], check=False)
        shutil.rmtree(self.storage, ignore_errors=True)


class Docker(Engine):
    """Debian's docker.io: a dockerd of its own in the EC2-host namespace, its bridge as the hop."""

    name = "docker"
    init = True

    def __init__(self, topology: Topology) -> None:
        # Short paths: containerd's sockets live under the exec root (108-byte limit).
        self.home = Path(tempfile.mkdtemp(prefix="imsh-dk-", dir="/tmp"))
        socket = self.home / "docker.sock"
        super().__init__(
            [str(DOCKER_CLIENT)],
            {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "DOCKER_HOST": f"unix://{socket}",
                "DOCKER_BUILDKIT": "0",
                "DOCKER_CONFIG": str(self.home / "client"),
            },
        )
        self.topology = topology
        self.log = (self.home / "dockerd.log").open("w")
        self.daemon = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{topology.host}",
                "dockerd",
                "--data-root",
                str(self.home / "data"),
                "--exec-root",
                str(self.home / "exec"),
                "--pidfile",
                str(self.home / "dockerd.pid"),
                "-H",
                f"unix://{socket}",
                "--iptables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--bip",
                DOCKER_BRIDGE,
                # Networks it makes (Compose's, one a project) in 198.19.0.0/16: the IMDS
                # namespace routes 198.18.0.0/15 back through the host, as it does for docker0.
                "--default-address-pool",
                "base=198.19.0.0/16,size=24",
                "--storage-driver",
                "overlay2",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while self("version", check=False, timeout=10).returncode != 0:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd did not start: {self.log_tail()}")
            time.sleep(0.2)

    @property
    def build_network(self) -> str:
        return "host"  # dockerd's own namespace: the EC2 host

    def log_tail(self) -> str:
        return (self.home / "dockerd.log").read_text()[-1500:]

    def network(self, where: str) -> list[str]:
        return []  # the default bridge, docker0, in the EC2-host namespace

    @contextmanager
    def placed(self, where: str) -> Iterator[list[str]]:
        if where == ON_EC2:
            yield []
            return
        # The host drops packets for the metadata address without a word, like a machine off EC2.
        self.topology.ip(self.topology.host, "route", "add", "blackhole", f"{IMDS_ADDRESS}/32")
        try:
            yield []
        finally:
            self.topology.ip(self.topology.host, "route", "del", "blackhole", f"{IMDS_ADDRESS}/32")

    def stop(self) -> None:
        self.daemon.terminate()  # nsenter execs dockerd: this is dockerd's own PID
        try:
            self.daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)
