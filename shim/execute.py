"""Replace the shim with the command: same PID, argv untouched, the shim's own traces removed.

``os.exec*`` keeps ignored signal dispositions and the signal mask, and does not flush Python's
stdio buffers. CPython ignores SIGPIPE and SIGXFSZ at start-up and installs its own SIGINT handler,
so a naive exec would hand the command a SIGPIPE that is ignored (``yes | head`` never ends). The
command must inherit exactly what the shim inherited.
"""

from __future__ import annotations

import errno
import os
import stat

from shim.command_line.values import shown
from shim.errors import CommandNotExecutable, CommandNotFound, Interrupted, ShimError
from shim.log import flush_standard_streams
from shim.runtime import inherited_ignored_signals

TYPE_CHECKING = False  # no typing import at run time: this is the step-aside path
if TYPE_CHECKING:
    import signal as signals
    from collections.abc import Mapping, Sequence
    from types import FrameType, TracebackType
    from typing import NoReturn
else:
    try:
        # The C module: `signal` wraps the same functions in enums, which costs ~6 ms at every
        # container start.
        import _signal as signals
    except ImportError:  # not CPython
        import signal as signals

INTERRUPTING_SIGNALS = (signals.SIGTERM, signals.SIGINT)
# CPython sets these to SIG_IGN before any Python code runs, whatever it inherited.
PYTHON_IGNORED_SIGNALS = tuple(
    getattr(signals, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signals, name)
)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


class interruptible:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` while the shim works.

    As PID 1 a process has no default action for these signals, so without handlers ``docker
    stop`` would wait out its grace period. A signal the shim inherited as ignored stays ignored.
    """

    def __enter__(self) -> None:
        self.previous = {signum: signals.getsignal(signum) for signum in INTERRUPTING_SIGNALS}
        for signum, handler in self.previous.items():
            if handler != signals.SIG_IGN:
                signals.signal(signum, _interrupt)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for signum, handler in self.previous.items():
            if handler != signals.SIG_IGN:
                signals.signal(signum, handler)


def restore_inherited_dispositions() -> None:
    """Undo what CPython did to signal dispositions at start-up.

    SIGPIPE and SIGXFSZ go back to the default unless they were ignored before Python started,
    which only the bundle's launcher can see; the pip-installed shim gives them the default.
    """
    already_ignored = inherited_ignored_signals()
    for signum in PYTHON_IGNORED_SIGNALS:
        if signum not in already_ignored:
            signals.signal(signum, signals.SIG_DFL)
    # CPython installs default_int_handler only where SIGINT was inherited as SIG_DFL.
    if signals.getsignal(signals.SIGINT) is signals.default_int_handler:
        signals.signal(signals.SIGINT, signals.SIG_DFL)


def locate(name: str, environ: Mapping[str, str]) -> str:
    """The file that command ``name`` runs, found on PATH the way shells find it.

    Unlike ``os.execvpe``, a folder on PATH that we may not enter is skipped, not reported: else a
    command that exists nowhere would be "not executable" (126) for one user and "not found"
    (127) for another. A file found but not executable is 126, as in shells.
    """
    if "/" in name:
        return name
    failure: OSError | None = None
    for folder in os.get_exec_path(environ):
        candidate = os.path.join(folder, name)
        try:
            is_file = stat.S_ISREG(os.stat(candidate).st_mode)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # not here, or the folder is closed to us
        except OSError as error:  # a name too long, a loop of symlinks
            failure = failure or error
            continue
        if is_file and os.access(candidate, os.X_OK):
            return candidate
        failure = failure or PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    raise command_error(name, failure or FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))


def command_error(name: str, error: OSError) -> ShimError:
    """The shim's error (127 or 126) for an ``OSError`` from running command ``name``."""
    if isinstance(error, (FileNotFoundError, NotADirectoryError)):
        return CommandNotFound(f"{shown(name)}: command not found")
    if isinstance(error, PermissionError):
        return CommandNotExecutable(f"{shown(name)}: permission denied (not executable?)")
    return CommandNotExecutable(f"{shown(name)}: cannot execute: {error.strerror}")


def replace_process(command: Sequence[str], environ: Mapping[str, str]) -> NoReturn:
    """Exec the command with ``environ``; raise if it cannot be found or executed."""
    flush_standard_streams()  # a broken pipe is the command's to find out about, not the shim's
    restore_inherited_dispositions()
    path = locate(command[0], environ)
    try:
        os.execve(path, list(command), dict(environ))
    except OSError as error:
        raise command_error(command[0], error) from None
