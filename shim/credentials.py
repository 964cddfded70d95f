"""What a fetch yields: the role's temporary credentials and what else IMDS told, and how times read."""

from __future__ import annotations

from datetime import datetime, timezone

from shim.log import mask_key_id


class Credentials:
    """Temporary credentials; ``repr`` shows only the masked key ID, never the secrets.

    A plain class, not a dataclass: on the healthy path nothing else imports ``dataclasses``.
    Built only by :mod:`shim.imds.answers`, so every field has been checked.
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


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC, as IMDS writes it: ``2026-11-28T18:00:00Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def described_fields(fetched: Fetched, elapsed: float) -> dict[str, str | int | float | None]:
    """What :func:`describe` says, as the fields of a JSON log line (the key ID masked)."""
    credentials = fetched.credentials
    return {
        "role": fetched.role,
        "imds_version": fetched.imds_version,
        "key_id": credentials.masked_key_id,
        "expires": format_time(credentials.expiration),
        "region": fetched.region,
        "account": fetched.account_id,
        "requests": fetched.requests_sent,
        "elapsed_ms": round(elapsed * 1000),
    }


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
