"""Configuration: the command line, its ``IMDS_SHIM_*`` twins and the AWS SDKs' own variables.

Precedence for every setting: flag > ``IMDS_SHIM_*`` > the SDK-wide variable > default. Everything
after the first ``--`` is the command, taken verbatim: never parsed, re-quoted or given to a shell.

One table of :class:`Option` drives parsing, validation and ``--help``, so the help text cannot
forget an environment twin. This module must stay cheap to import, because the step-aside path
runs it: no ``re``, ``typing``, ``dataclasses`` or ``enum`` at run time (each costs milliseconds
at every container start; together they would double the cost of stepping aside).
"""

from __future__ import annotations

from shim import __version__
from shim.errors import UsageError
from shim.values import (
    IPV4_ENDPOINT,
    count,
    endpoint,
    endpoint_mode,
    exit_code,
    flag_word,
    log_level,
    role_name,
    sdk_true,
    seconds,
    shown,
    signal_number,
    text,
    whole_number,
)

# typing costs ~15 ms to import: the annotations here are strings, checked by mypy only.
TYPE_CHECKING = False

DEFAULT_ERROR_EXIT_CODE = 125
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

# The verbs, each named once: exec (the entrypoint, no verb word) and the four that have a word.
EXEC, EXPORT, CREDENTIAL_PROCESS, DOCTOR, SIMULATE = (
    "exec",
    "export",
    "credential-process",
    "doctor",
    "simulate",
)
VERBS = (EXPORT, CREDENTIAL_PROCESS, DOCTOR, SIMULATE)
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
    from collections.abc import Callable, Mapping, Sequence

    from shim.values import Parser, Value

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


def no_verb_options(verb: str) -> Sequence[Option]:
    return ()


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
        signal_number,
        None,
        "SIGNAL",
        verbs=frozenset({EXEC, DOCTOR}),  # doctor names the mode
    ),
    Option(
        "error_exit_code",
        ("--error-exit-code",),
        "exit status for the shim's own failures",
        exit_code,
        DEFAULT_ERROR_EXIT_CODE,
        "N",
    ),
    Option(
        "log_level",
        ("--log-level",),
        "debug, info, warning or error (-v info, -vv debug, -q error)",
        log_level,
        "warning",
        "LEVEL",
        verbs=frozenset({*FETCH_VERBS, SIMULATE}),
    ),
    Option(
        "format",
        ("--format",),
        "export: " + ", ".join(EXPORT_FORMATS) + "; doctor: text, json",
        text,
        None,
        "FORMAT",
        verbs=frozenset({EXPORT, DOCTOR}),
    ),
)

# The ways of handing over credentials other than plain static keys; at most one per run.
MODE_FLAGS = (("--refresh", "refresh"), ("--serve", "serve"), ("--expiry-signal", "expiry_signal"))

VERBOSITY_FLAGS = {"-v": "info", "--verbose": "info", "-vv": "debug", "-q": "error", "--quiet": "error"}


class Invocation:
    """What the command line asks for: a verb, its settings and (for exec and simulate) a command."""

    def __init__(self, verb: str, settings: Settings) -> None:
        self.verb = verb
        self.settings = settings
        self.command: list[str] = []
        self.show_help = False
        self.show_version = False


class Config:
    """The settings the IMDS client, the exporter and the exec path need, fully resolved."""

    def __init__(
        self,
        endpoint: str = IPV4_ENDPOINT,
        role: str | None = None,
        expect_role: str | None = None,
        timeout: float = 1.0,
        attempts: int = 10,
        deadline: float = DEFAULT_DEADLINE,
        allow_imds_v1: bool = True,
        override: bool = False,
        optional: bool = False,
        refresh: bool = False,
        serve: bool = False,
        expiry_signal: int | None = None,
        error_exit_code: int = DEFAULT_ERROR_EXIT_CODE,
        log_level: str = "warning",
        format: str | None = None,
    ) -> None:
        self.endpoint, self.role, self.timeout, self.attempts = endpoint, role, timeout, attempts
        self.expect_role = expect_role
        self.deadline, self.allow_imds_v1, self.override = deadline, allow_imds_v1, override
        self.optional, self.refresh, self.error_exit_code = optional, refresh, error_exit_code
        self.serve, self.expiry_signal = serve, expiry_signal
        self.log_level, self.format = log_level, format

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
    def from_settings(cls, settings: Settings) -> Config:
        return cls(
            endpoint=settings.text("endpoint") or settings.text("endpoint_mode") or IPV4_ENDPOINT,
            role=settings.text("role"),
            expect_role=settings.text("expect_role"),
            timeout=settings.number("timeout"),
            attempts=settings.whole("attempts"),
            deadline=settings.number("deadline"),
            allow_imds_v1=not settings.flag("no_imds_v1"),
            override=settings.flag("override"),
            optional=settings.flag("optional"),
            refresh=settings.flag("refresh"),
            serve=settings.flag("serve"),
            expiry_signal=None if settings.get("expiry_signal") is None else settings.whole("expiry_signal"),
            error_exit_code=settings.whole("error_exit_code"),
            log_level=settings.text("log_level") or "warning",
            format=settings.text("format"),
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
        ]
        if self.role:
            flags += ["--role", self.role]
        if self.expect_role:
            flags += ["--expect-role", self.expect_role]
        if not self.allow_imds_v1:
            flags.append("--no-imds-v1")
        if self.override:
            flags.append("--override")
        return flags


