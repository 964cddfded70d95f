"""The retry policy, with tenacity's sleep and the clock injected: no real waiting."""

from __future__ import annotations

from typing import Callable

import pytest
import tenacity
from helpers import FakeTime

from shim.errors import ConnectFailed, NoAnswer, Throttled, Transient
from shim.imds.backoff import BACKOFF_CAP
from shim.imds.deadline import Deadline
from shim.imds.tenacity_policy import retry_policy
from shim.imds.try_first import with_retries


def failing(times: int, error: Exception) -> Callable[[], str]:
    calls = {"n": 0}

    def attempt() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return "ok"

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


def policy(
    fake: FakeTime, attempts: int = 10, deadline: float = 60.0, jitter: float = 1.0
) -> tenacity.Retrying:
    return retry_policy(Deadline(deadline, fake.clock), attempts, fake.sleep, lambda: jitter)


def test_exponential_backoff_doubles_from_50_ms() -> None:
    """With the jitter at its top, waits are 50, 100, 200, 400 ms."""
    fake = FakeTime()
    assert policy(fake)(failing(4, Transient("busy"))) == "ok"
    assert fake.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4])


def test_throttling_backs_off_from_two_seconds() -> None:
    """After a 429 the waits start at 2 s (then the 4 s cap)."""
    fake = FakeTime()
    policy(fake)(failing(4, Throttled("429")))
    assert fake.sleeps == pytest.approx([2.0, 4.0, 4.0, 4.0])


def test_congestion_on_ec2_is_tried_past_the_attempts_until_the_deadline() -> None:
    """No answer on a machine that says it is EC2: waits from 0.5 s (0.5, 1, 2, 4, 4 ...), and
    --attempts does not stop the tries; only the deadline does."""
    fake = FakeTime()
    attempt = failing(100, NoAnswer("no TCP answer", connected=False, on_ec2=True))
    with pytest.raises(NoAnswer):
        policy(fake, attempts=3, deadline=20)(attempt)
    assert fake.sleeps[:5] == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0])
    assert attempt.calls["n"] > 3  # type: ignore[attr-defined]
    assert sum(fake.sleeps) <= 20


def test_no_answer_off_ec2_keeps_the_attempt_budget() -> None:
    """Off EC2 (or with no facts) a silent IMDS is not congestion: --attempts counts as ever."""
    fake = FakeTime()
    attempt = failing(100, NoAnswer("no answer to GET", connected=True, on_ec2=False))
    with pytest.raises(NoAnswer):
        policy(fake, attempts=3, deadline=60)(attempt)
    assert attempt.calls["n"] == 3  # type: ignore[attr-defined]


def test_backoff_is_capped() -> None:
    """No single wait exceeds the cap."""
    fake = FakeTime()
    policy(fake, attempts=20, deadline=1000)(failing(15, Transient("busy")))
    assert max(fake.sleeps) == BACKOFF_CAP


def test_full_jitter_scales_the_wait() -> None:
    """Full jitter: the wait is the ceiling times a uniform draw (here 0.25)."""
    fake = FakeTime()
    policy(fake, jitter=0.25)(failing(3, Transient("busy")))
    assert fake.sleeps == pytest.approx([0.0125, 0.025, 0.05])


def test_retry_after_is_a_floor() -> None:
    """A Retry-After hint raises the wait to at least that many seconds."""
    fake = FakeTime()
    policy(fake, jitter=0.0)(failing(2, Transient("throttled", retry_after=1.5)))
    assert fake.sleeps == [1.5, 1.5]


def test_retry_after_past_the_deadline_stops_at_once() -> None:
    """A hint that would end past the deadline is not slept; the error is raised."""
    fake = FakeTime()
    with pytest.raises(Transient):
        policy(fake, deadline=2.0)(failing(5, Transient("throttled", retry_after=30)))
    assert fake.sleeps == []


def test_unreachable_is_tried_twice_only() -> None:
    """No TCP answer: one retry, then the verdict."""
    fake = FakeTime()
    attempt = failing(10, ConnectFailed("no answer"))
    with pytest.raises(ConnectFailed):
        policy(fake)(attempt)
    assert attempt.calls["n"] == 2  # type: ignore[attr-defined]
    assert len(fake.sleeps) == 1


def test_other_errors_are_not_retried() -> None:
    """Anything that is not Transient propagates at once."""
    fake = FakeTime()
    attempt = failing(1, ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        policy(fake)(attempt)
    assert fake.sleeps == []


def test_attempts_bound_the_tries() -> None:
    """attempts=3: three tries, two waits, then the last error."""
    fake = FakeTime()
    attempt = failing(10, Transient("busy"))
    with pytest.raises(Transient):
        policy(fake, attempts=3)(attempt)
    assert attempt.calls["n"] == 3  # type: ignore[attr-defined]
    assert len(fake.sleeps) == 2


def test_deadline_bounds_total_waiting() -> None:
    """However many attempts are allowed, the waits never run past the deadline."""
    fake = FakeTime()
    with pytest.raises(Transient):
        policy(fake, attempts=100, deadline=3.0)(failing(1000, Transient("busy")))
    assert sum(fake.sleeps) <= 3.0
    assert fake.now <= 3.0


def test_deadline_remaining_never_negative() -> None:
    """Deadline.remaining is 0 once passed, and elapsed keeps counting."""
    fake = FakeTime()
    deadline = Deadline(1.0, fake.clock)
    fake.now = 5.0
    assert (deadline.remaining(), deadline.elapsed()) == (0.0, 5.0)


def test_with_retries_replays_the_first_failure_instead_of_repeating_it() -> None:
    """with_retries: one call on success; after a failure, the same waits as the policy."""
    fake = FakeTime()
    healthy = failing(0, Transient("busy"))
    assert with_retries(healthy, Deadline(60, fake.clock), 10, fake.sleep, lambda: 1.0) == "ok"
    assert (healthy.calls["n"], fake.sleeps) == (1, [])  # type: ignore[attr-defined]
    flaky = failing(2, Transient("busy"))
    assert with_retries(flaky, Deadline(60, fake.clock), 10, fake.sleep, lambda: 1.0) == "ok"
    assert flaky.calls["n"] == 3  # type: ignore[attr-defined]
    assert fake.sleeps == pytest.approx([0.05, 0.1])


def test_with_retries_counts_the_first_failure_as_an_attempt() -> None:
    """attempts=3 means three requests in all, the first one included."""
    fake = FakeTime()
    attempt = failing(10, Transient("busy"))
    with pytest.raises(Transient):
        with_retries(attempt, Deadline(60, fake.clock), 3, fake.sleep, lambda: 1.0)
    assert attempt.calls["n"] == 3  # type: ignore[attr-defined]
