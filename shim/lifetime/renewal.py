"""``--serve``'s renewals: a forked child fetches the next set when the store says it is due
(:mod:`shim.lifetime.store`), and a renewal that brought nothing new is tried again after a
backoff (:func:`retry_delay`), never hammering IMDS and never waiting past the set's expiry.
"""

from __future__ import annotations

import os
import time

from shim.credentials import format_duration, format_time
from shim.errors import ShimError
from shim.lifetime.child_fetch import read_outcome, start_fetch
from shim.lifetime.store import jitter
from shim.lifetime.supervisor import Service, Supervisor
from shim.log import log

TYPE_CHECKING = False  # no typing import at run time
if TYPE_CHECKING:
    from collections.abc import Callable

    from shim.command_line.config import Config
    from shim.credentials import Fetched
    from shim.lifetime.standing import Standing
    from shim.lifetime.store import CredentialStore

RETRY_BASE = 1.0
RETRY_CAP = 30.0
# A retry while the current set is still valid comes before half its remaining time is gone,
# but never sooner than this after the last.
RETRY_FLOOR = 1.0
# How long past --deadline a renewal child may take (its own deadline ends it first) before the
# supervisor kills it.
CHILD_GRACE = 5.0


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
            self._stop_child()
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

    def _stop_child(self) -> None:
        if self.child is not None and self.supervisor is not None:  # one was started: _start
            self.supervisor.stop_helper(self.child)
        if self.answer is not None and self.supervisor is not None:
            self.supervisor.unwatch(self.answer)
            os.close(self.answer)
        self.child, self.answer = None, None

    def close(self) -> None:
        self._stop_child()
