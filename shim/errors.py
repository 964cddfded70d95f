"""The shim's own failures, and the classification of IMDS failures that the retry policy uses.

Each :class:`ShimError` message is one line that says what happened and what to do; ``cli.main``
is the only place that turns them into exit codes. :class:`Transient` and its kinds never leave
the IMDS client: it turns them into a :class:`CredentialsUnavailable` once retrying is over. No
message ever carries a secret: exceptions are built from status codes, paths and role names,
never from response bodies.
"""

from __future__ import annotations


class ShimError(Exception):
    """A failure of the shim itself (exit 125 unless ``--error-exit-code`` says otherwise)."""


class UsageError(ShimError):
    """The command line or an environment variable is invalid."""


class CredentialsUnavailable(ShimError):
    """IMDS could not provide credentials; ``--optional`` turns this into a warning."""


class ImdsUnreachable(CredentialsUnavailable):
    """No TCP answer from IMDS: the signature of a machine that is not on EC2 (at start), or of an
    outage (at a renewal: ``detail`` says what the network did, without the start-up advice)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class HopLimitExceeded(CredentialsUnavailable):
    """The token PUT connected but never answered: the IMDSv2 hop-limit symptom."""


class ImdsRefused(CredentialsUnavailable):
    """IMDS answered with a status that retrying cannot fix (400, 401, 403)."""


class NoRoleAttached(CredentialsUnavailable):
    """The instance has no instance profile (IMDS answered 404 on role discovery)."""


class RoleNotFound(CredentialsUnavailable):
    """IMDS does not know the role that was asked for."""


class UnexpectedRole(ShimError):
    """The instance's role is not the one ``--expect-role`` names. Not a :class:`CredentialsUnavailable`:
    ``--optional`` must not turn failing closed into running the command anyway."""


class ImdsGaveUp(CredentialsUnavailable):
    """IMDS stayed busy or answered garbage until the attempts or the deadline ran out."""


class ImdsUnusable(CredentialsUnavailable):
    """IMDS answered something no retry can make valid (a body larger than any IMDS answer)."""


class CommandNotFound(ShimError):
    """The command to exec does not exist (exit 127)."""


class CommandNotExecutable(ShimError):
    """The command exists but cannot be executed (exit 126)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while the shim was still working (exit 128 + signal).

    A ``BaseException`` so that no ``except Exception`` in requests or urllib3 swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Transient(Exception):
    """An IMDS failure worth retrying; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Throttled(Transient):
    """IMDS answered 429: it wants fewer requests, so the backoff starts higher."""


class ConnectFailed(Transient):
    """No TCP connection to IMDS: refused or no route, or (where the machine does not say it is
    an EC2 instance) no answer to the SYN. Retried once only: a second one means there is no IMDS
    here (:class:`ImdsUnreachable`), not a busy one."""


class NoAnswer(Transient):
    """A request went out and nothing came back in time: on an EC2 instance, congestion (packets
    over the link-local allowance are dropped silently) or an overloaded IMDS, retried until the
    deadline. ``connected``: whether the TCP connection was made (a read timed out); ``on_ec2``:
    whether the machine says it is an EC2 instance (off EC2, silence is not congestion)."""

    def __init__(self, message: str, connected: bool, on_ec2: bool) -> None:
        super().__init__(message)
        self.connected, self.on_ec2 = connected, on_ec2


def raised_at(error: BaseException) -> str:
    """``file:line`` where ``error`` was raised: with its type, all an internal error may show,
    since its message could quote a value that must not be printed."""
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return f"{trace.tb_frame.f_code.co_filename}:{trace.tb_lineno}" if trace else "?"
