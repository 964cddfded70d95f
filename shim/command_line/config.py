"""Configuration: the table of options, and the :class:`Config` resolved from it.

Every option is one :class:`Option` row: its flags, its ``IMDS_SHIM_*`` twin, the AWS SDKs' own
variables, its parser, its default and its help. :mod:`shim.command_line.parse` reads argv and the
environment through this table, and makes ``--help`` from it, so neither can forget a twin or
restate a default. This module must stay cheap to import, because the step-aside path runs it: no
``re``, ``typing``, ``dataclasses`` or ``enum`` at run time (each costs milliseconds at every
container start; together they would double the cost of stepping aside).
"""

from __future__ import annotations

from shim.command_line.exit_codes import SHIM_FAILED
from shim.command_line.values import (
    count,
    delay,
    ending_signal,
    endpoint,
    endpoint_mode,
    exit_code,
    interruption_events,
    log_format,
    log_level,
    poll_period,
    process_id,
    role_name,
    sdk_true,
    seconds,
    text,
)
from shim.log import DEFAULT_LEVEL, LOG_FORMATS

# typing costs ~15 ms to import: the annotations here are strings, checked by mypy only.
TYPE_CHECKING = False

# Generous on purpose: only a busy or throttling IMDS is waited for this long (a herd of 100
# containers against an IMDS throttling at 50 req/s needs ~15 s). The verdicts that matter (not on
# EC2, hop limit, no role) are decided by what the network did, in about a second.
DEFAULT_DEADLINE = 30.0
# Connecting to IMDS takes well under a millisecond on EC2; a SYN unanswered for this long means
# there is nothing there. Two such tries stay inside the 1.5 s off-EC2 verdict.
MAX_CONNECT_TIMEOUT = 0.5
# How many --timeout one whole answer may take after connecting (see Config.answer_limit). A
# herd of 100 shims on 2 cores, against a simulator on the same cores, saw fair answers take
# longer than 2.5 s from request to last byte.
ANSWER_LIMIT_TIMEOUTS = 4

# The verbs, each named once: exec (the entrypoint, no verb word) and the five that have a word.
EXEC, EXPORT, CREDENTIAL_PROCESS, DOCTOR, SIMULATE, STATUS = (
    "exec",
    "export",
    "credential-process",
    "doctor",
    "simulate",
    "status",
)
VERBS = (EXPORT, CREDENTIAL_PROCESS, DOCTOR, SIMULATE, STATUS)
FETCH_VERBS = frozenset({EXEC, EXPORT, CREDENTIAL_PROCESS, DOCTOR})
EXPORT_FORMATS = (
    "env",
    "env-no-export",
    "fish",
    "powershell",
    "windows-cmd",
    "process",
    "dotenv",
    "json",
)
DOCTOR_FORMATS = ("text", "json")

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from shim.command_line.values import Parser, Value

    # Options that only one verb has (the simulator's), asked for by verb name: the caller
    # knows the verbs' modules, this one does not.
    VerbOptions = Callable[[str], Sequence["Option"]]
    SettingsBase = dict[str, Value]
else:
    SettingsBase = dict


class Settings(SettingsBase):
    """Every option's resolved value by name, read back with the type its parser gives it."""

    def number(self, name: str) -> float:
        value = self[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"setting {name} is not a number")
        return float(value)

    def whole(self, name: str) -> int:
        value = self[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"setting {name} is not a whole number")
        return value

    def text(self, name: str) -> str | None:
        value = self.get(name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"setting {name} is not text")
        return value or None

    def flag(self, name: str) -> bool:
        return bool(self.get(name))


class Option:
    """One setting: its flags, environment twin, SDK variables, parser, default and help."""

    __slots__ = (
        "default",
        "dest",
        "env_parse",
        "env_prefix",
        "flags",
        "help",
        "metavar",
        "parse",
        "sdk_env",
        "verbs",
    )

    def __init__(
        self,
        dest: str,
        flags: tuple[str, ...],
        help: str,
        parse: Parser | None = None,  # None: a boolean flag that takes no value
        default: Value = None,
        metavar: str = "",
        sdk_env: tuple[str, ...] = (),
        env_parse: Parser | None = None,  # for the SDK variables, when they differ from the twin
        verbs: frozenset[str] = FETCH_VERBS,
        env_prefix: str = "IMDS_SHIM_",
    ) -> None:
        self.dest, self.flags, self.help, self.parse = dest, flags, help, parse
        self.default, self.metavar, self.sdk_env, self.env_parse = default, metavar, sdk_env, env_parse
        self.verbs, self.env_prefix = verbs, env_prefix

    @property
    def env(self) -> str:
        return self.env_prefix + self.dest.upper()


