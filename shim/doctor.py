"""``imds-shim doctor``: walk the entrypoint's path step by step and say what happened at each.

The steps are the ones the exec path takes (same configuration, client and parsing), each timed
and explained, so "Unable to locate credentials" turns into a named cause and a fix. Secrets are
never printed: the key ID is masked and the secret, session token and IMDS token are not shown.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Callable, TypeVar

from shim import __version__
from shim.command_line.config import Config
from shim.command_line.values import signal_name
from shim.credentials import format_duration, format_time, seconds_left
from shim.errors import ShimError, Transient, UnexpectedRole
from shim.imds.answers import (
    parse_lifecycle_state,
    parse_rebalance,
    parse_scheduled_events,
    parse_spot_action,
)
from shim.imds.client import ImdsClient, unreachable_message
from shim.imds.deadline import Deadline
from shim.imds.fetch import check_expected_role, discover_role, lookup_identity, role_credentials
from shim.imds.protocol import (
    HOP_LIMIT_CAUSE,
    LIFECYCLE_STATE_PATH,
    REBALANCE_PATH,
    ROLE_PATH,
    SCHEDULED_EVENTS_PATH,
    SPOT_ACTION_PATH,
    hop_limit_fix,
)
from shim.lifetime.modes import Mode
from shim.log import log, printable, write_stdout
from shim.step_aside import (
    OWN_ENDPOINT,
    is_own_endpoint,
    more_specific_identities,
    node_role_warning,
    step_aside_cause,
)
from shim.variables import FULL_URI

T = TypeVar("T")
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY")


@dataclass
class Step:
    """One line of the report: ok, warn, fail, info or skip."""

    name: str
    status: str
    detail: str
    ms: float | None = None


class Stopwatch:
    """Milliseconds since it was made."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def ms(self) -> float:
        return (time.monotonic() - self.started) * 1000


class Report:
    """Collects steps; ``timed`` runs one and records its outcome."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def add(self, name: str, status: str, detail: str, ms: float | None = None) -> None:
        # Details are built from checked values; escaping is the second line of defence against
        # a forged line or a terminal escape.
        self.steps.append(Step(name, status, printable(detail), None if ms is None else round(ms, 1)))

    def timed(self, name: str, action: Callable[[], T]) -> tuple[T | None, float, ShimError | None]:
        """Run ``action``; a failure is recorded as this step's ``fail``."""
        watch = Stopwatch()
        try:
            result: T | None = action()
            error = None
        except ShimError as failure:
            result, error = None, failure
        if error is not None:
            self.add(name, "fail", str(error), watch.ms)
        return result, watch.ms, error

    def skip_rest(self, names: tuple[str, ...], why: str) -> None:
        for name in names:
            self.add(name, "skip", why)

    def text(self, obtained: bool, ready: bool) -> str:
        lines = [f"imds-shim doctor {__version__}"]
        for step in self.steps:
            took = "" if step.ms is None else f" ({step.ms:g} ms)"
            lines.append(f"  {step.status:<4}  {step.name:<15} {step.detail}{took}")
        if not obtained:
            lines.append("result: no credentials (see fail)")
        elif ready:
            lines.append("result: credentials available")
        else:
            lines.append("result: credentials available, but the entrypoint would fail (see fail)")
        return "\n".join(lines) + "\n"

    def json(self, obtained: bool, ready: bool) -> str:
        document = {
            "version": __version__,
            "credentials": obtained,
            "entrypoint_would_start": obtained and ready,
            "steps": [asdict(step) for step in self.steps],
        }
        return json.dumps(document, indent=2) + "\n"


def _environment(report: Report, config: Config, environ: Mapping[str, str]) -> bool:
    """What outranks the instance role; False where the entrypoint would refuse to start."""
    try:
        cause = step_aside_cause(environ)
    except ShimError as error:
        report.add("environment", "fail", str(error))
        return False
    reason = None if cause is None else cause[1]
    if reason is None:
        report.add("environment", "ok", "nothing configured that outranks the instance role")
    elif is_own_endpoint(environ) and cause is not None and cause[0] == FULL_URI:
        # Run inside a command under --serve: the SDKs use that endpoint; IMDS is checked below.
        report.add(
            "environment",
            "info",
            f"{FULL_URI} is {OWN_ENDPOINT}, which the SDKs use; an imds-shim started here steps aside",
        )
    elif config.override:
        report.add("environment", "info", f"{reason}, but --override fetches anyway")
    else:
        report.add(
            "environment",
            "warn",
            f"the entrypoint would step aside: {reason} (pass --override to fetch anyway)",
        )
    deciding = None if cause is None else cause[0]
    others = [name for name in more_specific_identities(environ) if name != deciding]
    if others:
        report.add("environment", "info", "also set: " + ", ".join(others))
    warning = node_role_warning(environ, config.expect_role)
    if warning:
        report.add("kubernetes", "warn", warning)
    proxies = [name for name in PROXY_VARIABLES if environ.get(name)]
    if proxies:
        report.add(
            "proxy",
            "info",
            f"{', '.join(proxies)} set: imds-shim never uses a proxy for "
            "IMDS, but botocore does unless NO_PROXY lists 169.254.169.254",
        )
    return True


