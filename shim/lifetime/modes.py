"""The modes, one object each: how the command gets the fetched credentials, and whether the
shim stays as its parent.

The command line resolves exactly one mode, once (:func:`chosen_mode`); everything that asks
"which mode?" (the entrypoint, ``doctor``, ``status``, the JSON logs) asks that object. What each
mode gives the command is told once, for users, in docs/lifetime.md.

A mode that supervises hands the supervisor its *services* (the endpoint, the renewer, the
expiry signal) beside the command; the interruption watch (:mod:`shim.lifetime.interruption`) is
one more service any supervising mode takes, not a mode of its own: with it, the default mode
and ``--refresh`` supervise, as under ``--init``.

Imports here are light on purpose (the module is loaded at every start); each mode imports
what it hands over with only when it does.
"""

from __future__ import annotations

from shim.errors import UsageError
from shim.log import log

TYPE_CHECKING = False  # no typing import at run time: every start loads this
if TYPE_CHECKING:
    from collections.abc import Mapping

    from shim.command_line.config import Config, Settings
    from shim.credentials import Fetched
    from shim.errors import CredentialsUnavailable
    from shim.lifetime.standing import Standing
    from shim.lifetime.supervisor import Service

    # What a mode hands over: the command's environment, and what runs beside the command.
    Handover = tuple[dict[str, str], list[Service]]


class Mode:
    """One way of handing over credentials. ``name`` is how the logs and ``doctor`` name it;
    ``flags`` how the command line (and ``status``) spells it; ``supervises``: whether the shim
    stays as the command's parent (fetching in a child, see :mod:`shim.lifetime`) rather than
    exec it. The hand-over given here, static keys in the environment, is three modes' own."""

    name: str
    flags: str
    supervises: bool

    def check(self, environ: Mapping[str, str]) -> None:
        """What this mode needs of the machine besides IMDS, checked without handing anything
        over (``doctor`` asks it; the hand-over meets the same needs): raises ShimError."""

    def hand_over(
        self, config: Config, environment: dict[str, str], fetched: Fetched, standing: Standing | None
    ) -> Handover:
        """The command's environment once ``fetched`` is handed over, and the services beside it."""
        from shim.variables import export_into, exported_variables

        export_into(environment, exported_variables(fetched, environment))
        return environment, []

    def without_credentials(
        self,
        config: Config,
        environment: dict[str, str],
        standing: Standing | None,
        error: CredentialsUnavailable,
    ) -> Handover:
        """``--optional`` with nothing fetched: the command runs without credentials."""
        log.warning(f"{error}; running the command without credentials (--optional)")
        if standing is not None:
            standing.note = f"running without credentials (--optional): {error}"
        return environment, []

    def describe(self) -> str:
        """For ``doctor``: what the command gets, and what that means for a long run."""
        raise NotImplementedError


class ExecMode(Mode):
    """The default: static keys in the environment, and the shim execs the command."""

    name, flags, supervises = "exec", "", False

    def describe(self) -> str:
        return f"{_STATIC_KEYS}; {_EXECS}"


class InitMode(Mode):
    """``--init``: static keys, with the shim as the command's parent and init."""

    name, flags, supervises = "init", "--init", True

    def describe(self) -> str:
        return f"{_STATIC_KEYS}; {_SUPERVISED}"


class RefreshMode(Mode):
    """``--refresh``: a private AWS config file whose ``credential_process`` runs imds-shim again;
    under ``--init`` the shim stays as the command's parent too."""

    name, flags = "refresh", "--refresh"

    def __init__(self, supervises: bool) -> None:
        self.supervises = supervises
        self.flags = "--init --refresh" if supervises else "--refresh"

    def check(self, environ: Mapping[str, str]) -> None:
        import os

        from shim.lifetime.refresh import private_folder

        os.close(private_folder(environ)[1])

    def hand_over(
        self, config: Config, environment: dict[str, str], fetched: Fetched, standing: Standing | None
    ) -> Handover:
        from shim.lifetime.refresh import refreshing_environment

        return refreshing_environment(config, environment, fetched), []

    def describe(self) -> str:
        return (
            "--refresh: the command gets an AWS config file whose credential_process renews; "
            "the Go, JavaScript and Java SDKs run it through sh, which the image must have; "
            + (_SUPERVISED if self.supervises else _EXECS)
        )


