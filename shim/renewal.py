"""When a set of credentials is due for renewal, and how long to wait after a renewal that failed.

One rule for ``--serve`` (when the endpoint fetches a new set) and ``--expiry-signal`` (when the
command is told to restart): renew once less than min(15 minutes, half the set's lifetime) is left.
IMDS offers a new set at least five minutes before the old one expires (typically much earlier);
15 minutes is also when botocore starts refreshing. Half the lifetime keeps short-lived sets (the
simulator's, seconds long) renewing before they run out.
"""

from __future__ import annotations

import random
from typing import Callable

RENEW_BEFORE = 15 * 60.0
RETRY_BASE = 1.0
RETRY_CAP = 30.0
# A retry while the current set is still valid comes before half its remaining time is gone,
# but never sooner than this after the last.
RETRY_FLOOR = 1.0


def renewal_due(expires_at: float, obtained_at: float) -> float:
    """The moment (seconds since the epoch) a set obtained at ``obtained_at`` should be replaced."""
    lifetime = max(expires_at - obtained_at, 0.0)
    return expires_at - min(RENEW_BEFORE, lifetime / 2)


def retry_delay(failures: int, left: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the ``failures``-th renewal in a row that brought nothing new.

    Exponential from 1 s to 30 s with jitter (many containers on one host renew at the same
    moment), and while the current set is valid, at most half of the ``left`` seconds it has.
    """
    delay = min(RETRY_CAP, RETRY_BASE * 2.0 ** (failures - 1)) * (0.5 + rng() / 2)
    if left > 0:
        delay = min(delay, max(left / 2, RETRY_FLOOR))
    return delay
