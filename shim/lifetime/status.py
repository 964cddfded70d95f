"""``imds-shim status``: how a supervised container's credentials stand, for a health check or a person.

How the verb finds the supervisor (``--pid PID`` names one instead): every supervising shim
listens on a Linux *abstract* unix socket, ``imds-shim/status/<pid namespace>/<pid>`` (no file, so
it works ``FROM scratch`` and on a read-only root), and names its process ``imds-shim``
(``/proc/PID/comm``). ``status`` asks its own ancestors first (run inside the supervised command,
it reaches its own supervisor), then PID 1, then a supervisor in its PID namespace that shares its
mount namespace (``docker exec`` and exec probes join the container's; in a pod sharing one PID
namespace each container has its own mount namespace), never one picked from several (see
:func:`ask`). It needs no variable of the command's.

What it gives, and to whom: one line with mode, role, the *masked* key ID, expiry, the last
renewal and the failures in a row; never a secret. The supervisor answers only a peer whose user
(``SO_PEERCRED``) is its own or root, who could read the command's environment anyway.

Whom it believes: abstract names are shared by every process in the *network* namespace (a
pod's sidecars, every container under ``--network host``), so anyone could bind a supervisor's
name first. The client believes only the process it asked: the peer's PID (``SO_PEERCRED``, as
seen from this PID namespace) must be that supervisor's, and its user root or the asker's own
(any user, when the asker is root). A supervisor that finds its name taken says so once and
listens under that name plus an unpredictable suffix, which the client finds in
``/proc/net/unix`` (first the names whose socket inode is among the supervisor's own descriptors).
It accepts a few waiting connections a turn of its loop, so that no flood keeps the loop from
its other work; a client whose connection finds the queue full waits for its turn until that
name's budget is spent. A root asker believes a supervisor of another user only when it is an
ancestor or PID 1.
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
# A name that no descriptor of the supervisor's vouches for (a suffixed one anyone may bind) gets
# this long to take a connection: a squatter's full queue must not eat the whole budget.
DECOY_BUDGET = 0.1
# Connections taken from the queue in one turn of the supervisor's loop: a flood of them, of any
# user, then costs a turn a few accepts, and the loop goes on to forward, reap and serve.
ACCEPTS_PER_TURN = 8
MAX_STANDING_BYTES = 4096


PEER_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
TIMEVAL = struct.Struct("ll")  # struct timeval: seconds, microseconds


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
        """Up to :data:`ACCEPTS_PER_TURN` waiting connections, each answered (or refused) without
        waiting for it; the rest wait for the loop's next turn."""
        assert self.listener is not None
        for _ in range(ACCEPTS_PER_TURN):
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
    """The standing of this container's supervisor, or why there is none to be had.

    Who is asked, in order: the ``imds-shim`` processes among this process's ancestors (status
    run inside the supervised command), then PID 1 (a container's entrypoint), then the others
    in this PID namespace that share this process's mount namespace (its container's: in a pod
    that shares one PID namespace every container has its own). Where that last step leaves more
    than one, none is picked. A candidate that passes the peer check gives the verdict, its
    silence too; one whose names are held by others is passed over.
    """
    me = os.getpid()
    try:
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return None
    supervisors = [pid for pid in pids if pid != me and _is_supervisor(pid)]
    ancestors = [pid for pid in _ancestors() if pid in supervisors]
    near = [*ancestors, *([1] if 1 in supervisors and 1 not in ancestors else [])]
    impostor: Answer = None
    for pid in near:
        answer = _ask_one(pid, believe_any_user=True)
        if not _passed_over(answer):
            return answer
        impostor = impostor or answer
    mine = _mount_namespace(me)
    others = [pid for pid in supervisors if pid not in near and _mount_namespace(pid) == mine]
    if len(others) > 1:
        shown = ", ".join(str(pid) for pid in others[:8])
        return f"more than one imds-shim supervisor here (PIDs {shown}): name one with --pid"
    for pid in others:
        answer = _ask_one(pid, believe_any_user=False)
        if not _passed_over(answer):
            return answer
        impostor = impostor or answer
    return impostor


