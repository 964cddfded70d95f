"""What a well-formed value is for each kind of setting, and the one-line error when it is not.

Every parser takes the raw text and where it came from (a flag or a variable name, for the
message) and returns the value or raises :class:`UsageError`. They accept ASCII digits only, and
bounded lengths, so odd input (``²``, Arabic-Indic digits, a 5000-digit number) is refused with a
message instead of reaching ``int()``. Cheap to import: the step-aside path resolves every option.
"""

from __future__ import annotations

from shim.errors import UsageError
from shim.imds.protocol import IPV4_ENDPOINT, IPV6_ENDPOINT
from shim.log import LEVELS, LOG_FORMATS

TYPE_CHECKING = False  # no typing import at run time: this is the step-aside path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Union

    Value = Union[str, int, float, bool, None]
    Parser = Callable[[str, str], Value]

ENDPOINT_MODES = {"ipv4": IPV4_ENDPOINT, "ipv6": IPV6_ENDPOINT}
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
DIGITS = frozenset("0123456789")
IAM_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+=,.@-")
HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
IPV6_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")
NUMBER_CHARACTERS = frozenset("0123456789+-.eE")
MAX_NUMBER_LENGTH = 32


def shown(value: str) -> str:
    """``value`` quoted for an error message, cut short: a value of thousands of characters fits no line."""
    return repr(value) if len(value) <= 200 else repr(value[:200]) + "…"


def whole_number(value: str) -> int | None:
    """``value`` as a whole number of at most 9 ASCII digits (blanks around allowed), else None."""
    text = value.strip()
    if not text or len(text) > 9 or not set(text) <= DIGITS:
        return None
    return int(text)


def is_iam_name(value: str) -> bool:
    """1 to 128 of letters, digits and ``_+=,.@-``: what IAM accepts in a role name; but not ``.``
    or ``..``, which as the last part of a URL path would name another folder of IMDS."""
    return 1 <= len(value) <= 128 and set(value) <= IAM_NAME_CHARACTERS and value not in (".", "..")


def _as_float(text: str) -> float:
    """``text`` as a float, or NaN: ASCII and short only (``float`` also takes other digits and ``inf``)."""
    if not text or len(text) > MAX_NUMBER_LENGTH or not set(text) <= NUMBER_CHARACTERS:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _number(value: str, what: str, minimum: float, maximum: float) -> float:
    number = _as_float(value.strip())
    if not minimum <= number <= maximum:  # also rejects NaN
        raise UsageError(f"{what}: expected a number from {minimum:g} to {maximum:g}, got {shown(value)}")
    return number


def seconds(value: str, what: str) -> float:
    """A positive duration in seconds; decimals allowed (``0.25``)."""
    return _number(value, what, 0.001, 3600)


def delay(value: str, what: str) -> float:
    """A wait in seconds that may be none at all: 0 to an hour."""
    return _number(value, what, 0, 3600)


def poll_period(value: str, what: str) -> float:
    """How often to ask IMDS something: half a second to an hour (less would only load IMDS)."""
    return _number(value, what, 0.5, 3600)


INTERRUPTION_EVENTS = ("spot", "asg", "rebalance")


def interruption_events(value: str, what: str) -> str:
    """A comma-separated list of ``spot``, ``asg`` and ``rebalance``, at least one, normalized."""
    chosen = [word.strip().lower() for word in value.split(",") if word.strip()]
    unknown = [word for word in chosen if word not in INTERRUPTION_EVENTS]
    if unknown or not chosen:
        raise UsageError(
            f"{what}: expected a comma-separated list of {', '.join(INTERRUPTION_EVENTS)}, got {shown(value)}"
        )
    return ",".join(event for event in INTERRUPTION_EVENTS if event in chosen)


def signed_seconds(value: str, what: str) -> float:
    """A duration that may be negative (the simulator's already-expired credentials)."""
    return _number(value, what, -86400, 86400)


def _bounded(value: str, what: str, minimum: int, maximum: int, kind: str) -> int:
    number = whole_number(value)
    if number is None or not minimum <= number <= maximum:
        raise UsageError(f"{what}: expected {kind} from {minimum} to {maximum}, got {shown(value)}")
    return number


def count(value: str, what: str) -> int:
    """A whole number of attempts, 1 to 100."""
    return _bounded(value, what, 1, 100, "a whole number")


def natural(value: str, what: str) -> int:
    """A whole number of 0 or more."""
    return _bounded(value, what, 0, 999_999_999, "a whole number")


def process_id(value: str, what: str) -> int:
    """A process ID: 1 to 2^22 (Linux's largest)."""
    return _bounded(value, what, 1, 4_194_304, "a process ID")


def port(value: str, what: str) -> int:
    """A TCP port; 0 picks a free one."""
    return _bounded(value, what, 0, 65535, "a port")


