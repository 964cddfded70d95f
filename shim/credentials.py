"""The role's credentials, the instance's region and account, and the variables they become."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TypedDict

from shim.config import Config
from shim.errors import CredentialsUnavailable, NoRoleAttached, RoleNotFound, Transient
from shim.imds import IDENTITY_DOCUMENT_PATH, REGION_PATH, ROLE_PATH, ImdsClient
from shim.log import log, mask_key_id
from shim.values import is_iam_name

REQUIRED_FIELDS = ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
REGION_NAME = re.compile(r"[a-z0-9-]{1,40}")


class IdentityDocument(TypedDict, total=False):
    """The fields of ``/latest/dynamic/instance-identity/document`` that the shim uses."""

    region: str
    accountId: str


class Credentials:
    """Temporary credentials; ``repr`` shows only the masked key ID, never the secrets.

    A plain class, not a dataclass: on the healthy path nothing else imports ``dataclasses``.
    """

    __slots__ = ("access_key_id", "account_id", "expiration", "secret_access_key", "session_token")

    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        session_token: str,
        expiration: datetime,
        account_id: str | None = None,
    ) -> None:
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token
        self.expiration = expiration
        self.account_id = account_id

    @property
    def masked_key_id(self) -> str:
        return mask_key_id(self.access_key_id)

    def __repr__(self) -> str:
        return f"Credentials({self.masked_key_id}, expires {format_time(self.expiration)})"


class Fetched:
    """What one run learnt from IMDS."""

    __slots__ = ("account_id", "credentials", "imds_version", "region", "requests_sent", "role")

    def __init__(
        self,
        credentials: Credentials,
        role: str,
        region: str | None,
        account_id: str | None,
        imds_version: int,
        requests_sent: int,
    ) -> None:
        self.credentials, self.role, self.region = credentials, role, region
        self.account_id, self.imds_version, self.requests_sent = account_id, imds_version, requests_sent


def parse_time(value: str) -> datetime:
    """RFC 3339 as IMDS writes it (``2026-11-28T18:00:00Z``), also with fractions or offsets."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment.astimezone(timezone.utc)


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_object(body: bytes, what: str) -> dict[str, object]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep ([[[[...)
        raise Transient(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise Transient(f"{what} is not a JSON object")
    return document


def parse_credentials(body: bytes) -> Credentials:
    """Validate the credentials JSON; anything unexpected is a :class:`Transient` protocol error.

    IMDS sends ``Code``, ``LastUpdated``, ``Type``, ``AccessKeyId``, ``SecretAccessKey``,
    ``Token``, ``Expiration`` (moto leaves out the first three; the extended path adds
    ``AccountId``). ``Code`` must be absent or ``Success``; the next four are required.
    """
    document = _json_object(body, "the credentials answer")
    code = document.get("Code", "Success")
    if code != "Success":
        raise Transient(f"IMDS reports credentials Code {str(code)[:40]!r}")
    for name in REQUIRED_FIELDS:
        value = document.get(name)
        if not isinstance(value, str) or not value.strip():
            raise Transient(f"the credentials answer has no {name}")
        if not value.strip().isprintable():
            # A NUL or a newline cannot travel in an environment variable or an env file.
            raise Transient(f"the credentials answer's {name} has control characters")
    try:
        expiration = parse_time(str(document["Expiration"]))
    except ValueError:
        raise Transient("the credentials answer has an unreadable Expiration") from None
    account = document.get("AccountId")
    return Credentials(
        access_key_id=str(document["AccessKeyId"]).strip(),
        secret_access_key=str(document["SecretAccessKey"]).strip(),
        session_token=str(document["Token"]).strip(),
        expiration=expiration,
        account_id=account if isinstance(account, str) and account else None,
    )


def parse_role(body: bytes) -> str:
    """The first line of the discovery answer, trimmed, checked to be an IAM role name."""
    lines = body.decode("utf-8", "replace").strip().splitlines()
    role = lines[0].strip() if lines else ""
    if not is_iam_name(role):
        raise Transient("IMDS answered role discovery with something that is not a role name")
    return role


def parse_identity_document(body: bytes) -> IdentityDocument:
    """Region and account from the identity document; empty when it is unreadable (no retry)."""
    try:
        document = _json_object(body, "the instance identity document")
    except Transient as error:
        log.info(f"{error}; asking placement/region instead")
        return IdentityDocument()
    found = IdentityDocument()
    for name in ("region", "accountId"):
        value = document.get(name)
        if isinstance(value, str) and value:
            found[name] = value
    return found


def lookup_region_and_account(client: ImdsClient, need_region: bool) -> tuple[str | None, str | None]:
    """Region and account from the identity document, else the region from ``placement/region``.

    A busy IMDS is retried as usual, but a missing (404) or unreadable document is not worth a
    retry storm: it costs one request, then the single-value fallback. Neither value is worth
    failing the run for.
    """
    region = account = None
    try:
        identity = client.get(IDENTITY_DOCUMENT_PATH, parse_identity_document)
        if isinstance(identity, dict):
            region, account = identity.get("region"), identity.get("accountId")
        if need_region and region is None:
            answer = client.get(REGION_PATH)
            text = answer.decode("utf-8", "replace").strip() if isinstance(answer, bytes) else ""
            region = text if REGION_NAME.fullmatch(text) else None
    except CredentialsUnavailable as error:
        log.warning(f"carrying on without region and account: {error}")
    return region, account


def discover_role(client: ImdsClient) -> str:
    """The attached role's name, from ``security-credentials/`` (with the slash, as SDKs ask)."""
    discovered = client.get(ROLE_PATH, parse_role)
    if discovered is None:
        raise NoRoleAttached(
            "no IAM role is attached to this instance (IMDS answered 404 to role discovery): "
            "attach an instance profile, e.g. aws ec2 associate-iam-instance-profile"
        )
    return str(discovered)


def role_credentials(client: ImdsClient, role: str) -> Credentials:
    """The role's current credentials; warns (and still returns them) when already expired."""
    credentials = client.get(ROLE_PATH + urllib.parse.quote(role, safe="+=,.@_-"), parse_credentials)
    if credentials is None:
        raise RoleNotFound(
            f"IMDS has no credentials for role {role!r}: check --role / IMDS_SHIM_ROLE / "
            "AWS_EC2_INSTANCE_PROFILE_NAME against the instance profile's role"
        )
    assert isinstance(credentials, Credentials)
    left = seconds_left(credentials)
    if left <= 0:
        log.warning(
            f"IMDS handed out credentials that expired {format_duration(-left)} ago "
            f"({format_time(credentials.expiration)}); using them anyway, as the AWS SDKs do: "
            "AWS may keep accepting them while IMDS recovers"
        )
    return credentials


def fetch(client: ImdsClient, config: Config, environ: Mapping[str, str]) -> Fetched:
    """Role, credentials, and (when not already known) region and account, from IMDS."""
    role = config.role or discover_role(client)
    credentials = role_credentials(client, role)
    need_region = not any(environ.get(name) for name in REGION_VARIABLES)
    region = account = None
    if need_region or credentials.account_id is None:
        region, account = lookup_region_and_account(client, need_region)
    return Fetched(
        credentials=credentials,
        role=role,
        region=region,
        account_id=credentials.account_id or account,
        imds_version=client.version or 1,
        requests_sent=client.requests_sent,
    )


def exported_variables(fetched: Fetched, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to ``environ``: credentials, expiry, region and account."""
    credentials = fetched.credentials
    variables = {
        "AWS_ACCESS_KEY_ID": credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
        "AWS_SESSION_TOKEN": credentials.session_token,
        # botocore reads AWS_SECURITY_TOKEN *first*: a stale inherited value would win.
        "AWS_SECURITY_TOKEN": credentials.session_token,
        "AWS_CREDENTIAL_EXPIRATION": format_time(credentials.expiration),
    }
    variables.update(region_variables(environ, fetched.region))
    if fetched.account_id:
        variables["AWS_ACCOUNT_ID"] = fetched.account_id
    return variables


def region_variables(environ: Mapping[str, str], region: str | None) -> dict[str, str]:
    """Both region variables: a preset one is copied to the other, else IMDS's region is used.

    The SDKs disagree on which they read (JS and Java only ``AWS_REGION``, botocore only
    ``AWS_DEFAULT_REGION``), so both are always set together.
    """
    preset = [environ[name] for name in REGION_VARIABLES if environ.get(name)]
    chosen = preset[0] if preset else region
    if not chosen:
        return {}
    return {name: environ.get(name) or chosen for name in REGION_VARIABLES}


def seconds_left(credentials: Credentials, now: datetime | None = None) -> float:
    moment = now or datetime.now(timezone.utc)
    return (credentials.expiration - moment).total_seconds()


def format_duration(seconds: float) -> str:
    """``5h59m``, ``14m03s``, ``42s``; negative durations get a leading minus."""
    sign, left = ("-" if seconds < 0 else ""), int(abs(seconds))
    hours, rest = divmod(left, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s"
    return f"{sign}{secs}s"


def describe(fetched: Fetched, elapsed: float) -> str:
    """The one ``-v`` line: role, IMDS version, masked key, expiry, region, account, cost."""
    credentials = fetched.credentials
    return (
        f"role {fetched.role} via IMDSv{fetched.imds_version}; credentials "
        f"{credentials.masked_key_id} expire in {format_duration(seconds_left(credentials))} "
        f"({format_time(credentials.expiration)}); region {fetched.region or 'unchanged'}; "
        f"account {fetched.account_id or 'unknown'}; "
        f"{fetched.requests_sent} requests in {elapsed * 1000:.0f} ms"
    )
