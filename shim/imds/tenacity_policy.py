"""The retry policy, composed from tenacity's ``stop``, ``wait`` and ``retry`` parts.

- ``retry``: only :class:`Transient` failures (5xx, 429, garbled bodies, read timeouts, a rejected
  token). A :class:`ConnectFailed` (refused, no route, or an unanswered SYN where the machine does
  not say it is EC2) gets one more try and no more: off EC2 every further try only delays the
  verdict. A :class:`NoAnswer` on a machine that says it is EC2 is congestion (the link-local
  allowance drops packets silently): tried until the deadline, whatever ``--attempts`` says.
- ``wait``: exponential backoff with full jitter, so a herd of containers starting together spreads
  out instead of hammering IMDS in lockstep; a ``Retry-After`` is honoured as a floor. Throttling
  (429) starts from a 2 s base instead of 50 ms (the AWS SDKs' standard mode also starts throttled
  retries higher): a busy IMDS recovers in milliseconds, a throttling one only when the herd
  slows down. With 100 shims against 50 req/s, from a regular install (faster starts make a
  tighter herd than the editable install the first figures came from): 1.25-1.36x the needed
  requests with a 2 s base and the herd done in 10-12 s; 1.37-2.09x with 1 s; 1.65-1.71x with
  0.5 s (editable). Congestion (:class:`NoAnswer` on EC2) starts from 0.5 s: every packet a herd
  sends while the allowance is spent is dropped, and each try has already waited out its
  timeout (bench/storm.py: 100 of 100 served through a five-times over-subscribed allowance).
- ``stop``: the attempt budget (not counted for congestion on EC2), or the overall
  :class:`Deadline`, whichever comes first; a sleep that would end past the deadline is not taken.

Imported only once a request has failed (see :func:`shim.imds.try_first.with_retries`).
"""

from __future__ import annotations

import random
import time
from typing import Callable

import tenacity
from tenacity import RetryCallState
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from shim.errors import ConnectFailed, NoAnswer, Throttled, Transient
from shim.imds.backoff import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    CONGESTED_BACKOFF_BASE,
    THROTTLED_BACKOFF_BASE,
    full_jitter,
)
from shim.imds.deadline import Deadline

# The lower-case class names below follow tenacity's own (stop_after_attempt, wait_random, ...).
UNREACHABLE_TRIES = 2


class retry_transient(retry_base):
    """Retry :class:`Transient` failures; a :class:`ConnectFailed` only once."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(error, ConnectFailed):
            return retry_state.attempt_number < UNREACHABLE_TRIES
        return isinstance(error, Transient)


class wait_jitter_or_retry_after(wait_base):
    """Full jitter: uniform(0, min(cap, base * 2**(n-1))), raised to any ``Retry-After``.

    The base is ``throttled_base`` after a 429, ``congested_base`` after no answer on EC2,
    ``base`` after anything else.
    """

    def __init__(
        self,
        base: float = BACKOFF_BASE,
        cap: float = BACKOFF_CAP,
        rng: Callable[[], float] = random.random,
        throttled_base: float = THROTTLED_BACKOFF_BASE,
        congested_base: float = CONGESTED_BACKOFF_BASE,
    ) -> None:
        self.base, self.cap, self.rng, self.throttled_base = base, cap, rng, throttled_base
        self.congested_base = congested_base

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        base = self.base
        if isinstance(error, Throttled):
            base = self.throttled_base
        elif congested(error):
            base = self.congested_base
        delay = min(self.cap, full_jitter(base, retry_state.attempt_number, self.rng))
        if isinstance(error, Transient) and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return delay


def congested(error: BaseException | None) -> bool:
    """No answer, on a machine that says it is an EC2 instance: worth every try the deadline allows."""
    return isinstance(error, NoAnswer) and error.on_ec2


class stop_after_attempt_unless_congested(stop_base):
    """tenacity's ``stop_after_attempt``, except after congestion, which only the deadline stops."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed and congested(outcome.exception()):
            return False
        return retry_state.attempt_number >= self.attempts


class stop_at_deadline(stop_base):
    """Stop when the next sleep would not end before the deadline."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return bool(self.deadline.remaining() <= retry_state.upcoming_sleep)


def retry_policy(
    deadline: Deadline,
    attempts: int,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> tenacity.Retrying:
    """The policy every IMDS request runs under; ``sleep`` and ``rng`` are injectable for tests."""
    return tenacity.Retrying(
        retry=retry_transient(),
        wait=wait_jitter_or_retry_after(rng=rng),
        stop=stop_after_attempt_unless_congested(attempts) | stop_at_deadline(deadline),
        sleep=sleep,
        reraise=True,
    )