def _resolve(option: Option, given: Mapping[str, str | bool], environ: Mapping[str, str]) -> Value:
    """Apply the precedence flag > IMDS_SHIM_* > SDK variable > default to one option."""
    parse = option.parse or flag_word
    if option.dest in given:
        raw = given[option.dest]
        return raw if isinstance(raw, bool) else parse(raw, option.flags[0])
    if environ.get(option.env, "") != "":
        return parse(environ[option.env], option.env)
    for name in option.sdk_env:
        if environ.get(name, "") != "":
            return (option.env_parse or parse)(environ[name], name)
    if isinstance(option.default, str) and option.parse is not None:
        return option.parse(option.default, "default")  # defaults are written as users write them
    return option.default


def parse_options(
    tokens: Sequence[str],
    options: Sequence[Option],
    verb: str,
    environ: Mapping[str, str],
) -> Settings:
    """Parse option tokens for ``verb`` and resolve every option's value."""
    by_flag = {flag: option for option in options for flag in option.flags}
    given: dict[str, str | bool] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        name, has_value, inline = token.partition("=")
        option = by_flag.get(name)
        if option is None or verb not in option.verbs:
            where = "" if option is None else f" with {verb}"
            raise UsageError(f"unknown option {name!r}{where} (see imds-shim --help)")
        if option.parse is None:
            if has_value:
                raise UsageError(f"{name} takes no value")
            given[option.dest] = True
        elif has_value:
            given[option.dest] = inline
        elif index < len(tokens):
            given[option.dest] = tokens[index]
            index += 1
        else:
            raise UsageError(f"{name} needs a value ({option.metavar})")
    return Settings(
        (option.dest, _resolve(option, given, environ)) for option in options if verb in option.verbs
    )


def parse_command_line(
    argv: Sequence[str], environ: Mapping[str, str], verb_options: VerbOptions = no_verb_options
) -> Invocation:
    """Split ``argv`` into verb, options and the verbatim command after the first ``--``."""
    if "--" in argv:
        split = list(argv).index("--")
        head, command, has_command = list(argv[:split]), list(argv[split + 1 :]), True
    else:
        head, command, has_command = list(argv), [], False

    verb: str | None = None
    option_tokens: list[str] = []
    invocation = Invocation(verb="", settings=Settings())
    value_due = False
    for token in head:
        if value_due:
            option_tokens.append(token)
            value_due = False
        elif token in ("-h", "--help"):
            invocation.show_help = True
        elif token == "--version":
            invocation.show_version = True
        elif token in VERBOSITY_FLAGS:
            option_tokens += ["--log-level", VERBOSITY_FLAGS[token]]
        elif token.startswith("-") and len(token) > 1:
            option_tokens.append(token)
            value_due = _expects_value(token, (*OPTIONS, *verb_options(verb or EXEC)))
        elif verb is None and token in VERBS:
            verb = token
        elif verb is None:
            raise UsageError(
                f"unknown verb {token!r}: to run a command, put it after '--' (imds-shim -- {token} ...)"
            )
        else:
            raise UsageError(f"unexpected argument {token!r} (see imds-shim --help)")
    invocation.verb = verb or EXEC
    invocation.command = command
    if invocation.show_help or invocation.show_version:
        return invocation

    options = (*OPTIONS, *verb_options(invocation.verb))
    invocation.settings = parse_options(option_tokens, options, invocation.verb, environ)
    _check_format(invocation)
    _check_modes(invocation.settings)
    if invocation.verb == EXEC and not command:
        reason = "no command after '--'" if has_command else "no command given"
        raise UsageError(f"{reason}: usage is imds-shim [OPTIONS] -- COMMAND [ARGS...]")
    if command and not command[0]:
        # CMD [""] or an unset variable in a wrapper: refused before any IMDS request is made.
        raise UsageError("the command after '--' is an empty string")
    if invocation.verb not in (EXEC, SIMULATE) and has_command:
        raise UsageError(f"{invocation.verb} runs no command; remove everything from '--' on")
    return invocation


