"""When an IMDS request is retried, and how long the shim may take in all.

:class:`Transient` marks a failure worth another try, :class:`Unreachable` one that gets a single
retry, and :class:`Deadline` is the overall budget that every timeout and sleep is measured
against. :func:`with_retries` makes the first attempt directly and builds the tenacity policy
(:mod:`shim.backoff`) only once something has failed. tenacity and the modules it pulls in cost
~15 ms to import, and a healthy IMDS never needs them.
"""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

T = TypeVar("T")


class Transient(Exception):
    """An IMDS failure worth retrying; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Throttled(Transient):
    """IMDS answered 429: it wants fewer requests, so the backoff starts higher."""


class Unreachable(Transient):
    """No TCP connection to IMDS (timed out, refused or no route)."""


class Deadline:
    """An overall time budget that every request timeout and every sleep is measured against."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.ends = self.started + seconds

    def remaining(self) -> float:
        return max(0.0, self.ends - self.clock())

    def elapsed(self) -> float:
        return self.clock() - self.started


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

    from shim.backoff import retry_policy

    def replay_then_attempt() -> T:
        if first_failure:
            raise first_failure.pop()
        return attempt()

    return retry_policy(deadline, attempts, sleep, rng)(replay_then_attempt)
