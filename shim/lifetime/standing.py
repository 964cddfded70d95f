"""What ``imds-shim status`` reports of a supervised command's credentials (see :mod:`shim.lifetime.status`).

Cheap to import: it is made before the first fetch, on the path every supervised start takes.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at run time: every supervised start loads this
if TYPE_CHECKING:
    from shim.credentials import Credentials


class Standing:
    """What ``status`` reports: the mode, and how the credentials the command relies on stand."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.role: str | None = None
        self.key: str | None = None  # masked
        self.expires_at: float | None = None
        self.renewed_at: float | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.note: str | None = None  # why there are no credentials to stand for (stepped aside, ...)
        # --on-interruption: the announcement acted on, when the signal went, what else was
        # announced, scheduled maintenance, and the checks in a row that IMDS did not answer.
        self.draining: str | None = None  # "spot terminate"
        self.ends_at: float | None = None  # when it takes effect, where IMDS said
        self.signal_sent_at: float | None = None
        self.notices: list[str] = []
        self.maintenance: list[str] = []
        self.watch_failures = 0
        self.watch_signal: str | None = None  # the signal's name, as status says it

    def hold(self, role: str, credentials: Credentials) -> None:
        self.role, self.key = role, credentials.masked_key_id
        self.expires_at = credentials.expiration.timestamp()

    def document(self) -> bytes:
        import json

        return json.dumps(
            {
                "mode": self.mode,
                "role": self.role,
                "key": self.key,
                "expires_at": self.expires_at,
                "renewed_at": self.renewed_at,
                "failures": self.failures,
                "last_error": self.last_error,
                "note": self.note,
                "draining": self.draining,
                "ends_at": self.ends_at,
                "signal_sent_at": self.signal_sent_at,
                "notices": self.notices,
                "maintenance": self.maintenance,
                "watch_failures": self.watch_failures,
                "watch_signal": self.watch_signal,
            }
        ).encode()