def exit_code(value: str, what: str) -> int:
    """An exit status from 1 to 255."""
    return _bounded(value, what, 1, 255, "an exit status")


def _is_host(host: str) -> bool:
    """An IPv4 address, a DNS name in ASCII, or ``[IPv6]``: what the endpoint may name."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        return ":" in inner and set(inner) <= IPV6_CHARACTERS
    labels = host.split(".")
    return (
        0 < len(host) <= 253
        and set(host) <= HOST_CHARACTERS
        and all(0 < len(label) <= 63 for label in labels)
    )


def endpoint(value: str, what: str) -> str:
    """An ``http://`` base URL with a host and an optional port, nothing else.

    ``https://`` is refused by name: IMDS speaks plain HTTP on a link-local address, and the
    self-contained bundle carries no TLS stack at all, so both builds answer alike.
    """
    scheme, _, rest = value.partition("://")
    if scheme.lower() == "https":
        raise UsageError(f"{what}: IMDS speaks plain HTTP, not HTTPS: use http://, got {shown(value)}")
    authority = rest[:-1] if rest.endswith("/") else rest
    host, port_text = authority, ""
    if authority.rfind(":") > authority.rfind("]"):
        host, _, port_text = authority.rpartition(":")
    port_ok = not port_text or 1 <= (whole_number(port_text) or 0) <= 65535
    if scheme != "http" or not _is_host(host) or not port_ok:
        raise UsageError(f"{what}: expected a URL such as http://169.254.169.254, got {shown(value)}")
    return value.rstrip("/")


def endpoint_mode(value: str, what: str) -> str:
    """``IPv4`` or ``IPv6``, any case, turned into the matching endpoint."""
    try:
        return ENDPOINT_MODES[value.strip().lower()]
    except KeyError:
        raise UsageError(f"{what}: expected IPv4 or IPv6, got {shown(value)}") from None


def role_name(value: str, what: str) -> str:
    """An IAM role name: 1 to 128 of letters, digits and ``+=,.@_-``."""
    if not is_iam_name(value):
        raise UsageError(f"{what}: {shown(value)} is not a valid IAM role name")
    return value


def log_level(value: str, what: str) -> str:
    """One of debug, info, warning, error."""
    if value.lower() not in LEVELS:
        raise UsageError(f"{what}: expected one of {', '.join(LEVELS)}, got {shown(value)}")
    return value.lower()


def log_format(value: str, what: str) -> str:
    """text or json."""
    if value.lower() not in LOG_FORMATS:
        raise UsageError(f"{what}: expected one of {', '.join(LOG_FORMATS)}, got {shown(value)}")
    return value.lower()


def signal_number(value: str, what: str) -> int:
    """A signal by name (``TERM``, ``SIGTERM``, any case) or number (``15``), one the kernel has."""
    if TYPE_CHECKING:
        import signal as signals
    else:  # the C module: ``signal`` builds enums, milliseconds at every start
        import _signal as signals
    word = value.strip().upper()
    number = whole_number(word)
    if number is None and word.isalnum():
        name = word if word.startswith("SIG") else "SIG" + word
        number = getattr(signals, name, None) if name.isupper() and "_" not in name else None
    if not isinstance(number, int) or not 1 <= number < signals.NSIG:
        raise UsageError(f"{what}: expected a signal such as TERM, SIGHUP or 15, got {shown(value)}")
    return number


# Signals whose default action does not end a process (stop, continue, or nothing), and glibc's
# own 32 and 33: as --expiry-signal they would never make the command restart.
NOT_ENDING = ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCONT", "SIGCHLD", "SIGWINCH", "SIGURG")
GLIBC_RESERVED = (32, 33)


def signal_name(number: int) -> str:
    """``SIGTERM`` for 15; ``signal 40`` for one without a name (the real-time ones). Loads the
    ``signal`` module (and enum): for messages off the start-up path only."""
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ending_signal(value: str, what: str) -> int:
    """A signal (as :func:`signal_number`) whose default action ends a process."""
    if TYPE_CHECKING:
        import signal as signals
    else:
        import _signal as signals
    number = signal_number(value, what)
    if number in GLIBC_RESERVED or number in {getattr(signals, name, None) for name in NOT_ENDING}:
        raise UsageError(
            f"{what}: {shown(value)} does not end a process, so the command would never restart: "
            "use TERM, HUP, INT, USR1, USR2 or another that does"
        )
    return number


def text(value: str, what: str) -> str:
    """Any string."""
    return value


def flag_word(value: str, what: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off``, any case (the ``IMDS_SHIM_*`` booleans)."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise UsageError(f"{what}: expected 1/true/yes/on or 0/false/no/off, got {shown(value)}")


def sdk_true(value: str, what: str) -> bool:
    """The SDKs' switches count only the word ``true``, in any case, as on."""
    return value.strip().lower() == "true"
