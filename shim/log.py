"""The shim's own output: one-line messages on stderr, and a verb's result on stdout.

Not the ``logging`` module: the step-aside path must stay cheap, and nothing here needs handlers,
propagation or formatting configuration. Callers never pass secrets; key IDs go through
:func:`mask_key_id`.

Either stream may be closed when the shim starts (``imds-shim export >&-`` under a supervisor):
Python then has ``None`` for it. A closed stderr only silences the messages; the exit status still
tells. A closed stdout fails a verb whose whole point is its output.
"""

from __future__ import annotations

import sys

from shim.errors import ShimError

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
DEFAULT_LEVEL = "warning"


class Logger:
    """Writes ``imds-shim: LEVEL: message`` lines to stderr at or above the configured level."""

    def __init__(self) -> None:
        self.threshold = LEVELS[DEFAULT_LEVEL]

    def set_level(self, level: str) -> None:
        self.threshold = LEVELS[level]

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def _emit(self, level: str, message: str) -> None:
        if self.enabled(level) and sys.stderr is not None:
            try:
                sys.stderr.write(f"imds-shim: {level}: {printable(message)}\n")
                sys.stderr.flush()
            except OSError:  # a closed or broken pipe: nobody is listening
                pass

    def debug(self, message: str) -> None:
        self._emit("debug", message)

    def info(self, message: str) -> None:
        self._emit("info", message)

    def warning(self, message: str) -> None:
        self._emit("warning", message)

    def error(self, message: str) -> None:
        self._emit("error", message)


log = Logger()


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
    """Write a verb's whole result to stdout, or raise :class:`ShimError` if stdout cannot take it."""
    try:
        if sys.stdout is None:
            raise OSError("closed")
        sys.stdout.write(output)
        sys.stdout.flush()
    except OSError as error:
        raise ShimError(f"cannot write the result to stdout ({error.strerror or error})") from None
