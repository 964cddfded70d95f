"""The shim's own output: one-line messages on stderr, and a verb's result on stdout.

Each message is one line, as text (``imds-shim: LEVEL: message``, the default) or, with
``--log-format json``, one JSON object for a log pipeline: ``time`` (RFC 3339 UTC), ``level``,
``message``, ``mode``, and the fields the message carries in words (``role``, ``key_id`` masked,
``expires``, ``failures``, ...).

Not the ``logging`` module: the step-aside path must stay cheap, and nothing here needs handlers,
propagation or formatting configuration. Callers never pass secrets; key IDs go through
:func:`mask_key_id`.

Either stream may be closed when the shim starts (``imds-shim export >&-`` under a supervisor):
Python then has ``None`` for it. A closed stderr only silences the messages; the exit status still
tells. A closed stdout fails a verb whose whole point is its output.
"""

from __future__ import annotations

import os
import sys
import time

from shim.errors import ShimError

TYPE_CHECKING = False  # no typing import at run time: this is the step-aside path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Union

    Field = Union[str, int, float, None]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
LOG_FORMATS = ("text", "json")  # the first is the default
PIPE_BUF = 4096  # Linux: a write of at most this many bytes enters a pipe whole or not at all
DEFAULT_LEVEL = "warning"


class Logger:
    """Writes ``imds-shim: LEVEL: message`` lines (or JSON lines) to stderr at or above the
    configured level.

    Once a supervised command runs (:meth:`supervising`), every text line starts with an RFC 3339
    UTC timestamp (it may be read hours later; a JSON line always has its ``time``), and writing
    never blocks: a stalled log collector loses lines, and the supervisor goes on serving
    credentials.
    """

    def __init__(self) -> None:
        self.threshold = LEVELS[DEFAULT_LEVEL]
        self.timestamps = False
        self.json = False
        self.mode: str | None = None  # the verb or lifetime mode, a field of every JSON line
        self.write_line: Callable[[bytes], bool] | None = None
        self.descriptor: int | None = None  # what write_line writes to, when it is a descriptor of its own
        self.lost = 0

    def supervising(self) -> None:
        """From now on: timestamps, and writes that never wait for a full stderr."""
        self.timestamps = True
        self.write_line, self.descriptor = non_blocking_stderr()

    def set_level(self, level: str) -> None:
        self.threshold = LEVELS[level]

    def set_format(self, log_format: str) -> None:
        self.json = log_format == "json"

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def _emit(self, level: str, message: str, fields: dict[str, Field]) -> None:
        if not self.enabled(level) or sys.stderr is None:
            return
        lost = self.lost if self.write_line is not None else 0
        if self.json:
            line = self._json_line(level, message, fields, lost)
        else:
            line = f"imds-shim: {level}: {printable(message)}\n"
            if self.timestamps:
                line = time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + line
            if lost:
                line = f"{line[:-1]} ({lost} earlier lines lost: stderr was full)\n"
        if self.write_line is not None:
            self.lost = 0 if self.write_line(line.encode("utf-8", "replace")) else self.lost + 1
            return
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except OSError:  # a closed or broken pipe: nobody is listening
            pass

    def _json_line(self, level: str, message: str, fields: dict[str, Field], lost: int) -> str:
        """One JSON object a line; ASCII only, so no byte of a value can end or forge a line."""
        import json  # only when asked for: the text form is the step-aside path's

        now = time.time()
        record: dict[str, Field] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "level": level,
            "message": message,
            "program": "imds-shim",
            "mode": self.mode,
        }
        record.update(fields)
        if lost:
            record["lines_lost"] = lost
        return json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=True) + "\n"

    def debug(self, message: str, **fields: Field) -> None:
        self._emit("debug", message, fields)

    def info(self, message: str, **fields: Field) -> None:
        self._emit("info", message, fields)

    def warning(self, message: str, **fields: Field) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: Field) -> None:
        self._emit("error", message, fields)


log = Logger()


