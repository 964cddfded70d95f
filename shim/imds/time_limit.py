"""A time limit on a blocking call, enforced with SIGALRM, that also lets pending signals through.

Used by the IMDS client (:mod:`shim.imds.client`) around every answer: the socket timeouts bound each
read, and this bounds the whole answer, so that a body trickling a byte at a time cannot hold
the container past ``--deadline``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import signal as signals
else:  # the C module: `signal` wraps it in enums, about half a millisecond at every start
    import _signal as signals

# How long, at most, a signal that arrived just before a blocking wait goes unhandled (see
# time_limit). Without the ticks, SIGTERM sent to the arm64 bundle (qemu-user, busy machine)
# while it waited on IMDS took the whole 30 s socket timeout in 3 of 40 stops; with them the
# slowest of 80 took 0.21 s. Natively the window is narrower, not closed.
SIGNAL_CHECK_INTERVAL = 0.25


class Overdue(BaseException):
    """An answer's time limit passed. Raised from SIGALRM, hence a ``BaseException``: no
    ``except Exception`` in requests or urllib3 may swallow it."""


def _next_tick(remaining: float) -> float:
    """When the timer fires next: at the next tick, or when the limit runs out if sooner."""
    return max(min(remaining, SIGNAL_CHECK_INTERVAL), 0.001)


class time_limit:
    """Interrupt what runs inside with :class:`Overdue` once ``seconds`` have passed.

    The timer also ticks every :data:`SIGNAL_CHECK_INTERVAL` until then. A signal that arrives
    between CPython's check for pending signals and the blocking ``poll()`` does not interrupt
    that poll, so its handler (SIGTERM's, say) would wait for the socket timeout; each tick ends
    the poll, and CPython runs the handlers that are due before it polls again.

    Only the main thread receives signals; elsewhere (a helper thread) the socket timeouts alone
    apply. The previous handler, any timer already running and the signal mask are put back
    afterwards, and no SIGALRM of ours is left pending: interval timers, masks and pending signals
    survive exec, and the command must inherit exactly what the shim inherited.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = threading.current_thread() is threading.main_thread()
        self.active = False

    def __enter__(self) -> None:
        if self.armed:
            self.previous = signals.signal(signals.SIGALRM, self._tick)
            self.started = time.monotonic()
            self.ends = self.started + self.seconds
            self.active = True
            self.inherited = signals.setitimer(signals.ITIMER_REAL, _next_tick(self.seconds))
            # A caller that blocks SIGALRM would stop every tick (and the limit with them) and
            # leave one pending for the command: unblocked while the limit holds, blocked again
            # after, with the caller's own pending one (if it had one) made pending again.
            self.unblocked = signals.SIGALRM in signals.pthread_sigmask(signals.SIG_BLOCK, ())
            if self.unblocked:
                self.was_pending = signals.SIGALRM in signals.sigpending()
                signals.pthread_sigmask(signals.SIG_UNBLOCK, (signals.SIGALRM,))

    def _tick(self, signum: int, frame: object) -> None:
        if not self.active:  # a tick that was already on its way when the limit was lifted
            return
        remaining = self.ends - time.monotonic()
        if remaining <= 0:
            raise Overdue
        signals.setitimer(signals.ITIMER_REAL, _next_tick(remaining))

    def __exit__(self, *exc_info: object) -> None:
        if not self.armed:
            return
        self.active = False  # first: a late tick must not arm the timer again
        signals.setitimer(signals.ITIMER_REAL, 0)
        if self.unblocked:  # no tick of ours can come any more, nor be left pending
            signals.pthread_sigmask(signals.SIG_BLOCK, (signals.SIGALRM,))
            if self.was_pending:
                os.kill(os.getpid(), signals.SIGALRM)
        signals.signal(signals.SIGALRM, signals.SIG_DFL if self.previous is None else self.previous)
        delay, interval = self.inherited
        if delay:
            delay = max(delay - (time.monotonic() - self.started), 0.001)
        signals.setitimer(signals.ITIMER_REAL, delay, interval)