def _expects_value(token: str, options: Sequence[Option]) -> bool:
    """Whether ``token`` is a flag whose value is the next word (``--role NAME``)."""
    if "=" in token:
        return False
    from_table = [option for option in options if token in option.flags]
    return bool(from_table) and from_table[0].parse is not None


def _check_format(invocation: Invocation) -> None:
    verb, value = invocation.verb, invocation.settings.get("format")
    choices = {EXPORT: EXPORT_FORMATS, DOCTOR: DOCTOR_FORMATS}.get(verb)
    if choices is None:
        return
    if value is None:
        invocation.settings["format"] = choices[0]
    elif value not in choices:
        expected = ", ".join(choices)
        raise UsageError(f"--format for {verb}: expected one of {expected}, got {shown(str(value))}")


def _check_modes(settings: Settings) -> None:
    """At most one way of handing over credentials: static keys (optionally with a signal before
    they expire), --refresh's profile, or --serve's endpoint."""
    chosen = [flag for flag, name in MODE_FLAGS if settings.get(name) not in (None, False)]
    if len(chosen) > 1:
        raise UsageError(
            f"{' and '.join(chosen)} cannot be combined: choose one way to hand over credentials"
        )


def error_exit_code_from(environ: Mapping[str, str], argv: Sequence[str]) -> int:
    """Best effort: the exit code for a usage error found before the settings could be resolved."""
    head = list(argv[: list(argv).index("--")]) if "--" in argv else list(argv)
    candidates = [t.partition("=")[2] for t in head if t.startswith("--error-exit-code=")]
    if "--error-exit-code" in head:
        position = head.index("--error-exit-code") + 1
        candidates += head[position : position + 1]
    candidates.append(environ.get("IMDS_SHIM_ERROR_EXIT_CODE", ""))
    for candidate in candidates:
        number = whole_number(candidate)
        if number is not None and 1 <= number <= 255:
            return number
    return DEFAULT_ERROR_EXIT_CODE


def help_text(options: Sequence[Option] = OPTIONS) -> str:
    """``--help``: usage, verbs, and every option with its environment twin and SDK variables."""
    lines = [
        f"imds-shim {__version__}: export the EC2 instance role's credentials, then exec a command.",
        "",
        "usage: imds-shim [OPTIONS] -- COMMAND [ARGS...]",
        "       imds-shim [OPTIONS] export [--format FORMAT]",
        "       imds-shim [OPTIONS] credential-process",
        "       imds-shim [OPTIONS] doctor [--format text|json]",
        "       imds-shim simulate [SIMULATOR OPTIONS] [-- COMMAND [ARGS...]]",
        "",
        "Everything after '--' is the command, passed to exec unchanged.",
        "Precedence: flag > IMDS_SHIM_* variable > AWS SDK variable > default.",
        "",
        "options:",
    ]
    for option in options:
        flag = " ".join(option.flags) + (f" {option.metavar}" if option.metavar else "")
        lines.append(f"  {flag}")
        details = [option.help]
        if option.default not in (None, False):
            details.append(f"default {option.default}")
        twins = ", ".join((option.env, *option.sdk_env))
        lines.append(f"      {'; '.join(details)}  [env: {twins}]")
    lines += [
        "  -v, -vv, -q    shorthand for --log-level info, debug, error",
        "  -h, --help     show this help;  --version  show the version",
        "",
        "exit status: the command's own; 125 the shim failed (--error-exit-code);",
        "126 command not executable; 127 command not found; 128+N interrupted by signal N.",
        "Run 'imds-shim simulate --help' for the built-in IMDS simulator.",
    ]
    return "\n".join(lines) + "\n"