def _mode(report: Report, mode: Mode, environ: Mapping[str, str]) -> bool:
    """How the entrypoint would hand the credentials over, and whether the machine gives the mode
    what it needs (a private folder, a loopback port): False where the entrypoint would fail."""
    try:
        mode.check(environ)
    except ShimError as error:
        report.add("mode", "fail", f"{mode.describe()}; but {error}")
        return False
    report.add("mode", "info", mode.describe())
    return True


def _tcp(report: Report, config: Config) -> bool:
    parts = urllib.parse.urlsplit(config.endpoint)
    host = parts.hostname or ""
    port = parts.port or 80
    watch = Stopwatch()
    try:
        socket.create_connection((host, port), timeout=config.connect_timeout).close()
    except OSError as error:
        detail = "timed out" if isinstance(error, socket.timeout) else (error.strerror or "failed")
        report.add("tcp", "fail", unreachable_message(config.endpoint, f"connect {detail}"), watch.ms)
        return False
    report.add("tcp", "ok", f"connected to {host} port {port}", watch.ms)
    return True


def _imds_steps(report: Report, config: Config, client: ImdsClient) -> bool:
    """Token, IMDSv1, role, credentials, region; True when credentials were obtained."""
    later = ("role", "credentials", "region/account")
    if not _token_steps(report, config, client):
        report.skip_rest(later, "no way to talk to IMDS")
        return False
    role: str | None = config.role
    if role is None:
        role, elapsed, _ = report.timed("role", lambda: discover_role(client))
        if role is None:
            report.skip_rest(later[1:], "no role")
            return False
        report.add("role", "ok", f"{role} (discovered)", elapsed)
    else:
        report.add("role", "info", f"{role} (given)")
    try:
        check_expected_role(config, role)
    except UnexpectedRole as error:
        report.add("expected role", "fail", str(error))
        report.skip_rest(later[1:], "not the expected role")
        return False
    given_role = role
    credentials, elapsed, _ = report.timed("credentials", lambda: role_credentials(client, given_role))
    if credentials is None:
        report.skip_rest(later[2:], "no credentials")
        return False
    left = seconds_left(credentials)
    report.add(
        "credentials",
        "ok" if left > 0 else "warn",
        f"{credentials.masked_key_id}, expire {format_time(credentials.expiration)} "
        f"({'in ' + format_duration(left) if left > 0 else 'expired'})",
        elapsed,
    )
    identity, elapsed, _ = report.timed("region/account", lambda: lookup_identity(client, True))
    region = identity.region if identity else None
    account = credentials.account_id or (identity.account_id if identity else None)
    report.add(
        "region/account",
        "ok" if region else "warn",
        f"region {region or 'unknown'}, account {account or 'unknown'}",
        elapsed,
    )
    _instance_end(report, config, client)
    return True


def _instance_end(report: Report, config: Config, client: ImdsClient) -> None:
    """What IMDS announces of the instance's end now (what --on-interruption would watch), and
    scheduled maintenance (shown, never acted on). Told, never a verdict: the entrypoint starts
    the command all the same."""
    watch = Stopwatch()
    try:
        answers = [
            client.get(SPOT_ACTION_PATH, parse_spot_action, attempts=1),
            client.get(LIFECYCLE_STATE_PATH, parse_lifecycle_state, attempts=1),
            client.get(REBALANCE_PATH, parse_rebalance, attempts=1),
        ]
        events = client.get(SCHEDULED_EVENTS_PATH, parse_scheduled_events, attempts=1) or []
    except (ShimError, Transient) as error:
        report.add("instance end", "warn", f"could not ask IMDS: {error}", watch.ms)
        return
    notices = [f"{n.what}{'' if n.at is None else ' at ' + format_time(n.at)}" for n in answers if n]
    acting = (
        f"--on-interruption {signal_name(config.on_interruption)} acts on "
        f"{', '.join(config.interruption_events)}"
        if config.on_interruption is not None
        else "--on-interruption is off"
    )
    detail = "; ".join(notices) if notices else "nothing announced (Spot, Auto Scaling, rebalance)"
    report.add("instance end", "warn" if notices else "ok", f"{detail}; {acting}", watch.ms)
    report.add("maintenance", "info" if events else "ok", "; ".join(events) or "none scheduled")


