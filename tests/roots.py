"""Minimal root file systems that stand in for the images people put the bundle into.

No registry is reachable here, so each is made from what this machine has:

- ``scratch``: nothing but the bundle and the command (the engine adds /proc, /dev, /sys);
- ``distroless``: like gcr.io/distroless/static: /etc/passwd with ``nonroot`` (65532), CA
  certificates, /tmp, and a static command, no C library;
- ``musl``: the Alpine stand-in: musl's loader (Debian's ``musl``) as /lib/ld-musl-*.so.1, a
  command linked against it (``musl-gcc``), and a static busybox as /bin/sh, no glibc at all.

The command is ``tests/data/envdump.c``: it prints its PID, parent PID and environment, built
static, or dynamic against musl for the musl root so that it proves the image's own C library
still serves the command.

Each root is made for one architecture. This machine's own takes musl-gcc, musl's loader and
busybox from the machine; another (arm64 on an x86-64 host) takes them from that architecture's
trixie root, which ``make bundle ARCH=arm64`` leaves in build/ with musl-tools and busybox-static,
and compiles there under qemu-user.
"""

from __future__ import annotations

import atexit
import functools
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ENVDUMP = HERE / "data" / "envdump.c"
KINDS = ("scratch", "distroless", "musl")
NATIVE = platform.machine()
DEBIAN_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64"}
NOBODY = "65534"


def elf_machine(executable: Path | str | bytes) -> str:
    """The architecture an ELF executable (a path, or its bytes) is built for, by uname's name."""
    header = executable[:20] if isinstance(executable, bytes) else Path(executable).read_bytes()[:20]
    return ELF_MACHINES.get(int.from_bytes(header[18:20], "little"), "unknown")


class Toolchain:
    """Where one architecture's musl compiler, musl loader and static busybox come from: this
    machine for its own architecture, else that architecture's trixie root from make bundle."""

    def __init__(self, machine: str = NATIVE) -> None:
        self.machine = machine
        arch = DEBIAN_ARCHITECTURES.get(machine, machine)
        self.root = None if machine == NATIVE else HERE.parent / "build" / f"trixie-{arch}"

    def path(self, inside: str) -> Path:
        """``inside`` (absolute, in the toolchain's system) on this machine, symlinks resolved
        within the toolchain's root."""
        if self.root is None:
            return Path(inside).resolve()
        path = Path(inside)
        for _ in range(40):
            target = self.root / path.relative_to("/")
            if not target.is_symlink():
                return target
            link = Path(target.readlink())
            path = link if link.is_absolute() else (path.parent / link)
        raise OSError(f"too many symlinks: {inside}")

    @property
    def musl_loader(self) -> Path:
        return self.path(f"/lib/ld-musl-{self.machine}.so.1")

    @property
    def busybox(self) -> Path:
        return self.path("/bin/busybox")

    def why_not(self, kind: str) -> str | None:
        """Why this toolchain cannot make a root of ``kind``, or None."""
        if self.root is not None:
            if not (self.root / "usr" / "bin" / "musl-gcc").exists():
                return f"no {self.machine} root with musl-tools: make bundle ARCH={self.machine}"
        elif shutil.which("musl-gcc") is None:
            return "musl-gcc is not installed (Debian package musl-tools)"
        if kind == "musl" and not (self.musl_loader.exists() and self.busybox.exists()):
            return "musl's loader or a static busybox is missing (Debian packages musl, busybox-static)"
        return None

    def envdump(self, static: bool) -> Path:
        """envdump built for this architecture: static, or linked against musl's loader."""
        return _compiled(self.machine, static)

    def compile(self, static: bool, output: Path) -> None:
        flags = ["-static"] if static else []
        if self.root is None:
            subprocess.run(["musl-gcc", *flags, "-Os", "-o", str(output), str(ENVDUMP)], check=True)
            return
        with tempfile.TemporaryDirectory(dir=self.root / "tmp") as work:
            inside = Path("/tmp") / Path(work).name
            shutil.copy(ENVDUMP, Path(work) / ENVDUMP.name)
            subprocess.run(
                [
                    str(shutil.which("chroot")),
                    str(self.root),
                    "musl-gcc",
                    *flags,
                    "-Os",
                    "-o",
                    f"{inside}/envdump",
                    f"{inside}/envdump.c",
                ],
                check=True,
                env={"PATH": "/usr/bin:/bin", **{k: v for k, v in os.environ.items() if k == "QEMU_CPU"}},
            )
            shutil.copy(Path(work) / "envdump", output)


@functools.cache
def _compiled(machine: str, static: bool) -> Path:
    """One build per architecture and kind for the whole run: under qemu-user it takes seconds."""
    folder = tempfile.mkdtemp(prefix="imds-shim-envdump-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    output = Path(folder) / "envdump"
    Toolchain(machine).compile(static, output)
    return output


def why_not(kind: str, machine: str = NATIVE) -> str | None:
    """Why this machine cannot make a root of ``kind`` for ``machine``, or None."""
    return Toolchain(machine).why_not(kind)


def make_root(kind: str, root: Path, bundle: Path | None = None, machine: str = NATIVE) -> Path:
    """Make a root of ``kind`` for ``machine`` at ``root`` (the bundle copied to /opt/imds-shim if
    given); returns the command's path inside the root."""
    toolchain = Toolchain(machine)
    for folder in ("proc", "dev", "sys", "tmp", "usr/local/bin"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    command = root / "usr" / "local" / "bin" / "envdump"
    shutil.copy(toolchain.envdump(static=kind != "musl"), command)
    if kind == "distroless":
        (root / "etc" / "ssl" / "certs").mkdir(parents=True)
        (root / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/sbin/nologin\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
            "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
        )
        certificates = Path("/etc/ssl/certs/ca-certificates.crt")
        if certificates.exists():
            shutil.copy(certificates, root / "etc" / "ssl" / "certs")
    if kind == "musl":
        (root / "lib").mkdir()
        shutil.copy(toolchain.musl_loader, root / "lib" / f"ld-musl-{machine}.so.1")
        (root / "bin").mkdir()
        shutil.copy(toolchain.busybox, root / "bin" / "sh")
    if bundle is not None:
        shutil.copytree(bundle, root / "opt" / "imds-shim", symlinks=True)
    return Path("/usr/local/bin/envdump")


def parse_envdump(output: str) -> tuple[int, int, dict[str, str]]:
    """(pid, parent pid, environment) from envdump's output."""
    lines = output.splitlines()
    pid, parent = (int(line.split("=", 1)[1]) for line in lines[:2])
    return pid, parent, dict(line.split("=", 1) for line in lines[2:] if "=" in line)
