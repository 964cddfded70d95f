"""``--expiry-signal``: tell a command that reads only static keys to restart before they expire.

Environment keys cannot be renewed under a running process. A small companion
(:mod:`shim.companion`) sends the chosen signal to the command when the keys are due for renewal
(:mod:`shim.renewal`), once; the orchestrator's restart policy then starts it again with a fresh
set. A command that has exited by then leaves nothing behind.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from shim.companion import Companion, Parent
from shim.credentials import Credentials, format_duration, format_time
from shim.log import log
from shim.renewal import renewal_due


def signal_when_due(signum: int, credentials: Credentials) -> Companion | None:
    """The companion that sends ``signum`` to the command when ``credentials`` are due for renewal.

    Keys that have already expired (IMDS hands them out while it recovers) get no signal: a
    restart now would only get them again.
    """
    now, expires_at = time.time(), credentials.expiration.timestamp()
    due_at = renewal_due(expires_at, now)
    if expires_at <= now:
        log.warning("--expiry-signal: the keys have already expired; no signal will be sent")
        return None
    log.info(
        f"--expiry-signal: signal {signum} goes to the command in {format_duration(due_at - now)} "
        f"({format_time(datetime.fromtimestamp(due_at, timezone.utc))}); the keys expire at "
        f"{format_time(credentials.expiration)}"
    )

    def watch(parent: Parent) -> None:
        if parent.wait_until(due_at):
            log.info(f"--expiry-signal: the credentials are due for renewal: sending signal {signum}")
            os.kill(parent.pid, signum)

    return watch
