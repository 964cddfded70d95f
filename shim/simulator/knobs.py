"""The simulator's knobs: its options (``imds-shim simulate --help`` is made from them), and
:class:`Knobs`, their values for one simulator. Kept apart from the server so that the command line
can list the options without loading the HTTP server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from shim.command_line.config import SIMULATE, Option
from shim.command_line.values import natural, port, role_name, seconds, shown, signed_seconds, text
from shim.errors import UsageError

if TYPE_CHECKING:
    from shim.command_line.values import Parser, Value

CREDENTIALS_FAULTS = ("malformed", "oversized", "redirect", "error-code", "missing-token")
SPOT_ACTIONS = ("terminate", "stop", "hibernate")
EVENT_CODES = (
    "instance-stop",
    "instance-retirement",
    "instance-reboot",
    "system-reboot",
    "system-maintenance",
)


def _fault(value: str, what: str) -> str:
    if value not in CREDENTIALS_FAULTS:
        raise UsageError(f"{what}: expected one of {', '.join(CREDENTIALS_FAULTS)}, got {shown(value)}")
    return value


def _spot_action(value: str, what: str) -> str:
    if value not in SPOT_ACTIONS:
        raise UsageError(f"{what}: expected one of {', '.join(SPOT_ACTIONS)}, got {shown(value)}")
    return value


def _event_code(value: str, what: str) -> str:
    if value not in EVENT_CODES:
        raise UsageError(f"{what}: expected one of {', '.join(EVENT_CODES)}, got {shown(value)}")
    return value


def _host(value: str, what: str) -> str:
    if not value.strip():
        raise UsageError(f"{what}: expected an address to listen on, such as 127.0.0.1")
    return value


def _period(value: str, what: str) -> float:
    period = signed_seconds(value, what)
    if period < 0:
        raise UsageError(f"{what}: expected 0 or more seconds, got {shown(value)}")
    return period


def _status(value: str, what: str) -> int:
    code = natural(value, what)
    if not 100 <= code <= 599:
        raise UsageError(f"{what}: expected an HTTP status, got {shown(value)}")
    return code


def _sim(
    dest: str, flag: str, help: str, parse: Parser | None = None, default: Value = None, metavar: str = ""
) -> Option:
    return Option(
        dest, (flag,), help, parse, default, metavar, verbs=frozenset({SIMULATE}), env_prefix="IMDS_SHIM_SIM_"
    )


SIMULATOR_OPTIONS: tuple[Option, ...] = (
    _sim("host", "--host", "address to listen on", _host, "127.0.0.1", "ADDRESS"),
    _sim("port", "--port", "port to listen on (0: any free port)", port, 0, "PORT"),
    _sim("role_name", "--role-name", "the attached role", role_name, "imds-shim-simulated-role", "NAME"),
    _sim("region", "--region", "the instance's region", text, "eu-west-1", "REGION"),
    _sim("account", "--account", "the instance's account", text, "123456789012", "ID"),
    _sim("imds_v2_required", "--imds-v2-required", "answer 401 to requests without a token"),
    _sim(
        "hop_limit",
        "--hop-limit",
        "IP TTL of token answers, like IMDS's PUT-response hop limit",
        natural,
        0,
        "N",
    ),
    _sim("token_hang", "--token-hang", "accept token PUTs but never answer them"),
    _sim(
        "token_hang_first",
        "--token-hang-first",
        "leave the first N token PUTs unanswered, as a storm might lose them",
        natural,
        0,
        "N",
    ),
    _sim(
        "token_status",
        "--token-status",
        "answer token PUTs with this status (e.g. 403: no v2)",
        _status,
        0,
        "STATUS",
    ),
    _sim("fail_first", "--fail-first", "answer the first N requests with --fail-status", natural, 0, "N"),
    _sim("fail_status", "--fail-status", "status for --fail-first", _status, 500, "STATUS"),
    _sim(
        "retry_after",
        "--retry-after",
        "send Retry-After: SECONDS with --fail-first answers",
        natural,
        None,
        "SECONDS",
    ),
    _sim(
        "revoke_first_token",
        "--revoke-first-token",
        "answer 401 to requests that use the first token issued (an expired token)",
    ),
    _sim("throttle", "--throttle", "answer 429 above this many requests per second", seconds, None, "RPS"),
    _sim("latency", "--latency", "seconds to wait before every answer", seconds, None, "SECONDS"),
    _sim("no_role", "--no-role", "no instance profile: role discovery answers 404"),
    _sim(
        "expires_in",
        "--expires-in",
        "credentials expire this many seconds after issue (negative: already expired)",
        signed_seconds,
        21600.0,
        "SECONDS",
    ),
    _sim(
        "rotate_every",
        "--rotate-every",
        "seconds between credential sets (0: a new set for every answer; default: 5 minutes before expiry)",
        _period,
        None,
        "SECONDS",
    ),
    _sim("no_identity_document", "--no-identity-document", "answer 404 for the identity document"),
    _sim(
        "account_in_credentials",
        "--account-in-credentials",
        "add AccountId to the credentials answer, as the extended credentials path does",
    ),
    _sim(
        "credentials_fault",
        "--credentials-fault",
        "credentials answers are: " + ", ".join(CREDENTIALS_FAULTS),
        _fault,
        None,
        "KIND",
    ),
    _sim(
        "fault_times",
        "--fault-times",
        "only the first N credentials answers are faulty (0: all)",
        natural,
        0,
        "N",
    ),
    _sim(
        "spot_interruption_in",
        "--spot-interruption-in",
        "a Spot interruption notice appears this many seconds after the start, for 2 minutes later",
        _period,
        None,
        "SECONDS",
    ),
    _sim(
        "spot_action",
        "--spot-action",
        "the notice's action: " + ", ".join(SPOT_ACTIONS),
        _spot_action,
        SPOT_ACTIONS[0],
        "ACTION",
    ),
    _sim(
        "rebalance_in",
        "--rebalance-in",
        "a rebalance recommendation appears this many seconds after the start",
        _period,
        None,
        "SECONDS",
    ),
    _sim(
        "asg_terminate_in",
        "--asg-terminate-in",
        "in an Auto Scaling group (InService), whose target state turns Terminated after SECONDS",
        _period,
        None,
        "SECONDS",
    ),
    _sim(
        "scheduled_event",
        "--scheduled-event",
        "one scheduled maintenance event (" + ", ".join(EVENT_CODES) + "), three days ahead",
        _event_code,
        None,
        "CODE",
    ),
)


class Knobs:
    """The simulator's knobs by name (see ``imds-shim simulate --help``); each one not given
    takes its default from :data:`SIMULATOR_OPTIONS`, the only place defaults are written."""

    host: str
    port: int
    role_name: str
    region: str
    account: str
    imds_v2_required: bool
    hop_limit: int
    token_hang: bool
    token_hang_first: int
    token_status: int
    fail_first: int
    fail_status: int
    retry_after: int | None
    revoke_first_token: bool
    throttle: float | None
    latency: float | None
    no_role: bool
    expires_in: float
    rotate_every: float | None
    no_identity_document: bool
    account_in_credentials: bool
    credentials_fault: str | None
    fault_times: int
    spot_interruption_in: float | None
    spot_action: str
    rebalance_in: float | None
    asg_terminate_in: float | None
    scheduled_event: str | None

    def __init__(self, **given: Value) -> None:
        unknown = set(given) - {option.dest for option in SIMULATOR_OPTIONS}
        if unknown:
            raise TypeError(f"unknown simulator knobs: {', '.join(sorted(unknown))}")
        for option in SIMULATOR_OPTIONS:
            setattr(self, option.dest, given.get(option.dest, option.default))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Value]) -> Knobs:
        """The knobs among the resolved settings of ``imds-shim simulate`` (which has a log level too)."""
        return cls(**{option.dest: settings[option.dest] for option in SIMULATOR_OPTIONS})
