"""``--expiry-signal``: tell a command that reads only static keys to restart before they expire.

Environment keys cannot be renewed under a running process. The supervisor sends the chosen
signal to the command when the keys are due for renewal (:mod:`shim.lifetime.store`), once; the
orchestrator's restart policy then starts it again with a fresh set. The signal goes through
:meth:`Supervisor.signal_command`, which refuses once the command has been waited for: it can
only ever reach the command, never a process that was given its PID later.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from shim.credentials import Credentials, format_duration, format_time
from shim.lifetime.store import renewal_due
from shim.lifetime.supervisor import Service, Supervisor
from shim.log import log

TYPE_CHECKING = False  # no typing import at run time
if TYPE_CHECKING:
    from collections.abc import Callable


class ExpirySignal(Service):
    """Sends ``signum`` to the command once, when ``credentials`` are due for renewal.

    Keys that have already expired (IMDS hands them out while it recovers) get no signal: a
    restart now would only get them again.
    """

    def __init__(self, signum: int, credentials: Credentials, clock: Callable[[], float] = time.time) -> None:
        self.signum, self.clock = signum, clock
        self.supervisor: Supervisor | None = None
        now, expires_at = clock(), credentials.expiration.timestamp()
        self.due_at: float | None = renewal_due(expires_at, now)
        if expires_at <= now:
            log.warning("--expiry-signal: the keys have already expired; no signal will be sent")
            self.due_at = None
            return
        signal_at = format_time(datetime.fromtimestamp(self.due_at, timezone.utc))
        log.info(
            f"--expiry-signal: signal {signum} goes to the command in {format_duration(self.due_at - now)} "
            f"({signal_at}); the keys expire at {format_time(credentials.expiration)}",
            signal=signum,
            signal_at=signal_at,
            key_id=credentials.masked_key_id,
            expires=format_time(credentials.expiration),
        )

    def attach(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def tick(self) -> float | None:
        if self.due_at is None or self.supervisor is None:
            return None
        left = self.due_at - self.clock()
        if left > 0:
            return left
        self.due_at = None
        if self.supervisor.signal_command(self.signum):
            log.info(
                f"--expiry-signal: the credentials are due for renewal: sent signal {self.signum}",
                signal=self.signum,
            )
        return None