OPTIONS: tuple[Option, ...] = (
    Option(
        "endpoint",
        ("--endpoint",),
        "IMDS base URL",
        endpoint,
        None,
        "URL",
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT",),
    ),
    Option(
        "endpoint_mode",
        ("--endpoint-mode",),
        "IPv4 (169.254.169.254) or IPv6 (fd00:ec2::254)",
        endpoint_mode,
        "IPv4",
        "MODE",
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",),
    ),
    Option(
        "role",
        ("--role",),
        "use this role instead of discovering it",
        role_name,
        None,
        "NAME",
        ("AWS_EC2_INSTANCE_PROFILE_NAME",),
    ),
    Option(
        "expect_role",
        ("--expect-role",),
        "fail (exit 125, nothing exported) unless the instance's role is NAME",
        role_name,
        None,
        "NAME",
    ),
    Option(
        "timeout",
        ("--timeout",),
        "seconds to wait for an IMDS answer to start (decimals allowed); a whole answer may take 4x this",
        seconds,
        1.0,
        "SECONDS",
        ("AWS_METADATA_SERVICE_TIMEOUT",),
    ),
    Option(
        "attempts",
        ("--attempts",),
        "tries per IMDS request while it is busy or garbled",
        count,
        10,
        "N",
        ("AWS_METADATA_SERVICE_NUM_ATTEMPTS",),
    ),
    Option(
        "deadline",
        ("--deadline",),
        "overall seconds after which the shim gives up",
        seconds,
        DEFAULT_DEADLINE,
        "SECONDS",
    ),
    Option(
        "dmi_dir",
        ("--dmi-dir",),
        "where the machine's DMI facts are read (is this an EC2 instance?), only when IMDS does not answer",
        text,
        "/sys/class/dmi/id",
        "DIR",
    ),
    Option(
        "no_imds_v1",
        ("--no-imds-v1",),
        "require IMDSv2 tokens, never fall back to IMDSv1",
        None,
        False,
        "",
        ("AWS_EC2_METADATA_V1_DISABLED",),
        sdk_true,
    ),
    Option(
        "override",
        ("--override",),
        "fetch even when a more specific identity is configured, clearing it first",
    ),
    Option(
        "optional",
        ("--optional",),
        "if credentials cannot be had, warn and run the command without them",
        verbs=frozenset({EXEC}),
    ),
    Option(
        "refresh",
        ("--refresh",),
        "give the command a credential_process profile that refreshes, not static keys",
        verbs=frozenset({EXEC, DOCTOR}),  # doctor names the mode
    ),
    Option(
        "serve",
        ("--serve",),
        "serve renewing credentials on 127.0.0.1 while the command runs; it gets the URL, not static keys",
        verbs=frozenset({EXEC, DOCTOR}),  # doctor names the mode
    ),
    Option(
        "expiry_signal",
        ("--expiry-signal",),
        "send the command SIGNAL (TERM, HUP, a number) when its static keys are due for renewal",
        ending_signal,
        None,
        "SIGNAL",
        verbs=frozenset({EXEC, DOCTOR}),  # doctor names the mode
    ),
    Option(
        "init",
        ("--init",),
        "stay as the command's parent (PID 1's duties: signals, reaping, status) with static keys",
        verbs=frozenset({EXEC, DOCTOR}),
    ),
    Option(
        "on_interruption",
        ("--on-interruption",),
        "send the command SIGNAL once when IMDS announces the instance's end (stays as its parent)",
        ending_signal,
        None,
        "SIGNAL",
        verbs=frozenset({EXEC, DOCTOR}),
    ),
    Option(
        "interruption_events",
        ("--interruption-events",),
        "which announcements --on-interruption acts on: spot, asg, rebalance (comma-separated)",
        interruption_events,
        "spot,asg",
        "LIST",
        verbs=frozenset({EXEC, DOCTOR}),
    ),
    Option(
        "interruption_poll",
        ("--interruption-poll",),
        "seconds between --on-interruption's checks of IMDS",
        poll_period,
        5.0,
        "SECONDS",
        verbs=frozenset({EXEC, DOCTOR}),
    ),
    Option(
        "drain_delay",
        ("--drain-delay",),
        "seconds between the announcement and the signal, draining (status --ready says so)",
        delay,
        0.0,
        "SECONDS",
        verbs=frozenset({EXEC, DOCTOR}),
    ),
    Option(
        "pid",
        ("--pid",),
        "status: ask the supervisor with this PID (default: the first found in this PID namespace)",
        process_id,
        None,
        "PID",
        verbs=frozenset({STATUS}),
    ),
    Option(
        "ready",
        ("--ready",),
        "status: also unhealthy (exit 1) while draining for --on-interruption (readiness probes)",
        verbs=frozenset({STATUS}),
    ),
    Option(
        "error_exit_code",
        ("--error-exit-code",),
        "exit status for the shim's own failures",
        exit_code,
        SHIM_FAILED,
        "N",
    ),
    Option(
        "log_level",
        ("--log-level",),
        "debug, info, warning or error (-v info, -vv debug, -q error)",
        log_level,
        DEFAULT_LEVEL,
        "LEVEL",
        verbs=frozenset({*FETCH_VERBS, SIMULATE}),
    ),
    Option(
        "log_format",
        ("--log-format",),
        "text, or json: one JSON object a line on stderr (time, level, message, mode, fields)",
        log_format,
        LOG_FORMATS[0],
        "FORMAT",
        verbs=frozenset({*FETCH_VERBS, SIMULATE, STATUS}),
    ),
    Option(
        "format",
        ("--format",),
        f"export: {', '.join(EXPORT_FORMATS)}; doctor: {', '.join(DOCTOR_FORMATS)}",
        text,
        None,
        "FORMAT",
        verbs=frozenset({EXPORT, DOCTOR}),
    ),
)