class Impostor(str):
    """Why a name's holder is not the supervisor asked for: passed over, unlike a verdict."""


def _passed_over(answer: Answer) -> bool:
    return answer is None or isinstance(answer, Impostor)


def _is_supervisor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip() == PROGRAM
    except OSError:
        return False


def _mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
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


def _ask_one(pid: int, believe_any_user: bool = True) -> Answer:
    """Ask supervisor ``pid``, each of its names once, each under a budget of its own: first the
    names whose socket ``pid`` itself holds (its descriptors, where this user may read them), else
    its usual name and then any suffixed one. ``believe_any_user``: a root asker believes a
    supervisor of another user only when it is an ancestor or PID 1."""
    usual = socket_name(pid)
    held = _names_held_by(pid)
    names = held or [usual, *_suffixed_names(pid)]
    impostor: Answer = None
    for name in names:
        budget = ASK_TIMEOUT if (held or name == usual) else DECOY_BUDGET
        answer = _ask_at(name, pid, budget, believe_any_user)
        if not _passed_over(answer):
            return answer
        impostor = impostor or answer
    return impostor


def _unix_names() -> dict[str, str]:
    """Abstract unix socket names by inode, as /proc/net/unix lists them ('@' for the NUL)."""
    try:
        with open("/proc/net/unix") as table:
            rows = [line.split() for line in table.read().splitlines()[1:]]
    except OSError:
        return {}
    return {row[6]: row[7] for row in rows if len(row) == 8 and row[7].startswith("@")}


def _names_held_by(pid: int) -> list[bytes]:
    """The status names whose listening socket is one of ``pid``'s own descriptors (empty where
    this user may not read them): no name another process bound can be among them."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return []
    inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
    prefix = "@" + socket_name(pid)[1:].decode()
    held = sorted(path for inode, path in _unix_names().items() if inode in inodes)
    return [f"\0{path[1:]}".encode() for path in held if path == prefix or path.startswith(prefix + "/")]


def _suffixed_names(pid: int) -> list[bytes]:
    """The names under which supervisor ``pid`` may listen because its usual one was taken, as
    /proc/net/unix lists them (abstract names start with '@' there)."""
    prefix = "@" + socket_name(pid, "/")[1:].decode()
    return [f"\0{path[1:]}".encode() for path in sorted(_unix_names().values()) if path.startswith(prefix)]


def _ask_at(name: bytes, pid: int, budget: float, believe_any_user: bool) -> Answer:
    """One name: a connection within ``budget``, the peer check, then the answer within
    :data:`ASK_TIMEOUT`: once the peer is the supervisor, its silence is the verdict."""
    client = _connect(name, time.monotonic() + budget)
    if client is None:
        return None
    data = b""
    try:
        try:
            peer_pid, peer_uid = peer_of(client)
        except OSError:
            return None
        mine = os.geteuid()
        believed = peer_uid in (0, mine) or (mine == 0 and believe_any_user)
        if peer_pid != pid or not believed:
            holder = "another process" if peer_pid != pid else "a process of another user"
            return Impostor(
                f"the status socket of PID {pid} is held by {holder} (PID {peer_pid or '?'}, "
                f"uid {peer_uid}), not by imds-shim's supervisor"
            )
        client.settimeout(ASK_TIMEOUT)
        try:
            while len(data) <= MAX_STANDING_BYTES and (chunk := client.recv(MAX_STANDING_BYTES)):
                data += chunk
        except OSError:  # a timeout: the supervisor is there and does not answer
            return f"supervisor PID {pid} did not answer in {ASK_TIMEOUT:g} s"
        try:
            document = json.loads(data)
        except ValueError:
            return f"supervisor PID {pid} answered something that is not its standing"
    finally:
        client.close()
    return document if isinstance(document, dict) else None


def _connect(name: bytes, deadline: float) -> socket.socket | None:
    """A connection to ``name``, waiting for a place in its queue until ``deadline``.

    The wait is the kernel's: a blocking connect with a send timeout (``SO_SNDTIMEO``, which a
    unix socket's connect honours) sleeps among the listener's waiters and is woken at every
    accept. One that slept between non-blocking tries lost each freed place to a flood of
    connects from another user, and now and then its whole budget (1 health check of 20 in a CI run).
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    seconds = int(remaining)
    client.setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDTIMEO, TIMEVAL.pack(seconds, int((remaining - seconds) * 1e6))
    )
    try:
        client.connect(name)
    except OSError:  # EAGAIN once the time is up (the queue stayed full), or nothing listens
        client.close()
        return None
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, TIMEVAL.pack(0, 0))
    return client


