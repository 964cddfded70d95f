"""A process that keeps working for the command after the exec, and ends with it.

``--serve`` and ``--expiry-signal`` need something to go on running once the shim has become the
command. The shim forks just before it execs: the parent becomes the command (same PID, argv,
stdio, signals, as without a companion) and the child, the companion, is the command's child.

The companion ends when the command does. It asks the kernel for its parent's PID every
:data:`PARENT_CHECK_INTERVAL`: once the command has exited the companion has been handed to
another parent (init, a subreaper), and it leaves. No descriptor is shared with the command and
nothing in the command's environment is needed for this, so it works in every image.

It ignores the signals a terminal or a process-group kill sends (Ctrl-C, hang-up, SIGTERM to a
whole group): a command that shuts down gracefully on SIGTERM may still need credentials to do
so (a last upload), and the companion stays for as long as the command lives. SIGKILL still ends it.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Callable

from shim.log import log

if TYPE_CHECKING:
    import signal as signals
else:  # the C module: `signal` wraps it in enums, about half a millisecond at every start
    import _signal as signals

# How late, at most, a companion notices that the command is gone.
PARENT_CHECK_INTERVAL = 0.25
IGNORED_BY_COMPANIONS = (signals.SIGINT, signals.SIGTERM, signals.SIGHUP, signals.SIGQUIT, signals.SIGPIPE)


class Parent:
    """The command, as its companion sees it: alive while it is still the companion's parent."""

    def __init__(
        self, pid: int, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time
    ) -> None:
        self.pid, self.sleep, self.clock = pid, sleep, clock

    def alive(self) -> bool:
        return os.getppid() == self.pid

    def wait_until(self, moment: float) -> bool:
        """Sleep until ``moment`` (seconds since the epoch, as credentials expire); False as soon
        as the command is gone. The wall clock is read at every check, so a clock set while the
        command runs for days moves the moment with it."""
        while self.alive():
            left = moment - self.clock()
            if left <= 0:
                return True
            self.sleep(min(left, PARENT_CHECK_INTERVAL))
        return False


Companion = Callable[[Parent], None]


def start_companion(companion: Companion) -> None:
    """Fork; the child runs ``companion`` and exits, the caller returns at once (and execs).

    Call it right before the exec, with stdout and stderr flushed: a buffer not yet written
    would be written twice.
    """
    parent = os.getpid()
    if os.fork():
        return
    status = 0
    try:
        for signum in IGNORED_BY_COMPANIONS:
            signals.signal(signum, signals.SIG_IGN)
        _detach_from_standard_input_and_output()
        companion(Parent(parent))
    except BaseException as error:  # the companion's last word; it must never return into the shim
        log.error(f"internal error in the companion process: {type(error).__name__}")
        status = 1
    finally:
        os._exit(status)


def _detach_from_standard_input_and_output() -> None:
    """Give stdin and stdout back to the command alone: a reader of the command's output (``$(…)``,
    a pipe) sees its end when the command ends, not when the companion does. stderr stays, for
    the companion's warnings."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:  # an empty root without /dev: closing is enough
        for descriptor in (0, 1):
            with contextlib.suppress(OSError):  # already closed when the shim started
                os.close(descriptor)
        return
    for descriptor in (0, 1):
        os.dup2(null, descriptor)
    os.close(null)
