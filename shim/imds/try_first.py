"""The first try without tenacity, and every further try under the policy of :mod:`shim.imds.tenacity_policy`.

:func:`with_retries` makes the first attempt directly and builds the tenacity policy only once
something has failed: tenacity and the modules it pulls in cost ~15 ms to import, and a healthy
IMDS never needs them. What is worth another try is :class:`shim.errors.Transient`.
"""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

from shim.errors import Transient
from shim.imds.deadline import Deadline

T = TypeVar("T")


def with_retries(
    attempt: Callable[[], T],
    deadline: Deadline,
    attempts: int,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """Call ``attempt`` under the retry policy; its first failure is replayed, not repeated."""
    try:
        return attempt()
    except Transient as failure:
        first_failure: list[Transient] = [failure]

    from shim.imds.tenacity_policy import retry_policy

    def replay_then_attempt() -> T:
        if first_failure:
            raise first_failure.pop()
        return attempt()

    return retry_policy(deadline, attempts, sleep, rng)(replay_then_attempt)
