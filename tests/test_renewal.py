"""When credentials are renewed, and how the endpoint's renewal loop waits: a fake clock, no real sleeps."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

import pytest
from helpers import FakeTime

from shim.companion import Parent
from shim.credentials import Credentials
from shim.endpoint import CredentialStore, keep_renewed
from shim.errors import ImdsUnreachable
from shim.renewal import renewal_due, retry_delay

HOUR = 3600.0


def credentials(key: str, expires_at: float) -> Credentials:
    moment = datetime.fromtimestamp(expires_at, timezone.utc)
    return Credentials(key, "secret-" + key, "token-" + key, moment)


@pytest.mark.parametrize(
    ("lifetime", "before_expiry"),
    [(6 * HOUR, 900.0), (1800.0, 900.0), (1200.0, 600.0), (4.0, 2.0), (0.0, 0.0)],
)
def test_renewal_is_due_min_15_minutes_or_half_the_lifetime_before_expiry(
    lifetime: float, before_expiry: float
) -> None:
    """Due at expiry - min(15 min, lifetime / 2)."""
    assert renewal_due(1000.0 + lifetime, 1000.0) == 1000.0 + lifetime - before_expiry


def test_retry_delays_grow_to_a_cap_and_stay_inside_the_sets_life() -> None:
    """1 s, 2 s, 4 s ... 30 s (times a jitter of 0.5-1), and at most half of what the set has left."""
    top = [retry_delay(failures, left=HOUR, rng=lambda: 1.0) for failures in range(1, 8)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert retry_delay(3, left=HOUR, rng=lambda: 0.0) == 2.0
    assert retry_delay(6, left=10.0, rng=lambda: 1.0) == 5.0
    assert retry_delay(6, left=0.1, rng=lambda: 1.0) == 1.0
    assert retry_delay(6, left=-5.0, rng=lambda: 1.0) == 30.0  # expired: the plain backoff


class LivingParent(Parent):
    """A parent that lives until the clock reaches ``dies_at``."""

    def __init__(self, time: FakeTime, dies_at: float) -> None:
        super().__init__(pid=0, sleep=time.sleep, clock=time.clock)
        self.dies_at = dies_at

    def alive(self) -> bool:
        return self.clock() < self.dies_at


def run_loop(
    answers: list[Callable[[float], Credentials]], first_expiry: float, dies_at: float
) -> tuple[list[float], CredentialStore]:
    """Run keep_renewed until the parent dies; return when each renewal was asked for."""
    time = FakeTime()
    store = CredentialStore(credentials("AKIA0", first_expiry), None, clock=time.clock)
    asked: list[float] = []

    def renew() -> Credentials:
        asked.append(time.now)
        answer = answers[min(len(asked), len(answers)) - 1]
        return answer(time.now)

    keep_renewed(store, renew, LivingParent(time, dies_at), rng=lambda: 1.0)
    return asked, store


def test_a_healthy_imds_is_asked_once_per_set_at_the_due_moment() -> None:
    """Six-hour sets: renewed 15 minutes before each expiry, one request each."""

    def fresh_set(number: int) -> Callable[[float], Credentials]:
        return lambda now: credentials(f"AKIA{number}", now + 6 * HOUR)

    fresh = [fresh_set(number) for number in range(1, 5)]
    asked, store = run_loop(fresh, first_expiry=6 * HOUR, dies_at=17 * HOUR)
    assert asked == [6 * HOUR - 900, 12 * HOUR - 1800]
    assert store.credentials.access_key_id == "AKIA2"


def test_imds_down_is_retried_with_backoff_and_the_set_served_meanwhile() -> None:
    """Failures back off 1, 2, 4 ... s (capped by half the set's life left); the first success ends it."""
    calls = {"n": 0}

    def flaky(now: float) -> Credentials:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise ImdsUnreachable("no IMDS")
        return credentials("AKIA1", now + 6 * HOUR)

    asked, store = run_loop([flaky], first_expiry=6 * HOUR, dies_at=7 * HOUR)
    due = 6 * HOUR - 900
    assert asked == [due, due + 1, due + 3, due + 7]
    assert store.credentials.access_key_id == "AKIA1"


def test_an_unrotated_set_is_asked_for_again_not_in_a_tight_loop() -> None:
    """IMDS still handing out the old set: retries at least 1 s apart, never a tight loop."""
    asked, store = run_loop(
        [lambda now: credentials("AKIA0", 6 * HOUR)], first_expiry=6 * HOUR, dies_at=6 * HOUR + 60
    )
    gaps = [later - earlier for earlier, later in zip(asked, asked[1:])]
    assert all(gap >= 1.0 for gap in gaps)
    assert len(asked) < 45  # in the 16 minutes from 15 before expiry to 1 after
    assert store.answer() is None  # expired: the endpoint says so instead of serving it


def test_the_loop_ends_when_the_command_does() -> None:
    """A parent gone before the set is due: no IMDS request at all."""
    asked, _ = run_loop([lambda now: credentials("AKIA1", now + HOUR)], first_expiry=6 * HOUR, dies_at=60)
    assert asked == []