class ServeMode(Mode):
    """``--serve``: a renewing credentials endpoint on 127.0.0.1, as ECS's, while the command runs."""

    name, flags, supervises = "serve", "--serve", True

    def check(self, environ: Mapping[str, str]) -> None:
        from shim.lifetime.endpoint import listening_socket

        listening_socket().close()

    def hand_over(
        self, config: Config, environment: dict[str, str], fetched: Fetched | None, standing: Standing | None
    ) -> Handover:
        from shim.lifetime.endpoint import serving_environment

        assert standing is not None  # it supervises: the entrypoint made one
        return serving_environment(config, environment, fetched, standing)

    def without_credentials(
        self,
        config: Config,
        environment: dict[str, str],
        standing: Standing | None,
        error: CredentialsUnavailable,
    ) -> Handover:
        """IMDS down at the start: the command starts now, with the endpoint, which answers 503
        until the renewals, retried with backoff, bring a first set."""
        import time

        assert standing is not None
        log.warning(
            f"{error}; starting the command with the endpoint, which has no credentials until IMDS "
            "answers (--optional); trying again with backoff"
        )
        standing.failures, standing.last_error = 1, str(error)
        standing.note = f"waiting for IMDS since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        return self.hand_over(config, environment, None, standing)

    def describe(self) -> str:
        return (
            "--serve: the command gets AWS_CONTAINER_CREDENTIALS_FULL_URI on 127.0.0.1 and a token, "
            "renewed from IMDS while it runs; every AWS SDK and the CLI read it; " + _SUPERVISED
        )


class ExpirySignalMode(Mode):
    """``--expiry-signal SIGNAL``: static keys, and ``signum`` sent once when they are due."""

    name, flags, supervises = "expiry-signal", "--expiry-signal", True

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def hand_over(
        self, config: Config, environment: dict[str, str], fetched: Fetched, standing: Standing | None
    ) -> Handover:
        from shim.lifetime.expiry_signal import ExpirySignal

        environment = super().hand_over(config, environment, fetched, standing)[0]
        return environment, [ExpirySignal(self.signum, fetched.credentials)]

    def describe(self) -> str:
        from shim.command_line.values import signal_name

        name = signal_name(self.signum)
        return f"static keys; --expiry-signal sends {name} to the command when they are due for renewal; " + (
            _SUPERVISED
        )


_STATIC_KEYS = (
    "static keys: they do not renew; for a command that runs longer than they live, "
    "use --serve (or --refresh, or --expiry-signal)"
)
_SUPERVISED = "the shim stays as the command's parent and init (imds-shim status answers)"
_EXECS = "the shim execs the command (as PID 1 of a container, add --init or docker run --init)"

# The modes that choose how credentials are handed over: at most one a run (--init, which only
# says who stays as the command's parent, goes with any of them).
HAND_OVER_FLAGS = (("--refresh", "refresh"), ("--serve", "serve"), ("--expiry-signal", "expiry_signal"))


def chosen_mode(settings: Settings) -> Mode:
    """The one mode the resolved settings ask for; a UsageError for two ways of handing over."""
    chosen = [flag for flag, name in HAND_OVER_FLAGS if settings.get(name) not in (None, False)]
    if len(chosen) > 1:
        raise UsageError(
            f"{' and '.join(chosen)} cannot be combined: choose one way to hand over credentials"
        )
    # Someone has to be there to listen: --on-interruption supervises, as --init does.
    init = settings.flag("init") or settings.get("on_interruption") is not None
    if settings.flag("serve"):
        return ServeMode()
    if settings.get("expiry_signal") is not None:
        return ExpirySignalMode(settings.whole("expiry_signal"))
    if settings.flag("refresh"):
        return RefreshMode(supervises=init)
    return InitMode() if init else ExecMode()
