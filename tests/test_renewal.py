"""When credentials are renewed, and how --serve's renewals wait and report: a fake clock, no real sleeps."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Callable

import pytest
from helpers import FakeTime

from shim.command_line.config import Config
from shim.command_line.parse import parse_command_line
from shim.credentials import Credentials, Fetched
from shim.errors import ImdsUnreachable
from shim.lifetime import child_fetch
from shim.lifetime.renewal import Renewer, retry_delay
from shim.lifetime.standing import Standing
from shim.lifetime.store import CredentialStore, renewal_due

HOUR = 3600.0
ROLE = "the-role"


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
    """Due at expiry - min(15 min, lifetime / 2) (with a jitter of 0, for a long-lived set)."""
    assert renewal_due(1000.0 + lifetime, 1000.0, rng=lambda: 0.0) == 1000.0 + lifetime - before_expiry


def test_renewals_of_a_long_lived_set_spread_over_five_minutes() -> None:
    """Every container on a host holds the same set: a 6 h set is renewed between 20 and 15
    minutes before it expires, at a moment each supervisor draws for itself."""
    expires = 1000.0 + 6 * HOUR
    assert renewal_due(expires, 1000.0, rng=lambda: 0.0) == expires - 900.0
    assert renewal_due(expires, 1000.0, rng=lambda: 0.999) == pytest.approx(expires - 900.0 - 299.7)
    drawn = {renewal_due(expires, 1000.0) for _ in range(100)}
    assert len(drawn) > 90
    assert all(expires - 1200.0 <= due <= expires - 900.0 for due in drawn)
    # A set that lives less than 40 minutes keeps the one rule (the simulator's short sets).
    assert renewal_due(1000.0 + 2400.0, 1000.0) == 1000.0 + 2400.0 - 900.0


def test_retry_delays_grow_to_a_cap_and_stay_inside_the_sets_life() -> None:
    """1 s, 2 s, 4 s ... 30 s (times a jitter of 0.5-1), and at most half of what the set has left."""
    top = [retry_delay(failures, left=HOUR, rng=lambda: 1.0) for failures in range(1, 8)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert retry_delay(3, left=HOUR, rng=lambda: 0.0) == 2.0
    assert retry_delay(6, left=10.0, rng=lambda: 1.0) == 5.0
    assert retry_delay(6, left=0.1, rng=lambda: 1.0) == 1.0
    assert retry_delay(6, left=-5.0, rng=lambda: 1.0) == 30.0  # expired: the plain backoff


class LoopDriver:
    """The supervisor's loop in miniature: the fake clock jumps to each due moment, and a renewal
    "child" is a real pipe holding what a fetch child would have written (the real encoding)."""

    def __init__(
        self, answers: Sequence[Callable[[float], Credentials | Exception]], first_expiry: float
    ) -> None:
        self.time = FakeTime()
        self.answers = answers
        self.asked: list[float] = []
        self.watched: dict[int, Callable[[], None]] = {}
        first = credentials("AKIA0", first_expiry)
        self.store = CredentialStore(first, None, clock=self.time.clock, rng=lambda: 0.0)
        self.standing = Standing("--serve")
        self.standing.hold(ROLE, first)
        config = Config.from_settings(
            parse_command_line(["--serve", "--", "true"], {}).settings, in_pod=False
        )
        self.renewer = Renewer(
            self.store, self.standing, config, self.time.clock, lambda: 1.0, self.launch, self.time.clock
        )
        self.renewer.attach(self)  # type: ignore[arg-type]

    def watch(self, descriptor: int, handler: Callable[[], None]) -> None:
        self.watched[descriptor] = handler

    def unwatch(self, descriptor: int) -> None:
        del self.watched[descriptor]

    def adopt(self, pid: int, ended: Callable[[int], None]) -> None:
        pass

    def launch(self, work: Callable[[], Fetched]) -> tuple[int, int]:
        """The "child": a pipe holding what the real one would write (the same encoding)."""
        self.asked.append(self.time.now)
        answer = self.answers[min(len(self.asked), len(self.answers)) - 1](self.time.now)
        return _pipe_holding(child_fetch.outcome_of(lambda: _raise_or_fetched(answer)))

    def run_until(self, end: float) -> None:
        while self.time.now < end:
            wait = self.renewer.tick()
            if self.watched:  # a renewal's answer is there at once; then ask again at the same moment
                while self.watched:
                    next(iter(self.watched.values()))()
                continue
            if wait is None:
                return
            self.time.now = min(end, self.time.now + wait)


def _raise_or_fetched(answer: Credentials | Exception) -> Fetched:
    if isinstance(answer, Exception):
        raise answer
    return Fetched(answer, ROLE, None, None, 2, 2)


def test_a_healthy_imds_is_asked_once_per_set_at_the_due_moment() -> None:
    """Six-hour sets: renewed 15 minutes before each expiry, one request each."""
    fresh = [lambda now, n=n: credentials(f"AKIA{n}", now + 6 * HOUR) for n in range(1, 5)]
    loop = LoopDriver(fresh, first_expiry=6 * HOUR)
    loop.run_until(17 * HOUR)
    assert loop.asked == [6 * HOUR - 900, 12 * HOUR - 1800]
    assert loop.store.credentials is not None
    assert loop.store.credentials.access_key_id == "AKIA2"
    assert (loop.standing.renewed_at, loop.standing.failures) == (12 * HOUR - 1800, 0)


def test_imds_down_is_retried_with_backoff_and_the_set_served_meanwhile(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Failures back off 1, 2, 4 ... s, each saying what happened; the recovery shows at the default level."""
    calls = {"n": 0}

    def flaky(now: float) -> Credentials | Exception:
        calls["n"] += 1
        if calls["n"] <= 3:
            return ImdsUnreachable("IMDS stopped answering: the connection was refused", "refused")
        return credentials("AKIA1", now + 6 * HOUR)

    loop = LoopDriver([flaky], first_expiry=6 * HOUR)
    loop.run_until(7 * HOUR)
    due = 6 * HOUR - 900
    assert loop.asked == [due, due + 1, due + 3, due + 7]
    assert loop.store.credentials is not None
    assert loop.store.credentials.access_key_id == "AKIA1"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4, lines  # the default level: three failures and the recovery
    assert "renewal failed (1 in a row): IMDS stopped answering: the connection was refused" in lines[0]
    assert "serving the current set until it expires at" in lines[0]
    assert "EC2 instance" not in lines[0]
    assert "--optional" not in lines[0]
    assert "renewed again after 3 failed attempts" in lines[3]


