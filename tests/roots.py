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
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
ENVDUMP = HERE / "data" / "envdump.c"
KINDS = ("scratch", "distroless", "musl")
MUSL_LOADER = Path(f"/lib/ld-musl-{platform.machine()}.so.1")
BUSYBOX = Path("/bin/busybox")
NOBODY = "65534"


def why_not(kind: str) -> str | None:
    """Why this machine cannot make a root of ``kind``, or None."""
    if shutil.which("musl-gcc") is None:
        return "musl-gcc is not installed (Debian package musl-tools)"
    if kind == "musl" and not (MUSL_LOADER.exists() and BUSYBOX.exists()):
        return "musl's loader or a static busybox is missing (Debian packages musl, busybox-static)"
    return None


def make_root(kind: str, root: Path, bundle: Path | None = None) -> Path:
    """Make a root of ``kind`` at ``root`` (the bundle copied to /opt/imds-shim if given);
    returns the command's path inside the root."""
    for folder in ("proc", "dev", "sys", "tmp", "usr/local/bin"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    command = root / "usr" / "local" / "bin" / "envdump"
    static = ["-static"] if kind != "musl" else []
    subprocess.run(["musl-gcc", *static, "-Os", "-o", str(command), str(ENVDUMP)], check=True)
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
        shutil.copy(MUSL_LOADER, root / "lib" / MUSL_LOADER.name)
        (root / "bin").mkdir()
        shutil.copy(BUSYBOX, root / "bin" / "sh")
    if bundle is not None:
        shutil.copytree(bundle, root / "opt" / "imds-shim", symlinks=True)
    return Path("/usr/local/bin/envdump")


def parse_envdump(output: str) -> tuple[int, int, dict[str, str]]:
    """(pid, parent pid, environment) from envdump's output."""
    lines = output.splitlines()
    pid, parent = (int(line.split("=", 1)[1]) for line in lines[:2])
    return pid, parent, dict(line.split("=", 1) for line in lines[2:] if "=" in line)