def non_blocking_stderr() -> tuple[Callable[[bytes], bool], int | None]:
    """A writer of whole lines to stderr that never blocks (it returns False for a line it lost),
    and the descriptor it writes to.

    ``O_NONBLOCK`` on descriptor 2 itself would change the command's stderr too (the flag belongs
    to the open file, which both share). A pipe or terminal is opened again through /proc, which
    gives this process an open file of its own; a socket is sent to with ``MSG_DONTWAIT``; a
    regular file never blocks. Where /proc will not open it (no /proc, or a pipe of another user's:
    ``gosu app imds-shim ...`` keeps root's pipe, and the reopen is checked against its owner),
    each write is made not to wait by itself: :func:`_each_write_nowait`.
    """
    import stat

    try:
        sys.stderr.flush()
        kind = os.fstat(2).st_mode
    except (OSError, ValueError, AttributeError):
        return (lambda line: False), None
    if stat.S_ISSOCK(kind):
        import socket

        stream = socket.socket(fileno=os.dup(2))
        return (
            lambda line: _sent(
                lambda: stream.send(line, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL), len(line)
            )
        ), stream.fileno()
    descriptor = 2
    if stat.S_ISFIFO(kind) or stat.S_ISCHR(kind):
        try:
            descriptor = os.open("/proc/self/fd/2", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return _each_write_nowait(2), 2
    return (lambda line: _sent(lambda: os.write(descriptor, line), len(line))), descriptor


def _each_write_nowait(descriptor: int) -> Callable[[bytes], bool]:
    """A writer to a descriptor whose open file must stay blocking: ``pwritev2(RWF_NOWAIT)``,
    which pipes honour on recent kernels (EAGAIN when full); else a write only when ``select``
    finds room, which for a pipe means a free page, so a line under 4 KiB goes in whole at once."""
    import errno
    import select

    nowait = [True]  # until the kernel says this file does not take RWF_NOWAIT

    def write(line: bytes) -> bool:
        line = line if len(line) <= PIPE_BUF else line[: PIPE_BUF - 1] + b"\n"
        if nowait[0]:
            try:
                return os.pwritev(descriptor, [line], -1, os.RWF_NOWAIT) == len(line)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ESPIPE):
                    return False  # full (EAGAIN), closed, or broken: the line is lost
                nowait[0] = False
        try:
            if not select.select([], [descriptor], [], 0)[1]:
                return False
        except (OSError, ValueError):
            return False
        return _sent(lambda: os.write(descriptor, line), len(line))

    return write


def _sent(send: Callable[[], int], length: int) -> bool:
    """Whether ``send`` wrote all ``length`` bytes (a line under 4 KiB enters a pipe whole, or not)."""
    try:
        return send() == length
    except OSError:  # full (EAGAIN), closed, or broken: the line is lost, nothing else is
        return False


def printable(text: str) -> str:
    """``text`` as one line: newlines, ESC, U+2028 and every other non-printable as escapes.

    Messages are built from checked values; this keeps a missed one from forging a line.
    """
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text
    )


def mask_key_id(key_id: str) -> str:
    """Show an access key ID as ``ASIA…WXYZ``: enough to tell keys apart, not enough to use one."""
    if len(key_id) <= 8:
        return "…"
    return f"{key_id[:4]}…{key_id[-4:]}"


def flush_standard_streams() -> bool:
    """Flush stdout and stderr (before exec or ``os._exit``); False if either refused."""
    flushed = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the descriptor was closed when the shim started
                stream.flush()
        except OSError:
            flushed = False
    return flushed


def write_stdout(output: str) -> None:
    """Write a verb's whole result to stdout, or raise :class:`ShimError` if stdout cannot take it.

    Always UTF-8, as the log lines are and as the bundle's Python (UTF-8 mode) writes whatever the
    locale: a masked key's "…" has no place in ISO-8859-15, and one behaviour everywhere matters
    more than a legacy terminal's encoding."""
    try:
        if sys.stdout is None:
            raise OSError("closed")
        sys.stdout.flush()
        sys.stdout.buffer.write(output.encode("utf-8"))
        sys.stdout.buffer.flush()
    except OSError as error:
        raise ShimError(f"cannot write the result to stdout ({error.strerror or error})") from None