def test_an_unrotated_set_is_asked_for_again_not_in_a_tight_loop() -> None:
    """IMDS still handing out the old set: retries at least 1 s apart, never a tight loop."""
    loop = LoopDriver([lambda now: credentials("AKIA0", 6 * HOUR)], first_expiry=6 * HOUR)
    loop.run_until(6 * HOUR + 60)
    gaps = [later - earlier for earlier, later in zip(loop.asked, loop.asked[1:])]
    assert all(gap >= 1.0 for gap in gaps)
    assert len(loop.asked) < 45  # in the 16 minutes from 15 before expiry to 1 after
    assert loop.store.answer() is None  # expired: the endpoint says so instead of serving it


def test_a_role_that_changes_at_renewal_is_a_warning_naming_both(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --expect-role, a new role is served, but never silently."""
    loop = LoopDriver([lambda now: credentials("AKIA1", now + 6 * HOUR)], first_expiry=6 * HOUR)
    loop.answers = [lambda now: credentials("AKIA1", now + 6 * HOUR)]
    loop.renewer.launch = lambda work: _launch_with_role(loop, "other-role")
    loop.run_until(6 * HOUR)
    err = capsys.readouterr().err
    assert f"role changed from {ROLE} to other-role" in err
    assert loop.standing.role == "other-role"


def _launch_with_role(loop: LoopDriver, role: str) -> tuple[int, int]:
    loop.asked.append(loop.time.now)
    fetched = Fetched(credentials("AKIA1", loop.time.now + 6 * HOUR), role, None, None, 2, 2)
    return _pipe_holding(child_fetch.outcome_of(lambda: fetched))


def _pipe_holding(data: bytes) -> tuple[int, int]:
    """A fake child's PID and a pipe to read that holds ``data`` and then ends."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return 0, read_end


class Stub:
    """The supervisor's side a Renewer talks to."""

    def __init__(self) -> None:
        self.watched: dict[int, Callable[[], None]] = {}
        self.children: dict[int, Callable[[int], None]] = {}

    def watch(self, descriptor: int, handler: Callable[[], None]) -> None:
        self.watched[descriptor] = handler

    def unwatch(self, descriptor: int) -> None:
        del self.watched[descriptor]

    def adopt(self, pid: int, ended: Callable[[int], None]) -> None:
        self.children[pid] = ended

    def stop_helper(self, pid: int) -> None:
        child_fetch.stop(pid)
        self.children.pop(pid, None)


def test_a_wall_clock_jump_during_a_renewal_kills_nothing() -> None:
    """NTP steps the clock an hour forward while a renewal child fetches: the child's overstay is
    measured on the monotonic clock, so it is neither killed nor counted as a failure."""
    wall, steady = FakeTime(), FakeTime()
    store = CredentialStore(credentials("AKIA0", 6 * HOUR), None, clock=wall.clock, rng=lambda: 0.0)
    standing = Standing("--serve")
    standing.hold(ROLE, store.credentials)  # type: ignore[arg-type]
    config = Config.from_settings(parse_command_line(["--serve", "--", "true"], {}).settings, in_pod=False)
    fetching = subprocess.Popen(["sleep", "60"])  # the "child": real, so a kill would show
    read_end, write_end = os.pipe()

    def launch(work: Callable[[], Fetched]) -> tuple[int, int]:
        return fetching.pid, read_end

    renewer = Renewer(store, standing, config, wall.clock, lambda: 1.0, launch, steady.clock)
    renewer.attach(Stub())  # type: ignore[arg-type]
    wall.now = store.due_at
    try:
        assert renewer.tick() == config.deadline + 5.0  # started; its overstay is due then
        wall.now += HOUR
        steady.now += 1.0
        assert renewer.tick() == pytest.approx(config.deadline + 5.0 - 1.0)
        assert fetching.poll() is None
        assert standing.failures == 0
    finally:
        os.close(write_end)
        fetching.kill()
        fetching.wait()
        renewer.close()


def test_a_renewal_childs_lost_lines_are_counted_once_by_the_parent() -> None:
    """The parent has lost 7 lines to a full stderr; its renewal child loses 3 of its own: the
    child starts from 0 and sends its 3 back, so the parent's next line reports 10 (not 7, and
    not the child's 10 on top of the parent's 7)."""
    from shim.log import log

    def work() -> Fetched:
        log.lost += 3  # three lines the child could not write
        return Fetched(credentials("AKIA1", 6 * HOUR), ROLE, None, None, 2, 2)

    before = log.lost
    log.lost = 7
    try:
        pid, answer = child_fetch.start_fetch(work)
        data = b""
        while chunk := os.read(answer, 65536):
            data += chunk
        os.close(answer)
        os.waitpid(pid, 0)
        child_fetch.read_outcome(data)
        assert log.lost == 10
    finally:
        log.lost = before
