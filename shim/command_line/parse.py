"""The command line: argv split into verb, options and command, and ``--help`` made from the table.

Precedence for every setting: flag > ``IMDS_SHIM_*`` > the SDK-wide variable > default (the rows
of :data:`.config.OPTIONS`). Everything after the first ``--`` is the command, taken verbatim: never
parsed, re-quoted or given to a shell. Cheap to import, like :mod:`.config`: the step-aside path
runs it.
"""

from __future__ import annotations

from shim import __version__
from shim.command_line.config import (
    CREDENTIAL_PROCESS,
    DOCTOR,
    DOCTOR_FORMATS,
    EXEC,
    EXPORT,
    EXPORT_FORMATS,
    OPTIONS,
    SIMULATE,
    STATUS,
    VERBS,
    Option,
    Settings,
)
from shim.command_line.exit_codes import MEANINGS, SHIM_FAILED
from shim.command_line.values import flag_word, shown, whole_number
from shim.errors import UsageError
from shim.log import LOG_FORMATS

TYPE_CHECKING = False  # no typing import at run time: this is the step-aside path
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from shim.command_line.config import VerbOptions
    from shim.command_line.values import Value


def no_verb_options(verb: str) -> Sequence[Option]:
    return ()


VERBOSITY_FLAGS = {"-v": "info", "--verbose": "info", "-vv": "debug", "-q": "error", "--quiet": "error"}


class Invocation:
    """What the command line asks for: a verb, its settings and (for exec and simulate) a command."""

    def __init__(self, verb: str, settings: Settings) -> None:
        self.verb = verb
        self.settings = settings
        self.command: list[str] = []
        self.show_help = False
        self.show_version = False


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
    head, command, has_command = _split_at_separator(argv)
    invocation, option_tokens = _read_head(head, verb_options)
    invocation.command = command
    if invocation.show_help or invocation.show_version:
        return invocation
    options = (*OPTIONS, *verb_options(invocation.verb))
    invocation.settings = parse_options(option_tokens, options, invocation.verb, environ)
    _check_format(invocation)
    _check_command(invocation.verb, command, has_command)
    return invocation


def _split_at_separator(argv: Sequence[str]) -> tuple[list[str], list[str], bool]:
    """What comes before the first ``--``, what comes after it (the command), and whether there was one."""
    if "--" not in argv:
        return list(argv), [], False
    split = list(argv).index("--")
    return list(argv[:split]), list(argv[split + 1 :]), True


def _read_head(head: Sequence[str], verb_options: VerbOptions) -> tuple[Invocation, list[str]]:
    """The verb, --help and --version from the words before ``--``, and the option tokens to parse
    (shorthands such as -v spelt out)."""
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
            known = (*OPTIONS, *verb_options(verb or EXEC))
            name = token.partition("=")[0]
            if not any(name in option.flags for option in known):
                # Said now: read on, its value would be taken for an unknown verb.
                raise UsageError(f"unknown option {name!r} (see imds-shim --help)")
            option_tokens.append(token)
            value_due = _expects_value(token, known)
        elif verb is None and token in VERBS:
            verb = token
        elif verb is None:
            raise UsageError(
                f"unknown verb {token!r}: to run a command, put it after '--' (imds-shim -- {token} ...)"
            )
        else:
            raise UsageError(f"unexpected argument {token!r} (see imds-shim --help)")
    invocation.verb = verb or EXEC
    return invocation, option_tokens


def _check_command(verb: str, command: Sequence[str], has_command: bool) -> None:
    """The command after ``--``: required for exec, refused for the verbs that run none."""
    if verb == EXEC and not command:
        reason = "no command after '--'" if has_command else "no command given"
        raise UsageError(f"{reason}: usage is imds-shim [OPTIONS] -- COMMAND [ARGS...]")
    if command and not command[0]:
        # CMD [""] or an unset variable in a wrapper: refused before any IMDS request is made.
        raise UsageError("the command after '--' is an empty string")
    if verb not in (EXEC, SIMULATE) and has_command:
        raise UsageError(f"{verb} runs no command; remove everything from '--' on")


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


def _given_early(environ: Mapping[str, str], argv: Sequence[str], flag: str, variable: str) -> list[str]:
    """The values of ``flag`` before ``--``, then of ``variable``: read before the settings are
    resolved, so that even a usage error honours them."""
    head = _split_at_separator(argv)[0]
    candidates = [t.partition("=")[2] for t in head if t.startswith(f"{flag}=")]
    if flag in head:
        position = head.index(flag) + 1
        candidates += head[position : position + 1]
    candidates.append(environ.get(variable, ""))
    return candidates


def error_exit_code_from(environ: Mapping[str, str], argv: Sequence[str]) -> int:
    """Best effort: the exit code for a usage error found before the settings could be resolved."""
    for candidate in _given_early(environ, argv, "--error-exit-code", "IMDS_SHIM_ERROR_EXIT_CODE"):
        number = whole_number(candidate)
        if number is not None and 1 <= number <= 255:
            return number
    return SHIM_FAILED


def log_format_from(environ: Mapping[str, str], argv: Sequence[str]) -> str:
    """Best effort: the log format for a usage error found before the settings could be resolved."""
    for candidate in _given_early(environ, argv, "--log-format", "IMDS_SHIM_LOG_FORMAT"):
        if candidate.lower() in LOG_FORMATS:
            return candidate.lower()
    return LOG_FORMATS[0]


def option_lines(options: Sequence[Option]) -> list[str]:
    """Two lines per option: its flags, then its help, default and variables."""
    lines = []
    for option in options:
        lines.append("  " + " ".join(option.flags) + (f" {option.metavar}" if option.metavar else ""))
        details = [option.help]
        if option.default not in (None, False):
            details.append(f"default {option.default}")
        twins = ", ".join((option.env, *option.sdk_env))
        lines.append(f"      {'; '.join(details)}  [env: {twins}]")
    return lines


def help_text() -> str:
    """``--help``: usage, verbs, every option with its variables, and the exit statuses."""
    lines = [
        f"imds-shim {__version__}: export the EC2 instance role's credentials, then exec a command.",
        "",
        "usage: imds-shim [OPTIONS] -- COMMAND [ARGS...]",
        f"       imds-shim [OPTIONS] {EXPORT} [--format FORMAT]",
        f"       imds-shim [OPTIONS] {CREDENTIAL_PROCESS}",
        f"       imds-shim [OPTIONS] {DOCTOR} [--format {'|'.join(DOCTOR_FORMATS)}]",
        f"       imds-shim {SIMULATE} [SIMULATOR OPTIONS] [-- COMMAND [ARGS...]]",
        f"       imds-shim {STATUS} [--pid PID] [--ready]   (0: the credentials are valid, 1: not)",
        "",
        "Everything after '--' is the command, passed to exec unchanged.",
        "Precedence: flag > IMDS_SHIM_* variable > AWS SDK variable > default.",
        "",
        "options:",
        *option_lines(OPTIONS),
        "  -v, -vv, -q    shorthand for --log-level info, debug, error",
        "  -h, --help     show this help;  --version  show the version",
        "",
        "exit status: the command's own, or",
        *(f"  {status:<8}{meaning}" for status, meaning in MEANINGS),
        "Run 'imds-shim simulate --help' for the built-in IMDS simulator.",
    ]
    return "\n".join(lines) + "\n"
