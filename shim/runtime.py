"""The environment this imds-shim was launched with, and where it runs from (package or bundle).

Python itself changes the environment before any of the shim's code runs: where the locale is C
or POSIX (the default in most containers), PEP 538's locale coercion sets ``LC_CTYPE=C.UTF-8``,
and a command exec'd with ``os.environ`` would inherit it. The kernel keeps the environment a
process was started with at ``/proc/self/environ``, untouched by ``setenv``, so that is read
instead.

The bundle (see ``bundle/``) is started by its launcher, ``imds-shim``, which runs PyInstaller's
bootloader (``imds-shim-python``) through the bundle's own loader and adds ``_PYI_*`` bookkeeping
variables to the environment. Started directly instead, the bootloader prepends its library
folder to ``LD_LIBRARY_PATH`` (keeping an original value in ``LD_LIBRARY_PATH_ORIG``) and execs
itself once more. A command exec'd with either environment would take itself for part of this
bundle, or load the bundle's libssl and libz instead of its own image's (``symbol lookup
error``). :func:`launch_environment` undoes all of it.

Imported on the step-aside path: nothing here may import more than ``os`` and ``sys``.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # no typing import at run time: this is the step-aside path
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

PROGRAM_NAME = "imds-shim"
FROZEN = bool(getattr(sys, "frozen", False))
LIBRARY_PATH = "LD_LIBRARY_PATH"
SAVED_LIBRARY_PATH = "LD_LIBRARY_PATH_ORIG"
BOOTLOADER_PREFIX = "_PYI_"
# Set by bundle/launcher.c, which has copies of these names.
SAVED_PREFIX = "_IMDS_SHIM_CALLER_"
INHERITED_SIG_IGN = "_IMDS_SHIM_INHERITED_SIG_IGN"


def inherited_ignored_signals() -> frozenset[int]:
    """The signals CPython ignores at start-up that were ignored before it started, where that can be
    known: the bundle's launcher looks before Python does. The pip-installed shim cannot tell."""
    listed = os.environ.get(INHERITED_SIG_IGN, "")
    return frozenset(int(number) for number in listed.split(",") if number.isdigit())


def started_with(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment as this process was started, before Python changed it (PEP 538).

    ``environ`` (``os.environ``) serves where ``/proc`` is not mounted. Names are kept in order,
    the first of two same names wins, as in ``os.environ``.
    """
    try:
        with open("/proc/self/environ", "rb") as initial:
            entries = initial.read().split(b"\0")
    except OSError:
        return dict(environ)
    environment: dict[str, str] = {}
    for entry in entries:
        name, has_value, value = entry.partition(b"=")
        if has_value and name:
            environment.setdefault(os.fsdecode(name), os.fsdecode(value))
    return environment


def launch_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment this imds-shim was started with, before Python or a bootloader touched it.

    Through the launcher, the caller's own loader and packager variables come renamed behind
    :data:`SAVED_PREFIX` (so that they did not reach this runtime): they get their names back, and
    what the launcher and the bootloader set goes. A bootloader started directly prepends its
    folder to ``LD_LIBRARY_PATH``; only when the value is exactly what it
    would have made is it undone, so a variable the user set is never lost. Then two cases are
    beyond repair, because the bootloader overwrote them before any Python ran: an empty
    ``LD_LIBRARY_PATH`` comes back unset (the same to the loader), and a user's own
    ``LD_LIBRARY_PATH_ORIG`` next to a set ``LD_LIBRARY_PATH`` is lost.
    """
    environment = started_with(environ)
    if not FROZEN:
        return environment
    if INHERITED_SIG_IGN in environment:  # through the launcher: see bundle/launcher.c
        restored = {}
        for name, value in environment.items():
            if name.startswith(SAVED_PREFIX):
                restored[name[len(SAVED_PREFIX) :]] = value
            elif not name.startswith(BOOTLOADER_PREFIX) and name != INHERITED_SIG_IGN:
                restored[name] = value
        return restored
    for name in [name for name in environment if name.startswith(BOOTLOADER_PREFIX)]:
        del environment[name]
    ours = str(getattr(sys, "_MEIPASS", ""))
    current, saved = environment.get(LIBRARY_PATH), environment.get(SAVED_LIBRARY_PATH)
    if current == ours:
        del environment[LIBRARY_PATH]
    elif saved is not None and current == f"{ours}:{saved}":
        environment[LIBRARY_PATH] = saved
        del environment[SAVED_LIBRARY_PATH]
    return environment


def this_program() -> list[str]:
    """How to run this same imds-shim again, by absolute path (for ``credential_process``)."""
    if FROZEN:
        # The launcher next to the bootloader: the bootloader alone needs the image's loader.
        launcher = os.path.join(os.path.dirname(sys.executable), PROGRAM_NAME)
        return [launcher if os.access(launcher, os.X_OK) else sys.executable]
    script = os.path.abspath(sys.argv[0])
    if os.path.basename(script) == "__main__.py" or not os.access(script, os.X_OK):
        return [sys.executable, "-m", "shim"]
    return [script]


def is_imds_shim(command: Sequence[str]) -> bool:
    """Whether ``command`` runs imds-shim itself (``docker run IMAGE imds-shim doctor``)."""
    return os.path.basename(command[0]) == PROGRAM_NAME


def as_this_program(command: Sequence[str]) -> list[str]:
    """A bare ``imds-shim`` command runs this same imds-shim, which need not be on PATH (the bundle
    in /opt/imds-shim); a path is left as the user wrote it."""
    return [*this_program(), *command[1:]] if command[0] == PROGRAM_NAME else list(command)
