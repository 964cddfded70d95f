"""The one boundary where IMDS answers are checked: every byte IMDS sends is untrusted input.

Whoever answers in place of 169.254.169.254 (a compromised sidecar in the pod's network namespace,
an ARP-spoofing neighbour, a mistyped endpoint) chooses these bytes, and they travel on into
environment variables, the ``--refresh`` config file, log lines, ``doctor`` output and the
``export`` formats. So every value is held to its real shape here, before anything else sees it:

- IMDS token, secret key, session token: printable ASCII without blanks;
- access key ID: letters, digits, ``-`` and ``_``, at most 128 (AWS's are upper-case letters and
  digits; look-alikes such as moto hand out ``test-key``);
- role name: what IAM accepts (letters, digits, ``+=,.@_-``);
- region: lower-case letters, digits and ``-``; account ID: exactly 12 ASCII digits;
- Expiration: RFC 3339, parsed without overflow;
- ``Code``: ``Success`` (or absent); ``Retry-After``: whole seconds;
- the instance's end: a Spot action and an Auto Scaling state from short known lists, RFC 3339
  times, scheduled events' codes and states as IAM-like words and their ``7 Dec 2026 16:27:36
  GMT`` windows (:class:`Notice`).

A required value that fails its check makes the answer garbled (:class:`Transient`: fetched
again under the deadline, then reported); an optional one (region, account) becomes unknown, with
a warning. Messages name the field that failed, never its value.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from shim.command_line.values import DIGITS, is_iam_name, whole_number
from shim.credentials import Credentials
from shim.errors import Transient
from shim.log import log

MAX_TOKEN_BYTES = 1024
MAX_REGION_LENGTH = 40
MAX_RETRY_AFTER = 3600
KEY_ID_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
MAX_KEY_ID_LENGTH = 128
REGION_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
# Printable ASCII without the blank: what keys and tokens are made of (base64 and friends).
SECRET_CHARACTERS = frozenset(chr(code) for code in range(0x21, 0x7F))
# Codes IMDS is known to send instead of Success, each with what it means. Messages use these
# texts, never the answer's own bytes.
KNOWN_CODES = {
    "AssumeRoleUnauthorizedAccess": "the role's trust policy does not let EC2 assume it",
}


class Identity:
    """Region and account of the instance; None where IMDS did not tell or told nonsense.

    A plain class: a NamedTuple costs a millisecond to define, at every container start.
    """

    __slots__ = ("account_id", "region")

    def __init__(self, region: str | None, account_id: str | None) -> None:
        self.region, self.account_id = region, account_id


# -- shapes ------------------------------------------------------------------------------------


def is_region(value: str) -> bool:
    """``eu-west-1``, ``us-gov-east-1``: lower-case letters, digits and inner hyphens."""
    return (
        0 < len(value) <= MAX_REGION_LENGTH
        and set(value) <= REGION_CHARACTERS
        and value[0].isalpha()
        and not value.endswith("-")
    )


def is_account_id(value: str) -> bool:
    """Exactly 12 ASCII digits."""
    return len(value) == 12 and set(value) <= DIGITS


def is_key_id(value: str) -> bool:
    """``ASIA...``: ASCII letters, digits, ``-`` and ``_``; nothing a shell or a log line minds."""
    return 0 < len(value) <= MAX_KEY_ID_LENGTH and set(value) <= KEY_ID_CHARACTERS


def is_secret_text(value: str) -> bool:
    """Printable ASCII without blanks, as secret keys and session tokens are."""
    return bool(value) and set(value) <= SECRET_CHARACTERS


def _digits(text: str, start: int, length: int) -> int | None:
    part = text[start : start + length]
    return int(part) if len(part) == length and set(part) <= DIGITS else None


def parse_timestamp(text: str) -> datetime | None:
    """RFC 3339 (``2026-11-28T18:00:00Z``, fractions and offsets allowed) in UTC, else None.

    Hand-parsed rather than ``datetime.fromisoformat``, which accepts different things on each
    Python version; an offset that pushes a date past year 1 or 9999 is refused, not an
    OverflowError.
    """
    if not 20 <= len(text) <= 40 or not text.isascii():
        return None
    if text[-1] in "Zz":
        clock, offset = text[11:-1], 0
    elif text[-6] in "+-" and text[-3] == ":":
        hours, minutes = _digits(text, len(text) - 5, 2), _digits(text, len(text) - 2, 2)
        if hours is None or minutes is None:
            return None
        clock, offset = text[11:-6], (hours * 60 + minutes) * (-1 if text[-6] == "-" else 1)
    else:
        return None
    if text[4] + text[7] != "--" or text[10] not in "Tt" or clock[2:3] + clock[5:6] != "::":
        return None
    fraction = clock[8:]
    if fraction and (fraction[0] != "." or not 2 <= len(fraction) <= 10 or not set(fraction[1:]) <= DIGITS):
        return None
    fields = [
        _digits(text, 0, 4),
        _digits(text, 5, 2),
        _digits(text, 8, 2),
        _digits(clock, 0, 2),
        _digits(clock, 3, 2),
        _digits(clock, 6, 2),
    ]
    if None in fields:
        return None
    year, month, day, hour, minute, second = (int(field or 0) for field in fields)
    try:
        zone = timezone(timedelta(minutes=offset))
        return datetime(year, month, day, hour, minute, second, tzinfo=zone).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


# -- answers -----------------------------------------------------------------------------------


def _ascii(body: bytes) -> str | None:
    try:
        return body.decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_token(body: bytes) -> str:
    """The IMDSv2 token: it goes into a request header, so printable ASCII only, bounded."""
    token = (_ascii(body) or "").strip()
    if len(token) > MAX_TOKEN_BYTES or not is_secret_text(token):
        raise Transient("IMDS answered the token request with a malformed token")
    return token


def parse_role(body: bytes) -> str:
    """The first line of the discovery answer, checked to be an IAM role name."""
    lines = (_ascii(body) or "").strip().split("\n")
    role = lines[0].strip()
    if not is_iam_name(role):
        raise Transient("IMDS answered role discovery with something that is not a role name")
    return role


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in whole seconds, at most an hour; anything else is ignored."""
    seconds = whole_number(value or "")
    return float(seconds) if seconds is not None and seconds <= MAX_RETRY_AFTER else None


