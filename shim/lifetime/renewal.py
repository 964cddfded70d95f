"""When a set of credentials is due for renewal, and how long to wait after a renewal that failed.

One rule for ``--serve`` (when the endpoint fetches a new set) and ``--expiry-signal`` (when the
command is told to restart): renew once less than min(15 minutes, half the set's lifetime) is left.
IMDS offers a new set at least five minutes before the old one expires (typically much earlier);
15 minutes is also when botocore starts refreshing. Half the lifetime keeps short-lived sets (the
simulator's, seconds long) renewing before they run out.

Every container on an instance holds the same set, so all their supervisors would renew at the
same second: where the set lives long enough (hours, as IMDS's do), each renews at a random moment
in the :data:`RENEW_SPREAD` before that, spreading a host's renewals over five minutes instead of
sending them through IMDS's shared packet allowance at once.
"""

from __future__ import annotations

import os
import time

from shim.credentials import format_duration, format_time
from shim.errors import ShimError
from shim.lifetime.child_fetch import read_outcome, start_fetch
from shim.lifetime.supervisor import Service, Supervisor
from shim.log import log

TYPE_CHECKING = False  # no typing import at run time
if TYPE_CHECKING:
    from collections.abc import Callable

    from shim.command_line.config import Config
    from shim.credentials import Fetched
    from shim.lifetime.endpoint import CredentialStore
    from shim.lifetime.standing import Standing

RENEW_BEFORE = 15 * 60.0
RENEW_SPREAD = 5 * 60.0
RETRY_BASE = 1.0
RETRY_CAP = 30.0
# A retry while the current set is still valid comes before half its remaining time is gone,
# but never sooner than this after the last.
RETRY_FLOOR = 1.0
# How long past --deadline a renewal child may take (its own deadline ends it first) before the
# supervisor kills it.
CHILD_GRACE = 5.0


def jitter() -> float:
    """A random fraction in [0, 1), from the OS: ``random`` would load hashlib at every start."""
    return int.from_bytes(os.urandom(4), "big") / 2**32


def renewal_due(expires_at: float, obtained_at: float, rng: Callable[[], float] = jitter) -> float:
    """The moment (seconds since the epoch) a set obtained at ``obtained_at`` should be replaced:
    min(15 minutes, half its lifetime) before it expires, and for a set that lives more than
    twice (15 + 5) minutes, up to :data:`RENEW_SPREAD` earlier, at random."""
    lifetime = max(expires_at - obtained_at, 0.0)
    if lifetime > 2 * (RENEW_BEFORE + RENEW_SPREAD):
        return expires_at - RENEW_BEFORE - RENEW_SPREAD * rng()
    return expires_at - min(RENEW_BEFORE, lifetime / 2)


def retry_delay(failures: int, left: float, rng: Callable[[], float] = jitter) -> float:
    """Seconds to wait after the ``failures``-th renewal in a row that brought nothing new.

    Exponential from 1 s to 30 s with jitter (many containers on one host renew at the same
    moment), and while the current set is valid, at most half of the ``left`` seconds it has.
    """
    delay = min(RETRY_CAP, RETRY_BASE * 2.0 ** (failures - 1)) * (0.5 + rng() / 2)
    if left > 0:
        delay = min(delay, max(left / 2, RETRY_FLOOR))
    return delay


