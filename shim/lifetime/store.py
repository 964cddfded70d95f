"""The set of credentials the supervisor holds, and when a set is due for renewal.

When a set of credentials is due for renewal, and how long to wait after a renewal that failed.

One rule for ``--serve`` (when the endpoint fetches a new set) and ``--expiry-signal`` (when the
command is told to restart): renew once less than min(15 minutes, half the set's lifetime) is left.
IMDS offers a new set at least five minutes before the old one expires (typically much earlier);
15 minutes is also when botocore starts refreshing. Half the lifetime keeps short-lived sets (the
simulator's, seconds long) renewing before they run out.

Every container on an instance holds the same set, so all their supervisors would renew at the
same second: where the set lives long enough (hours, as IMDS's do), each renews at a random moment
in the :data:`RENEW_SPREAD` before that, spreading a host's renewals over five minutes instead of
sending them through IMDS's shared packet allowance at once.
"""

from __future__ import annotations

import json
import os
import time

from shim.credentials import Credentials, format_time

TYPE_CHECKING = False  # no typing import at run time
if TYPE_CHECKING:
    from collections.abc import Callable

RENEW_BEFORE = 15 * 60.0
RENEW_SPREAD = 5 * 60.0


def jitter() -> float:
    """A random fraction in [0, 1), from the OS: ``random`` would load hashlib at every start."""
    return int.from_bytes(os.urandom(4), "big") / 2**32


def renewal_due(expires_at: float, obtained_at: float, rng: Callable[[], float] = jitter) -> float:
    """The moment (seconds since the epoch) a set obtained at ``obtained_at`` should be replaced:
    min(15 minutes, half its lifetime) before it expires, and for a set that lives more than
    twice (15 + 5) minutes, up to :data:`RENEW_SPREAD` earlier, at random."""
    lifetime = max(expires_at - obtained_at, 0.0)
    if lifetime > 2 * (RENEW_BEFORE + RENEW_SPREAD):
        return expires_at - RENEW_BEFORE - RENEW_SPREAD * rng()
    return expires_at - min(RENEW_BEFORE, lifetime / 2)


class CredentialStore:
    """The set the endpoint hands out, already rendered, and when it is due for renewal; no set
    yet (``--optional`` with IMDS down at the start) until the first :meth:`replace`."""

    def __init__(
        self,
        credentials: Credentials | None,
        account_id: str | None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = jitter,
    ) -> None:
        self.account_id, self.clock, self.rng = account_id, clock, rng
        self.credentials: Credentials | None = None
        self.body: bytes | None = None
        self.expires_at = self.due_at = 0.0
        if credentials is not None:
            self.replace(credentials)

    def replace(self, credentials: Credentials) -> None:
        document = {
            "AccessKeyId": credentials.access_key_id,
            "SecretAccessKey": credentials.secret_access_key,
            "Token": credentials.session_token,
            "Expiration": format_time(credentials.expiration),
        }
        account_id = credentials.account_id or self.account_id
        if account_id:
            document["AccountId"] = account_id
        expires_at = credentials.expiration.timestamp()
        self.credentials = credentials
        self.body = json.dumps(document).encode()
        self.expires_at = expires_at
        self.due_at = renewal_due(expires_at, self.clock(), self.rng)

    def answer(self) -> bytes | None:
        """The JSON to hand out, or None once the set has expired (or before the first)."""
        return self.body if self.clock() < self.expires_at else None