def _json_object(body: bytes, what: str) -> dict[str, object]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep ([[[[...)
        raise Transient(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise Transient(f"{what} is not a JSON object")
    return document


def _require(document: dict[str, object], name: str, valid: bool) -> None:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise Transient(f"the credentials answer has no {name}")
    if not valid:
        raise Transient(f"the credentials answer's {name} is not well-formed")


def _text_field(document: dict[str, object], name: str) -> str:
    value = document.get(name)
    return value if isinstance(value, str) else ""


def parse_credentials(body: bytes) -> Credentials:
    """The role's credentials: ``Code`` must be absent or ``Success``, four fields required.

    IMDS sends ``Code``, ``LastUpdated``, ``Type``, ``AccessKeyId``, ``SecretAccessKey``,
    ``Token``, ``Expiration`` (moto leaves out the first three; the extended path adds
    ``AccountId``). ``LastUpdated`` and ``Type`` are not used.
    """
    document = _json_object(body, "the credentials answer")
    code = document.get("Code", "Success")
    if code != "Success":
        meaning = KNOWN_CODES.get(code) if isinstance(code, str) else None
        why = f"{code}: {meaning}" if meaning else "an unknown Code"
        raise Transient(f"IMDS reports the role's credentials as not available ({why})")
    key_id = _text_field(document, "AccessKeyId")
    secret = _text_field(document, "SecretAccessKey")
    token = _text_field(document, "Token")
    expiration = parse_timestamp(_text_field(document, "Expiration"))
    _require(document, "AccessKeyId", is_key_id(key_id))
    _require(document, "SecretAccessKey", is_secret_text(secret))
    _require(document, "Token", is_secret_text(token))
    _require(document, "Expiration", expiration is not None)
    assert expiration is not None
    return Credentials(
        key_id,
        secret,
        token,
        expiration,
        _optional_account(document.get("AccountId"), "the credentials answer"),
    )


def _optional_account(value: object, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and is_account_id(value):
        return value
    log.warning(f"{where} has an AccountId that is not 12 digits; account unknown")
    return None


def parse_identity_document(body: bytes) -> Identity:
    """Region and account from the identity document; unknown where unreadable (no retry)."""
    try:
        document = _json_object(body, "the instance identity document")
    except Transient as error:
        log.info(f"{error}; asking placement/region instead")
        return Identity(None, None)
    region = document.get("region")
    if region is not None and not (isinstance(region, str) and is_region(region)):
        log.warning(
            "the instance identity document has a region that is not a region name; "
            "asking placement/region instead"
        )
        region = None
    account = document.get("accountId")
    return Identity(region, _optional_account(account, "the instance identity document"))


def parse_region(body: bytes) -> str | None:
    """``placement/region``: a region name, or None (with a warning) for anything else."""
    region = (_ascii(body) or "").strip()
    if is_region(region):
        return region
    log.warning("IMDS answered placement/region with something that is not a region name; region unknown")
    return None


# -- the instance's end ----------------------------------------------------------------------

SPOT_ACTIONS = ("terminate", "stop", "hibernate")
# What target-lifecycle-state may say (Auto Scaling's lifecycle states an instance sees itself in).
LIFECYCLE_STATES = frozenset(
    {
        "InService",
        "Pending",
        "Terminated",
        "Detached",
        "Standby",
        "Warmed:Pending",
        "Warmed:Running",
        "Warmed:Stopped",
        "Warmed:Hibernated",
        "Warmed:Terminated",
    }
)
MAX_NOTICE_BYTES = 16 * 1024
MAX_WORD_LENGTH = 64
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Notice:
    """One announcement, as checked here: ``kind`` (spot, asg, rebalance), what it says in words
    a log line may carry, when it takes effect (None: not told, or not readable), and whether it
    may be acted on (``ends``: an Auto Scaling state nobody knows announces nothing)."""

    __slots__ = ("at", "ends", "kind", "what")

    def __init__(self, kind: str, what: str, at: datetime | None, ends: bool = True) -> None:
        self.kind, self.what, self.at, self.ends = kind, what, at, ends


def parse_spot_action(body: bytes) -> Notice:
    """``{"action": "terminate", "time": "2026-12-07T16:15:30Z"}``. IMDS answers 200 here only
    with a notice, so an answer of another shape is still one: unreadable, and acted on (the safe
    side for the command's work is to be told)."""
    try:
        document = _json_object(body, "the Spot instance-action answer")
    except Transient:
        return Notice("spot", "an unreadable Spot notice", None)
    action, moment = document.get("action"), parse_timestamp(_text_field(document, "time"))
    if action not in SPOT_ACTIONS or moment is None:
        return Notice("spot", "an unreadable Spot notice", moment)
    return Notice("spot", f"spot {action}", moment)


def parse_lifecycle_state(body: bytes) -> Notice | None:
    """Auto Scaling's target lifecycle state: a notice when it is ``Terminated`` (the group takes
    the instance away), None while in service; another known state, or an unknown one, is
    neither (told in words, never in the answer's bytes)."""
    state = _ascii(body)
    state = None if state is None else state.strip()
    if state == "Terminated":
        return Notice("asg", "auto scaling terminate", None)
    if state in LIFECYCLE_STATES:
        return None
    return Notice("asg", "an unknown Auto Scaling state", None, ends=False)


def parse_rebalance(body: bytes) -> Notice:
    """``{"noticeTime": "2026-12-07T16:10:00Z"}``: the Spot instance is at elevated risk (a 200
    with another body is the recommendation still, its time unknown)."""
    try:
        moment = parse_timestamp(_text_field(_json_object(body, "the rebalance answer"), "noticeTime"))
    except Transient:
        moment = None
    return Notice("rebalance", "rebalance recommended", moment)


def parse_event_time(text: str) -> datetime | None:
    """Scheduled events' ``7 Dec 2026 16:27:36 GMT`` (day without a leading zero), else None."""
    parts = text.split(" ")
    if len(parts) != 5 or parts[4] != "GMT" or parts[1] not in MONTHS:
        return None
    day, year = whole_number(parts[0]), whole_number(parts[2])
    clock = parts[3].split(":")
    numbers = [whole_number(part) if len(part) == 2 else None for part in clock]
    if day is None or year is None or len(numbers) != 3 or None in numbers:
        return None
    hour, minute, second = (int(number or 0) for number in numbers)
    try:
        return datetime(year, MONTHS.index(parts[1]) + 1, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        return None


def _word(value: object) -> str | None:
    """A code or state: letters, digits and ``-:_``, short; else None."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_WORD_LENGTH or not value.isascii():
        return None
    return value if all(c.isalnum() or c in "-:_" for c in value) else None


def parse_scheduled_events(body: bytes) -> list[str]:
    """The scheduled maintenance events, each as one line of words: ``system-reboot (scheduled)
    from 2026-12-10T02:00:00Z to 2026-12-10T04:00:00Z``. An entry of another shape is one line
    saying so; a body that is not a JSON list is a Transient (tried again next time)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise Transient("the scheduled events answer is not valid JSON") from None
    if not isinstance(document, list):
        raise Transient("the scheduled events answer is not a JSON list")
    events = []
    for entry in document[:20]:
        fields = entry if isinstance(entry, dict) else {}
        code, state = _word(fields.get("Code")), _word(fields.get("State"))
        start = parse_event_time(_text_field(fields, "NotBefore"))
        end = parse_event_time(_text_field(fields, "NotAfter"))
        if code is None or start is None:
            events.append("an unreadable scheduled event")
            continue
        window = f"from {start.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        if end is not None:
            window += f" to {end.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        events.append(f"{code} ({(state or 'state unknown').lower()}) {window}")
    return events