class Renewer(Service):
    """``--serve``'s renewals: a fetch in a forked child when the set is due, read without blocking.

    The loop never waits for IMDS: the child fetches under ``--deadline`` of its own, and is killed
    if it overstays it, or when the command ends. A failed renewal, or one that brings no newer set
    (IMDS has not rotated yet), is tried again after :func:`retry_delay`; the cached set is served
    meanwhile, never past its expiry.

    Two clocks: wall time (``clock``) for what an expiry decides (the due moment, the time left),
    monotonic time (``monotonic``) for every duration it measures itself (a child's overstay, the
    wait before a retry), so that NTP stepping a freshly booted instance's clock neither kills a
    healthy renewal nor postpones a retry.
    """

    def __init__(
        self,
        store: CredentialStore,
        standing: Standing,
        config: Config,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = jitter,
        launch: Callable[[Callable[[], Fetched]], tuple[int, int]] = start_fetch,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.standing, self.config, self.clock, self.rng = store, standing, config, clock, rng
        self.launch, self.monotonic = launch, monotonic
        self.next_try = store.due_at  # wall time: when the set is due
        self.retry_at: float | None = None  # monotonic: when a retry is due, which then governs
        if store.credentials is None:  # --optional, IMDS down at the start: its failure was the first
            self.retry_at = monotonic() + retry_delay(max(standing.failures, 1), 0.0, rng)
        self.supervisor: Supervisor | None = None
        self.child: int | None = None
        self.answer: int | None = None
        self.received = b""
        self.started_at = 0.0
        self.unrotated = 0  # renewals in a row that brought the set already held

    def attach(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def tick(self) -> float | None:
        if self.child is not None:
            overdue = self.started_at + self.config.deadline + CHILD_GRACE - self.monotonic()
            if overdue > 0:
                return overdue
            self._kill_child()
            self._failed("the renewal overstayed --deadline")
        retrying = self.retry_at is not None
        wait = (self.retry_at or 0.0) - self.monotonic() if retrying else self.next_try - self.clock()
        if wait <= 0:
            self._start()
            return self.config.deadline + CHILD_GRACE
        return wait

    def _start(self) -> None:
        assert self.supervisor is not None
        config = self.config

        def renew() -> Fetched:
            from shim.imds.fetch import fresh_credentials

            return fresh_credentials(config)

        try:
            self.child, self.answer = self.launch(renew)
        except ShimError as error:  # no process to fetch with, for now
            self._failed(str(error))
            return
        self.received, self.started_at, self.retry_at = b"", self.monotonic(), None
        self.supervisor.adopt(self.child, lambda status: None)
        self.supervisor.watch(self.answer, self._on_answer)

    def _on_answer(self) -> None:
        assert self.answer is not None
        assert self.supervisor is not None
        try:
            chunk = os.read(self.answer, 65536)
        except BlockingIOError:
            return
        if chunk:
            self.received += chunk
            return
        self.supervisor.unwatch(self.answer)
        os.close(self.answer)
        self.answer, self.child = None, None
        try:
            fresh = read_outcome(self.received)
        except ShimError as error:  # IMDS down, busy, garbled, the role gone: try again later
            self._failed(str(error))
            return
        self._renewed(fresh)

    def _renewed(self, fresh: Fetched) -> None:
        store, standing = self.store, self.standing
        if standing.role is not None and fresh.role != standing.role:
            log.warning(
                f"--serve: the instance's role changed from {standing.role} to {fresh.role}; "
                f"serving {fresh.role}'s credentials from now on (--expect-role NAME refuses that)",
                role=fresh.role,
                previous_role=standing.role,
            )
        if store.credentials is not None and fresh.credentials.expiration <= store.credentials.expiration:
            # IMDS has not rotated yet: no failure, but asked again with the same backoff.
            self.unrotated += 1
            self.retry_at = self.monotonic() + retry_delay(
                self.unrotated, store.expires_at - self.clock(), self.rng
            )
            return
        self.unrotated = 0
        store.replace(fresh.credentials)
        standing.hold(fresh.role, fresh.credentials)
        standing.renewed_at = self.clock()
        message = (
            f"{fresh.credentials.masked_key_id} expires at {format_time(fresh.credentials.expiration)}, "
            f"renewing again in {format_duration(store.due_at - self.clock())}"
        )
        fields: dict[str, str | int | None] = {
            "role": fresh.role,
            "key_id": fresh.credentials.masked_key_id,
            "expires": format_time(fresh.credentials.expiration),
            "failures": standing.failures,
        }
        if standing.failures:
            log.warning(
                f"--serve: renewed again after {standing.failures} failed attempts: {message}", **fields
            )
        else:
            log.info(f"--serve: renewed: {message}", **fields)
        standing.failures, standing.last_error, standing.note = 0, None, None
        self.next_try = store.due_at

    def _failed(self, reason: str) -> None:
        standing, store = self.standing, self.store
        standing.failures += 1
        standing.last_error = reason
        left = store.expires_at - self.clock()
        if left > 0 and store.credentials is not None:
            serving = (
                f"serving the current set until it expires at "
                f"{format_time(store.credentials.expiration)} (in {format_duration(left)})"
            )
        else:
            serving = "no valid credentials to serve until IMDS answers (the endpoint answers 503)"
        log.warning(
            f"--serve: renewal failed ({standing.failures} in a row): {reason}; {serving}",
            role=standing.role,
            failures=standing.failures,
            expires=None if store.credentials is None else format_time(store.credentials.expiration),
        )
        self.retry_at = self.monotonic() + retry_delay(standing.failures, left, self.rng)

    def _kill_child(self) -> None:
        if self.child is not None:
            try:
                os.kill(self.child, 9)
                os.waitpid(self.child, 0)  # SIGKILL takes a moment; nothing of ours may outlive the shim
            except ChildProcessError:  # already reaped by the supervisor's loop
                pass
            except ProcessLookupError:
                pass
            if self.supervisor is not None:
                self.supervisor.children.pop(self.child, None)
        if self.answer is not None and self.supervisor is not None:
            self.supervisor.unwatch(self.answer)
            os.close(self.answer)
        self.child, self.answer = None, None

    def close(self) -> None:
        self._kill_child()
