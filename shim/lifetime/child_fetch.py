"""Fetches in a short-lived forked child, handed back over a pipe: requests never enters the supervisor.

The supervisor stays resident for the command's whole life, and ``requests`` with urllib3 and the
standard modules they load is about half of what a fetching shim holds in memory. A child forked
for each fetch loads them, fetches, writes the result to a pipe and exits; the parent reads JSON.
Start-up pays one fork (about a millisecond), not a second import.

The child is the shim's own code, and every value in what it sends was already held to its shape
at the one boundary (:mod:`shim.imds.answers`) inside the child. A failure comes back as the name
of its :mod:`shim.errors` class and its message (which never carries a secret), and is raised again
in the parent, so exit codes and ``--optional`` work as in a fetch in the same process.
"""

from __future__ import annotations

import os

from shim import errors
from shim.log import log

# Nothing heavier at the top: this module is loaded before the first fetch's fork, and what the
# parent still needs (json, datetime) it loads while the child fetches (see fetch_in_child).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as signals
    from collections.abc import Callable

    from shim.credentials import Fetched
else:  # the C module: `signal` wraps it in enums
    import _signal as signals

MAX_ANSWER_BYTES = 64 * 1024  # a set and its identity are under 4 KiB
MAX_DESCRIPTORS = 65536


def fork_or_fail() -> int:
    """``os.fork``, or the shim's one-line error when no process can be made (pids cgroup, RLIMIT_NPROC)."""
    try:
        return os.fork()
    except OSError as error:
        raise errors.ShimError(
            f"cannot start the command: fork failed ({error.strerror}): the container's process "
            "limit (pids cgroup, RLIMIT_NPROC) is reached"
        ) from None


def start_fetch(work: Callable[[], Fetched]) -> tuple[int, int]:
    """Fork a child that runs ``work`` and writes its outcome; the child's PID, and the pipe to read."""
    read_end, write_end = os.pipe()
    pid = fork_or_fail()
    if pid == 0:
        os.close(read_end)
        _run_in_child(work, write_end)
    os.close(write_end)
    return pid, read_end


def _run_in_child(work: Callable[[], Fetched], answer: int) -> None:
    status = 0
    try:
        # The supervisor blocks the signals it reads from its queue; a fetch needs SIGALRM (its
        # time limit) like any other process, and the parent's queue is not the child's.
        signals.pthread_sigmask(signals.SIG_SETMASK, ())
        # The parent's lines lost so far are the parent's to report; the child counts its own
        # and sends them back with its outcome (outcome_of).
        log.lost = 0
        # Nor may the child hold the endpoint's sockets: once the supervisor is gone, nothing
        # must accept a connection.
        _close_all_but(answer, log.descriptor)
        data = outcome_of(work)
        while data:
            data = data[os.write(answer, data) :]
    except BaseException:  # the parent is gone, or interrupted us: nothing left to tell
        status = 1
    finally:
        os._exit(status)


def outcome_of(work: Callable[[], Fetched]) -> bytes:
    """What the child writes: ``work``'s set or its error, as one line of JSON (the line's end
    tells the parent it has all of it, without waiting for the child's exit)."""
    import json

    try:
        outcome: dict[str, object] = {"fetched": _encode(work())}
    except errors.ShimError as error:
        outcome = {"error": type(error).__name__, "message": str(error)}
    except errors.Interrupted as interruption:
        outcome = {"interrupted": interruption.signum}
    except Exception as error:  # only the type: a message could quote a value
        outcome = {"error": "ShimError", "message": f"internal error {type(error).__name__} in a fetch"}
    if log.lost:
        outcome["lines_lost"] = log.lost
    return json.dumps(outcome).encode() + b"\n"


def _close_all_but(*kept: int | None) -> None:
    low = 3
    for descriptor in sorted(d for d in kept if d is not None and d >= 3):
        os.closerange(low, descriptor)
        low = descriptor + 1
    os.closerange(low, MAX_DESCRIPTORS)


def read_outcome(data: bytes) -> Fetched:
    """The fetched set from the child's bytes, or the child's error raised again."""
    import json

    try:
        outcome = json.loads(data) if len(data) <= MAX_ANSWER_BYTES else {}
    except ValueError:
        outcome = {}
    if not isinstance(outcome, dict):
        outcome = {}
    lost = outcome.get("lines_lost")
    if isinstance(lost, int) and 0 < lost < 1 << 31:  # the child's lines lost on a full stderr
        log.lost += lost
    if "fetched" in outcome:
        return _decode(outcome["fetched"])
    if "interrupted" in outcome:
        raise errors.Interrupted(int(outcome["interrupted"]))
    kind = getattr(errors, str(outcome.get("error")), None)
    if not (isinstance(kind, type) and issubclass(kind, errors.ShimError)):
        kind = errors.CredentialsUnavailable
    raise kind(str(outcome.get("message", "the fetch ended without an answer")))


def fetch_in_child(work: Callable[[], Fetched], meanwhile: Callable[[], None] = lambda: None) -> Fetched:
    """Run ``work`` in a child and wait for it (the first fetch, before the command starts).

    ``meanwhile`` runs in the parent while the child fetches: the supervisor loads its own modules
    then, on the other core, instead of after the fetch. Interrupted (``docker stop`` during a slow
    IMDS), the child is killed and waited for.
    """
    pid, read_end = start_fetch(work)
    data = b""
    try:
        meanwhile()
        while not data.endswith(b"\n") and (chunk := os.read(read_end, MAX_ANSWER_BYTES)):
            data += chunk
    finally:
        os.close(read_end)
        if not data.endswith(b"\n"):
            stop(pid)
    # A child that has answered is left to exit on its own (freeing its memory takes milliseconds):
    # the supervisor reaps it, as every child that ends.
    return read_outcome(data)


def stop(pid: int) -> None:
    """Kill a fetching child of ours and wait for it: nothing of ours may outlive the shim. The
    one way the shim ends a child (the command is only ever signalled, never killed)."""
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # SIGKILL takes a moment
    except ProcessLookupError:  # it has just exited by itself
        pass
    except ChildProcessError:  # the supervisor's loop has already reaped it
        pass


def _encode(fetched: Fetched) -> dict[str, object]:
    credentials = fetched.credentials
    return {
        "access_key_id": credentials.access_key_id,
        "secret_access_key": credentials.secret_access_key,
        "session_token": credentials.session_token,
        "expiration": credentials.expiration.isoformat(),
        "credentials_account_id": credentials.account_id,
        "role": fetched.role,
        "region": fetched.region,
        "account_id": fetched.account_id,
        "imds_version": fetched.imds_version,
        "requests_sent": fetched.requests_sent,
    }


def _decode(fields: dict[str, object]) -> Fetched:
    from datetime import datetime

    from shim.credentials import Credentials, Fetched

    def text(name: str) -> str | None:
        value = fields.get(name)
        return value if isinstance(value, str) else None

    credentials = Credentials(
        str(text("access_key_id")),
        str(text("secret_access_key")),
        str(text("session_token")),
        datetime.fromisoformat(str(text("expiration"))),
        text("credentials_account_id"),
    )
    version, sent = fields.get("imds_version"), fields.get("requests_sent")
    return Fetched(
        credentials=credentials,
        role=str(text("role")),
        region=text("region"),
        account_id=text("account_id"),
        imds_version=version if isinstance(version, int) else 1,
        requests_sent=sent if isinstance(sent, int) else 0,
    )
