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

Whom it believes: abstract names are shared by every process in the *network* namespace (a
pod's sidecars, every container under ``--network host``), so anyone could bind a supervisor's
name first. The client believes only the process it asked: the peer's PID (``SO_PEERCRED``, as
seen from this PID namespace) must be that supervisor's, and its user root or the asker's own
(any user, when the asker is root). A supervisor that finds its name taken says so once and
listens under that name plus an unpredictable suffix, which the client finds in
``/proc/net/unix``. It accepts every waiting connection in one turn of its loop, and a client
whose connection finds the queue full waits for its turn until its deadline instead of giving up.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import time

from shim.credentials import format_duration
from shim.lifetime.standing import Standing
from shim.lifetime.supervisor import Service, Supervisor
from shim.log import log, printable

TYPE_CHECKING = False  # no typing import at run time: every supervised start loads this
if TYPE_CHECKING:
    from typing import Union

    # What asking gives: the supervisor's standing, why an impostor is not it, or None (no answer).
    Answer = Union[dict[str, object], str, None]

PROGRAM = "imds-shim"
HEALTHY, UNHEALTHY = 0, 1  # Docker's HEALTHCHECK and Kubernetes' exec probes read these
ASK_TIMEOUT = 1.0
MAX_STANDING_BYTES = 4096


PEER_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def socket_name(pid: int, suffix: str = "") -> bytes:
    """The abstract socket of the supervisor with ``pid`` in this PID namespace (``suffix``: the
    unpredictable part of the name it listens under when this one was taken)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"\0{PROGRAM}/status/{namespace}/{pid}{suffix}".encode()


def peer_of(connection: socket.socket) -> tuple[int, int]:
    """The (PID, uid) of the process at the other end, as the kernel vouches for them."""
    pid, uid, _ = PEER_CREDENTIALS.unpack(
        connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEER_CREDENTIALS.size)
    )
    return pid, uid


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
        except OSError:  # no /proc: status cannot find us anyway
            return
        try:
            self._bind(listener)
            # A long queue: a flood of connections from anyone in the network namespace must not
            # turn a health check away before its turn.
            listener.listen(socket.SOMAXCONN)
        except OSError:
            listener.close()
            return
        listener.setblocking(False)
        self.listener = listener
        supervisor.watch(listener.fileno(), self._answer)

    @staticmethod
    def _bind(listener: socket.socket) -> None:
        """Our usual name; if another process holds it, that name plus a suffix nobody can guess."""
        usual = socket_name(os.getpid())
        try:
            listener.bind(usual)
            return
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
        suffix = f"/{os.urandom(8).hex()}"
        listener.bind(socket_name(os.getpid(), suffix))
        log.warning(
            f"status: another process in this network namespace holds the name {usual[1:].decode()!r}; "
            f"imds-shim status finds this supervisor under {suffix!r} after it instead"
        )

    def _answer(self) -> None:
        """Every connection waiting now, each answered (or refused) without waiting for it."""
        assert self.listener is not None
        while True:
            try:
                peer, _ = self.listener.accept()
            except OSError:  # none left (EAGAIN), or one that left already
                return
            with peer:
                if peer_of(peer)[1] not in (0, os.geteuid()):
                    continue
                try:  # noqa: SIM105 -- contextlib: one more import at every supervised start
                    peer.send(self.standing.document(), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                except OSError:  # the asker left already, or does not read
                    pass

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()


def ask() -> Answer:
    """The standing of the nearest supervisor that answers us, or None: an ancestor first (status
    run inside the supervised command asks its own), then any in this PID namespace by PID. An
    impostor's answer is never taken; if only impostors answered, what they were."""
    me = os.getpid()
    try:
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return None
    impostor: Answer = None
    for pid in [*_ancestors(), *pids]:
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if pid == me or comm.read().strip() != PROGRAM:
                    continue
        except OSError:
            continue
        answer = _ask_one(pid)
        if isinstance(answer, dict):
            return answer
        impostor = impostor or answer
    return impostor


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


def _ask_one(pid: int) -> Answer:
    """Ask supervisor ``pid``, under its usual name and then under any suffixed one it took."""
    deadline = time.monotonic() + ASK_TIMEOUT
    impostor: Answer = None
    for name in [socket_name(pid), *_suffixed_names(pid)]:
        answer = _ask_at(name, pid, deadline)
        if isinstance(answer, dict):
            return answer
        impostor = impostor or answer
    return impostor


def _suffixed_names(pid: int) -> list[bytes]:
    """The names under which supervisor ``pid`` may listen because its usual one was taken, as
    /proc/net/unix lists them (abstract names start with '@' there)."""
    prefix = "@" + socket_name(pid, "/")[1:].decode()
    try:
        with open("/proc/net/unix") as table:
            paths = {line.split()[-1] for line in table.read().splitlines()[1:] if len(line.split()) == 8}
    except OSError:
        return []
    return [f"\0{path[1:]}".encode() for path in sorted(paths) if path.startswith(prefix)]


def _ask_at(name: bytes, pid: int, deadline: float) -> Answer:
    client = _connect(name, deadline)
    if client is None:
        return None
    data = b""
    try:
        peer_pid, peer_uid = peer_of(client)
        if peer_pid != pid or (peer_uid not in (0, os.geteuid()) and os.geteuid() != 0):
            return (
                f"the status socket of PID {pid} is held by another process (PID {peer_pid or '?'}, "
                f"uid {peer_uid}), not by imds-shim's supervisor"
            )
        client.settimeout(max(0.0, deadline - time.monotonic()))
        while len(data) <= MAX_STANDING_BYTES and (chunk := client.recv(MAX_STANDING_BYTES)):
            data += chunk
        document = json.loads(data)
    except (OSError, ValueError):
        return None
    finally:
        client.close()
    return document if isinstance(document, dict) else None


def _connect(name: bytes, deadline: float) -> socket.socket | None:
    """A connection to ``name``, waiting for a place in its queue until ``deadline`` (a unix
    socket's connect fails at once with EAGAIN while the queue is full, instead of waiting)."""
    pause = 0.005
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            client.connect(name)
            return client
        except BlockingIOError:
            client.close()
            if time.monotonic() + pause > deadline:
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        except OSError:
            client.close()
            return None


def report(standing: Answer, now: float | None = None) -> tuple[int, str]:
    """The exit status and the one line for a standing (None: no supervisor answered; a string:
    only an impostor did)."""
    if isinstance(standing, str):
        return UNHEALTHY, printable(f"unhealthy: {standing}")
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
        if failures:  # --serve --optional, waiting for a first set
            parts.append(f"{failures} failures in a row, last error: {standing.get('last_error')}")
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
