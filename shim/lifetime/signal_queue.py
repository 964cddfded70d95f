"""The signals meant for the command, read from the kernel's queue through a ``signalfd``.

Why not handlers: a handler runs for every signal delivered, before the interrupted code goes on.
Under a storm of queued (real-time) signals from two busy senders, the kernel delivered the next
one as each handler returned, and the supervisor never ran again: its command stayed a zombie.
Blocked instead, signals wait in the kernel's queue, and the loop takes a bounded batch a turn
(the kernel hands out SIGCHLD and the other standard signals before real-time ones), forwards
them, reaps, and serves its descriptors, however long the storm lasts. tini and dumb-init do the
same with ``sigtimedwait``; a signalfd also wakes the loop's ``select``.

Each signal comes with who sent it: one the shim raised at itself (SIGPIPE or SIGXFSZ from a
failed write of its own to stderr) is the shim's, not the command's, and is not forwarded.
"""

from __future__ import annotations

import os
import struct

from shim.errors import ShimError

TYPE_CHECKING = False  # no typing import at run time: every supervised start loads this
if TYPE_CHECKING:
    from collections.abc import Iterable

SFD_NONBLOCK, SFD_CLOEXEC = 0o4000, 0o2000000
SI_USER = 0  # kill(2): si_pid is the sender
SIGINFO = struct.Struct("<IiiI")  # the head of struct signalfd_siginfo: signo, errno, code, pid
SIGINFO_SIZE = 128
BATCH = 512  # signals taken a turn, so that a storm cannot keep the loop from its other work


class SignalQueue:
    """``signals`` blocked in this thread, and a descriptor that is readable while any is pending."""

    def __init__(self, signals: Iterable[int]) -> None:
        import ctypes

        words = (ctypes.c_uint64 * 16)()  # sigset_t: bit N-1 for signal N
        for signum in signals:
            words[(signum - 1) // 64] |= 1 << ((signum - 1) % 64)
        try:
            signalfd = ctypes.CDLL(None, use_errno=True).signalfd
        except (OSError, AttributeError):
            raise ShimError("cannot supervise the command: this C library has no signalfd") from None
        descriptor = signalfd(-1, ctypes.byref(words), SFD_NONBLOCK | SFD_CLOEXEC)
        if descriptor < 0:
            number = ctypes.get_errno()
            raise ShimError(f"cannot supervise the command: signalfd failed ({os.strerror(number)})")
        self.descriptor = int(descriptor)

    def take(self) -> list[tuple[int, int, int]]:
        """Up to BATCH pending signals, oldest first: (number, code, sender's PID)."""
        try:
            data = os.read(self.descriptor, SIGINFO_SIZE * BATCH)
        except BlockingIOError:
            return []
        return [
            (signum, code, sender)
            for signum, _, code, sender in (
                SIGINFO.unpack_from(data, offset) for offset in range(0, len(data), SIGINFO_SIZE)
            )
        ]

    def close(self) -> None:
        os.close(self.descriptor)


def raised_by_the_shim_itself(code: int, sender: int) -> bool:
    """Whether a signal came from this very process: the kernel's SIGPIPE for a write to a pipe
    nobody reads, its SIGXFSZ for a file over RLIMIT_FSIZE, are sent as if by the writer."""
    return code == SI_USER and sender == os.getpid()
