"""Replace the shim with the command: same PID, argv untouched, the shim's own traces removed.

``os.exec*`` keeps ignored signal dispositions and the signal mask, and does not flush Python's
stdio buffers. CPython ignores SIGPIPE and SIGXFSZ at start-up and installs its own SIGINT handler,
so a naive exec would hand the command a SIGPIPE that is ignored (``yes | head`` never ends). The
command must inherit exactly what the shim inherited.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

from shim.errors import CommandNotExecutable, CommandNotFound, Interrupted

INTERRUPTING_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# CPython sets these to SIG_IGN before any Python code runs, whatever it inherited.
PYTHON_IGNORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` while the shim works.

    As PID 1 a process has no default action for these signals, so without handlers ``docker
    stop`` would wait out its grace period. A signal the shim inherited as ignored stays ignored.
    """
    previous = {signum: signal.getsignal(signum) for signum in INTERRUPTING_SIGNALS}
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler != signal.SIG_IGN:
                signal.signal(signum, handler)


def restore_inherited_dispositions() -> None:
    """Undo what CPython did to signal dispositions at start-up."""
    for signum in PYTHON_IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    # CPython installs default_int_handler only where SIGINT was inherited as SIG_DFL.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def replace_process(command: Sequence[str], environ: Mapping[str, str]) -> NoReturn:
    """``execvp`` the command with ``environ``; raise if it cannot be found or executed."""
    sys.stdout.flush()
    sys.stderr.flush()
    restore_inherited_dispositions()
    name = command[0]
    try:
        os.execvpe(name, list(command), dict(environ))
    except (FileNotFoundError, NotADirectoryError):
        raise CommandNotFound(f"{name!r}: command not found") from None
    except PermissionError:
        raise CommandNotExecutable(f"{name!r}: permission denied (not executable?)") from None
    except OSError as error:
        raise CommandNotExecutable(f"{name!r}: cannot execute: {error.strerror}") from None
