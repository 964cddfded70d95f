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
- ``Code``: ``Success`` (or absent); ``Retry-After``: whole seconds.

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