def report(standing: Answer, now: float | None = None, ready: bool = False) -> tuple[int, str]:
    """The exit status and the one line for a standing (None: no supervisor answered; a string:
    only an impostor did). ``ready`` (``status --ready``): unhealthy while draining too, so that
    a readiness probe or a load balancer takes the container out of service, while a liveness
    probe, asking without it, leaves a container that is ending on purpose alone."""
    if isinstance(standing, str):
        return UNHEALTHY, printable(f"unhealthy: {standing}")
    if standing is None:
        return UNHEALTHY, (
            "unhealthy: no imds-shim supervisor answered in this container "
            "(status needs --serve, --expiry-signal, --init or --on-interruption, and the same user or root)"
        )
    moment = time.time() if now is None else now
    healthy, parts = _credentials_parts(standing, moment)
    parts += _watch_parts(standing, moment)
    draining = isinstance(standing.get("draining"), str)
    verdict = "ok" if healthy and not (ready and draining) else "unhealthy"
    return (HEALTHY if verdict == "ok" else UNHEALTHY), printable(f"{verdict}: {', '.join(parts)}")


def _credentials_parts(standing: dict[str, object], moment: float) -> tuple[bool, list[str]]:
    """Whether the credentials the command relies on are valid, and the words that say so."""
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
        return healthy, parts
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
    return left > 0, parts


def _watch_parts(standing: dict[str, object], moment: float) -> list[str]:
    """--on-interruption's words: what is being drained for, what else was announced, scheduled
    maintenance, and a watch that IMDS does not answer."""
    parts = []
    draining, ends_at, sent_at = (
        standing.get("draining"),
        standing.get("ends_at"),
        standing.get("signal_sent_at"),
    )
    if isinstance(draining, str):
        text = f"draining: {draining}"
        if isinstance(ends_at, (int, float)):
            left = ends_at - moment
            text += f" at {_rfc3339(ends_at)} ({'in ' + format_duration(left) if left > 0 else 'past'})"
        signal = standing.get("watch_signal")
        if isinstance(sent_at, (int, float)):
            text += f", {signal} sent at {_rfc3339(sent_at)}"
        else:
            text += f", {signal} not sent yet (drain delay)"
        parts.append(text)
    for key, label in (("notices", "announced"), ("maintenance", "maintenance")):
        items = standing.get(key)
        if isinstance(items, list):
            shown = [item for item in items[:20] if isinstance(item, str)]
            parts += [
                f"{label}: {item}" for item in shown if not (draining and item.startswith(str(draining)))
            ]
    failures = standing.get("watch_failures")
    if isinstance(failures, int) and failures:
        parts.append(f"interruption watch: {failures} checks in a row unanswered")
    return parts


def _rfc3339(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def status(pid: int | None = None, ready: bool = False) -> tuple[int, str]:
    """The ``status`` verb: (exit status, the line to print); ``pid`` names one supervisor;
    ``ready``: ``status --ready`` (see :func:`report`)."""
    return report(ask() if pid is None else _ask_one(pid, believe_any_user=True), ready=ready)
