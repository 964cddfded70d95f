"""``imds-shim status``: how a supervised container's credentials stand, for a health check or a person.

How the verb finds the supervisor (``--pid PID`` names one instead): every supervising shim
listens on a Linux *abstract* unix socket, ``imds-shim/status/<pid namespace>/<pid>`` (no file, so
it works ``FROM scratch`` and on a read-only root), and names its process ``imds-shim``
(``/proc/PID/comm``). ``status`` asks its own ancestors first (run inside the supervised command,
it reaches its own supervisor), then every such process in its PID namespace by PID (``docker
exec`` and exec probes join the container's), and reports the first that answers. It needs no
variable of the command's.

What it gives, and to whom: one line with mode, role, the *masked* key ID, expiry, the last
renewal and the failures in a row; never a secret. The supervisor answers only a peer whose user
(``SO_PEERCRED``) is its own or root, who could read the command's environment anyway.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time

from shim.credentials import format_duration
from shim.lifetime.standing import Standing
from shim.lifetime.supervisor import Service, Supervisor
from shim.log import printable

PROGRAM = "imds-shim"
HEALTHY, UNHEALTHY = 0, 1  # Docker's HEALTHCHECK and Kubernetes' exec probes read these
ASK_TIMEOUT = 1.0
MAX_STANDING_BYTES = 4096


def socket_name(pid: int) -> bytes:
    """The abstract socket of the supervisor with ``pid`` in this PID namespace."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"\0{PROGRAM}/status/{namespace}/{pid}".encode()


class StatusService(Service):
    """The supervisor's side: answer each allowed peer with the standing, then close."""

    def __init__(self, standing: Standing) -> None:
        self.standing = standing
        self.listener: socket.socket | None = None

    def attach(self, supervisor: Supervisor) -> None:
        try:
            with open("/proc/self/comm", "w") as comm:  # the bundle runs as its loader's name
                comm.write(PROGRAM)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(socket_name(os.getpid()))
            listener.listen(8)
        except OSError:  # no /proc, or a second supervisor with this PID (cannot be): no status
            return
        listener.setblocking(False)
        self.listener = listener
        supervisor.watch(listener.fileno(), self._answer)

    def _answer(self) -> None:
        assert self.listener is not None
        try:
            peer, _ = self.listener.accept()
        except OSError:
            return
        with peer:
            credentials = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid = struct.unpack("3i", credentials)[1]
            if uid not in (0, os.geteuid()):
                return
            try:  # noqa: SIM105 -- contextlib: one more import at every supervised start
                peer.send(self.standing.document(), socket.MSG_DONTWAIT)
            except OSError:  # the asker left already
                pass

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()


def ask() -> dict[str, object] | None:
    """The standing of the nearest supervisor that answers us, or None: an ancestor first (status
    run inside the supervised command asks its own), then any in this PID namespace by PID."""
    me = os.getpid()
    try:
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return None
    for pid in [*_ancestors(), *pids]:
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if pid == me or comm.read().strip() != PROGRAM:
                    continue
        except OSError:
            continue
        answer = _ask_one(pid)
        if answer is not None:
            return answer
    return None


def _ancestors() -> list[int]:
    found: list[int] = []
    pid = os.getppid()
    while pid > 0 and len(found) < 64:
        found.append(pid)
        try:
            with open(f"/proc/{pid}/stat") as stat:
                pid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def _ask_one(pid: int) -> dict[str, object] | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(ASK_TIMEOUT)
    data = b""
    try:
        client.connect(socket_name(pid))
        while len(data) <= MAX_STANDING_BYTES and (chunk := client.recv(MAX_STANDING_BYTES)):
            data += chunk
        document = json.loads(data)
    except (OSError, ValueError):
        return None
    finally:
        client.close()
    return document if isinstance(document, dict) else None


def report(standing: dict[str, object] | None, now: float | None = None) -> tuple[int, str]:
    """The exit status and the one line for a standing (None: no supervisor answered)."""
    if standing is None:
        return UNHEALTHY, (
            "unhealthy: no imds-shim supervisor answered in this container "
            "(status needs --serve, --expiry-signal or --init, and the same user or root)"
        )
    moment = time.time() if now is None else now
    mode = standing.get("mode")
    expires_at = standing.get("expires_at")
    failures = standing.get("failures")
    parts = [f"mode {mode}"]
    note = standing.get("note")
    if not isinstance(expires_at, (int, float)):
        healthy = standing.get("note") is not None and str(note).startswith("stepped aside")
        parts.append(str(note or "no credentials"))
        verdict = "ok" if healthy else "unhealthy"
        return (HEALTHY if healthy else UNHEALTHY), printable(f"{verdict}: {', '.join(parts)}")
    parts.append(f"role {standing.get('role')}")
    parts.append(f"key {standing.get('key')}")
    left = expires_at - moment
    when = _rfc3339(expires_at)
    parts.append(f"expires {when} (in {format_duration(left)})" if left > 0 else f"expired at {when}")
    renewed_at = standing.get("renewed_at")
    parts.append(
        f"last renewal {_rfc3339(renewed_at) if isinstance(renewed_at, (int, float)) else 'none yet'}"
    )
    parts.append(f"{failures} failures in a row")
    if standing.get("last_error") and failures:
        parts.append(f"last error: {standing.get('last_error')}")
    healthy = left > 0
    return (HEALTHY if healthy else UNHEALTHY), printable(
        f"{'ok' if healthy else 'unhealthy'}: {', '.join(parts)}"
    )


def _rfc3339(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def status(pid: int | None = None) -> tuple[int, str]:
    """The ``status`` verb: (exit status, the line to print); ``pid`` names one supervisor."""
    return report(ask() if pid is None else _ask_one(pid))