class Config:
    """The settings the IMDS client, the exporter and the exec path need, fully resolved.

    Made only by :meth:`from_settings`, from values the table resolved: the defaults live in
    :data:`OPTIONS` and nowhere else."""

    def __init__(
        self,
        *,
        endpoint: str,
        role: str | None,
        expect_role: str | None,
        timeout: float,
        attempts: int,
        deadline: float,
        no_imds_v1: bool,
        override: bool,
        optional: bool,
        error_exit_code: int,
        log_level: str,
        log_format: str,
        format: str | None,
        in_pod: bool,
        dmi_dir: str,
        on_interruption: int | None,
        interruption_events: tuple[str, ...],
        interruption_poll: float,
        drain_delay: float,
    ) -> None:
        self.endpoint, self.role, self.timeout, self.attempts = endpoint, role, timeout, attempts
        self.expect_role = expect_role
        self.deadline, self.no_imds_v1, self.override = deadline, no_imds_v1, override
        self.optional, self.error_exit_code = optional, error_exit_code
        self.log_level, self.log_format, self.format = log_level, log_format, format
        # In a Kubernetes pod: the hop-limit advice differs there (see shim.imds.protocol.hop_limit_fix).
        self.in_pod = in_pod
        self.dmi_dir = dmi_dir
        # --on-interruption: the signal, which announcements count, how often to look, the drain.
        self.on_interruption, self.interruption_events = on_interruption, interruption_events
        self.interruption_poll, self.drain_delay = interruption_poll, drain_delay

    @property
    def connect_timeout(self) -> float:
        return min(self.timeout, MAX_CONNECT_TIMEOUT)

    @property
    def answer_limit(self) -> float:
        """The most one answer may take, connecting and every byte included: four times
        ``timeout`` after connecting. Generous, because a machine starved of CPU (a herd of
        containers starting on a small instance) delivers a fair answer late, and a retry then
        only adds load; a trickling, hostile answer is still cut off in seconds, not hours."""
        return self.connect_timeout + ANSWER_LIMIT_TIMEOUTS * self.timeout

    @classmethod
    def from_settings(cls, settings: Settings, *, in_pod: bool) -> Config:
        return cls(
            endpoint=settings.text("endpoint") or str(settings["endpoint_mode"]),
            role=settings.text("role"),
            expect_role=settings.text("expect_role"),
            timeout=settings.number("timeout"),
            attempts=settings.whole("attempts"),
            deadline=settings.number("deadline"),
            no_imds_v1=settings.flag("no_imds_v1"),
            override=settings.flag("override"),
            optional=settings.flag("optional"),
            error_exit_code=settings.whole("error_exit_code"),
            log_level=str(settings["log_level"]),
            log_format=str(settings["log_format"]),
            format=settings.text("format"),
            in_pod=in_pod,
            dmi_dir=str(settings["dmi_dir"]),
            on_interruption=None
            if settings.get("on_interruption") is None
            else settings.whole("on_interruption"),
            interruption_events=tuple((settings.text("interruption_events") or "").split(",")),
            # Only the entrypoint and doctor have these: the other verbs never watch.
            interruption_poll=settings.number("interruption_poll")
            if "interruption_poll" in settings
            else 0.0,
            drain_delay=settings.number("drain_delay") if "drain_delay" in settings else 0.0,
        )

    def as_flags(self) -> list[str]:
        """These settings as command-line flags, so a child imds-shim behaves like this one."""
        flags = [
            "--endpoint",
            self.endpoint,
            "--timeout",
            repr(self.timeout),
            "--attempts",
            str(self.attempts),
            "--deadline",
            repr(self.deadline),
            "--log-level",
            self.log_level,
            "--log-format",
            self.log_format,
            "--dmi-dir",
            self.dmi_dir,
        ]
        if self.role:
            flags += ["--role", self.role]
        if self.expect_role:
            flags += ["--expect-role", self.expect_role]
        if self.no_imds_v1:
            flags.append("--no-imds-v1")
        if self.override:
            flags.append("--override")
        return flags
