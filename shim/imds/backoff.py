"""The backoff's figures, in seconds, and full jitter: shared by the retry policy
(:mod:`shim.imds.tenacity_policy`, which says why each) and the client's own pause between token
tries. Imports nothing: the client loads it at every start.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

BACKOFF_BASE = 0.05
THROTTLED_BACKOFF_BASE = 2.0
CONGESTED_BACKOFF_BASE = 0.5
BACKOFF_CAP = 4.0


def full_jitter(base: float, attempt: int, rng: Callable[[], float]) -> float:
    """The pause after failed try ``attempt`` (from 1): uniform(0, min(cap, base * 2**(attempt-1)))."""
    return min(BACKOFF_CAP, base * 2.0 ** (attempt - 1)) * rng()