def _token_steps(report: Report, config: Config, client: ImdsClient) -> bool:
    """The IMDSv2 token and whether IMDSv1 answers, told as one story; True if IMDS can be used.

    With the hop-limit symptom, "IMDSv1 is used instead" holds only where the instance still
    allows IMDSv1, so the probe is made first and the token step says what really happens.
    """
    _, elapsed, error = report.timed("imdsv2 token", client.obtain_token)
    if error is not None:
        return False
    v1_enabled, probe_ms, probe_failure = _probe_v1(client)
    if client.version == 2:
        report.add("imdsv2 token", "ok", "issued", elapsed)
    elif v1_enabled is False:
        why = (
            f"connected but no answer: {HOP_LIMIT_CAUSE}"
            if client.hop_limit_suspected
            else "IMDS refused to issue one"
        )
        report.add(
            "imdsv2 token",
            "fail",
            f"{why}, and IMDSv1 is disabled on this instance "
            f"(IMDSv2 required), so there is no way in. Fix: {hop_limit_fix(config.in_pod)}",
            elapsed,
        )
        return False
    elif client.hop_limit_suspected:
        report.add(
            "imdsv2 token",
            "warn",
            f"connected but no answer: {HOP_LIMIT_CAUSE}; IMDSv1 is used instead. "
            f"Fix: {hop_limit_fix(config.in_pod)}",
            elapsed,
        )
    else:
        report.add("imdsv2 token", "warn", "IMDS refused to issue a token; IMDSv1 is used", elapsed)
    if probe_failure is not None:
        report.add("imdsv1", "info", f"probe failed: {probe_failure}", probe_ms)
    elif v1_enabled:
        allowed = "not used (--no-imds-v1)" if config.no_imds_v1 else "allowed by imds-shim"
        report.add("imdsv1", "info", f"enabled on this instance; {allowed}", probe_ms)
    else:
        report.add("imdsv1", "info", "disabled on this instance (IMDSv2 required)", probe_ms)
    return True


def _probe_v1(client: ImdsClient) -> tuple[bool | None, float, str | None]:
    """Does IMDS answer without a token? (enabled, milliseconds, why the probe failed)."""
    watch = Stopwatch()
    try:
        status = client.send("GET", ROLE_PATH, {})[0]
    except (ShimError, Transient) as error:
        return None, watch.ms, str(error)
    return status != 401, watch.ms, None


def doctor(config: Config, mode: Mode, environ: Mapping[str, str]) -> int:
    """Print the report; 0 where the entrypoint, with these settings, would hand credentials
    over, the error exit code where it would fail."""
    if not log.enabled("debug"):
        log.set_level("error")  # the report says it all; warnings would repeat it
    report = Report()
    ready = _environment(report, config, environ)
    ready = _mode(report, mode, environ) and ready
    report.add("endpoint", "info", config.endpoint)
    obtained = False
    if _tcp(report, config):
        client = ImdsClient(config, Deadline(config.deadline))
        try:
            obtained = _imds_steps(report, config, client)
        finally:
            client.close()
    else:
        report.skip_rest(("imdsv2 token", "role", "credentials", "region/account"), "no TCP")
    if os.getpid() == 1 and mode.supervises:
        # The image's entrypoint runs in a supervised mode: there imds-shim is PID 1 and the init.
        report.add("pid 1", "info", f"running as PID 1; under {mode.flags} imds-shim is the init itself")
    elif os.getpid() == 1:
        report.add(
            "pid 1",
            "warn",
            "running as PID 1: use docker run --init (or tini) so the "
            "command is not PID 1 and zombies are reaped",
        )
    output = report.json(obtained, ready) if config.format == "json" else report.text(obtained, ready)
    write_stdout(output)
    return 0 if obtained and ready else config.error_exit_code
