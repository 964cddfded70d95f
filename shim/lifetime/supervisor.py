"""The supervisor: the command as the shim's child, and one loop that does an init's duties.

Read from tini, dumb-init and catatonit, and kept to what a container needs:

- **forwarding**: every signal a command can catch, sent to the shim, is sent on to the command
  once (not the synchronous ones a fault raises, nor SIGTTIN and SIGTTOU, which the shim ignores
  for itself so that it is never stopped for writing to a terminal). SIGPIPE and SIGXFSZ too:
  CPython ignores them at start, but the command runs with them at their defaults; the ones the
  shim's own failed writes raise stay the shim's (sockets send with ``MSG_NOSIGNAL``);
- **reaping**: every child that ends is waited for, so orphans handed to the shim as PID 1 never
  stay zombies;
- **signal state**: the command gets the dispositions and mask the shim inherited, as an exec
  would have given them;
- **terminals**: the command leads its own process group and, when the shim held the terminal,
  becomes its foreground group, so Ctrl-C and job control reach it (once: the shim is not in that
  group);
- **dying together**: the command gets SIGKILL if the shim dies (``PR_SET_PDEATHSIG``, checked
  after the fork); as PID 1 the kernel does that for the whole namespace anyway;
- **exit status**: the command's own code, or 128+N when signal N killed it.

Signals for the command are blocked in the shim and read from a signalfd
(:mod:`shim.lifetime.signal_queue`), so the loop waits in one ``select`` on that descriptor and on
every descriptor of the services, with the time to the services' next due moment as its timeout,
and no storm of signals can keep it from reaping. A signal is only ever sent to the command while
it has not been waited for: until then its PID cannot be given to another process.
"""

from __future__ import annotations

import errno
import gc
import os
import selectors

from shim.command_line.exit_codes import SIGNAL_BASE
from shim.errors import ShimError, raised_at
from shim.execute import PYTHON_IGNORED_SIGNALS, command_error, restore_inherited_dispositions
from shim.lifetime.child_fetch import fork_or_fail, stop
from shim.lifetime.signal_queue import SignalQueue, raised_by_the_shim_itself
from shim.log import flush_standard_streams, log
from shim.runtime import inherited_ignored_signals

TYPE_CHECKING = False  # no typing import at run time: every supervised start loads this
if TYPE_CHECKING:
    import signal as signals
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import NoReturn

    Handler = Callable[[], None]
else:  # the C module: `signal` wraps it in enums
    import _signal as signals

# Raised by a fault in the process itself: forwarding them would be meaningless.
SYNCHRONOUS = frozenset(
    getattr(signals, name)
    for name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGTRAP", "SIGSYS")
    if hasattr(signals, name)
)
UNCATCHABLE = frozenset({signals.SIGKILL, signals.SIGSTOP})
# Ignored by the shim, which never reads the terminal and must not be stopped for writing to it.
IGNORED_BY_THE_SHIM = (signals.SIGTTIN, signals.SIGTTOU)
PR_SET_PDEATHSIG = 1


class Service:
    """Something the supervisor runs beside the command: descriptors to watch, and due moments."""

    def attach(self, supervisor: Supervisor) -> None:
        """Register descriptors (:meth:`Supervisor.watch`); called before the command starts."""

    def tick(self) -> float | None:
        """Do what is due now; return the seconds until something is due next (None: nothing)."""
        return None

    def command_started(self, pid: int) -> None:
        """The command runs as ``pid``."""

    def close(self) -> None:
        """The command has ended: stop at once (close sockets, kill helpers)."""


class Supervisor:
    """The loop: the command's life, the signals for it, and the services beside it."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = list(services)
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, Callable[[int], None]] = {}  # helper PID -> told its wait status
        self.command_pid: int | None = None
        self.command_status: int | None = None

    def watch(self, descriptor: int, handler: Handler, writable: bool = False) -> None:
        """Call ``handler`` when ``descriptor`` is readable (``writable``: when it is writable,
        as a socket whose connection has been made)."""
        self.selector.register(
            descriptor, selectors.EVENT_WRITE if writable else selectors.EVENT_READ, handler
        )

    def unwatch(self, descriptor: int) -> None:
        self.selector.unregister(descriptor)

    def adopt(self, pid: int, ended: Callable[[int], None]) -> None:
        """A helper process of a service's: ``ended`` gets its wait status once it has been reaped."""
        self.children[pid] = ended

    def stop_helper(self, pid: int) -> None:
        """End a helper before its time (its ``ended`` is not called: the service knows why)."""
        stop(pid)
        self.children.pop(pid, None)

    def signal_command(self, signum: int) -> bool:
        """Send ``signum`` to the command; False once it has ended (its PID may be another's now)."""
        if self.command_pid is None or self.command_status is not None:
            return False
        try:
            os.kill(self.command_pid, signum)
        except ProcessLookupError:
            return False
        return True

    def run(
        self, path: str, argv: Sequence[str], environ: Mapping[str, str], placeholders: Sequence[int] = ()
    ) -> int:
        """Start the command and supervise it until it ends; its exit status, as a shell tells it."""
        inherited, taken = take_signals()
        started_with = signals.pthread_sigmask(signals.SIG_BLOCK, taken)
        queue = SignalQueue(taken)
        self.watch(queue.descriptor, lambda: self._on_signals(queue))
        self._reap()  # the first fetch's child, if it ended before SIGCHLD was ours to hear
        try:
            for service in self.services:
                service.attach(self)
            self.command_pid = start_command(path, argv, environ, inherited, started_with)
            # The shim reads what it takes from its queue; the rest it must feel, whatever mask it
            # was started with (a fault's signal, say).
            signals.pthread_sigmask(signals.SIG_SETMASK, taken)
            for service in self.services:
                service.command_started(self.command_pid)
            detach_standard_input_and_output(placeholders)
            log.supervising()
            # Everything made so far lives as long as the shim: out of the collector's way, so
            # that a collection in the loop looks only at what the loop itself makes.
            gc.freeze()
            while self.command_status is None:
                ticks = (self._guarded(service.tick) for service in self.services)
                waits = [wait for wait in ticks if wait is not None]
                for key, _ in self.selector.select(max(0.0, min(waits)) if waits else None):
                    self._guarded(key.data)
                    if self.command_status is not None:
                        break
        finally:
            for service in self.services:
                service.close()
            self._reap()  # helpers the services just killed
            queue.close()
        return self.command_status

    @staticmethod
    def _guarded(step: Callable[[], float | None]) -> float | None:
        """Run one step of a service; a bug in it is reported and the loop goes on, because
        leaving the loop would end the command's supervision while the command runs."""
        try:
            return step()
        except Exception as error:  # only the type and place: a message could quote a value
            log.error(
                f"internal error {type(error).__name__} at {raised_at(error)} in the supervisor; carrying on"
            )
            return None

    def _on_signals(self, queue: SignalQueue) -> None:
        """Forward what arrived, then reap (a batch a turn: see :mod:`shim.lifetime.signal_queue`)."""
        for signum, code, sender in queue.take():
            if signum != signals.SIGCHLD and not raised_by_the_shim_itself(code, sender):
                self.signal_command(signum)
        self._reap()

    def _reap(self) -> None:
        """Wait for every child that has ended: the command, a helper, or an orphan handed to PID 1."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.command_pid:
                code = os.waitstatus_to_exitcode(status)
                self.command_status = code if code >= 0 else SIGNAL_BASE - code
            elif pid in self.children:
                self.children.pop(pid)(status)


def _noop(signum: int, frame: object) -> None:
    """The Python-level handler of a signal the shim takes: blocked, it never runs, but SIGCHLD
    must not stay ignored (the kernel would reap the command itself), and installing one tells
    the signals a process may take from the few glibc keeps for itself."""


def take_signals() -> tuple[dict[int, object], set[int]]:
    """Take every forwardable signal (and SIGCHLD) from the shim's handlers: what each was before,
    for the command, and the set to block and read from the signal queue.

    A signal the shim inherited as ignored stays ignored, and is not forwarded: the command would
    have inherited it ignored from an exec too. SIGCHLD is always handled (an inherited ignore would
    make the kernel reap the command before its status could be read) and given back in the child.
    SIGPIPE and SIGXFSZ count as ignored only if they were before Python started.
    """
    previous: dict[int, object] = {}
    taken: set[int] = set()
    inherited_ignored = inherited_ignored_signals()
    for signum in sorted(signals.valid_signals()):
        if signum in SYNCHRONOUS or signum in UNCATCHABLE:
            continue
        before = signals.getsignal(signum)
        if signum in PYTHON_IGNORED_SIGNALS and signum not in inherited_ignored:
            before = signals.SIG_DFL  # CPython's ignore, not the one the shim was started with
        if before == signals.SIG_IGN and signum != signals.SIGCHLD:
            continue
        handler = signals.SIG_IGN if signum in IGNORED_BY_THE_SHIM else _noop
        try:
            signals.signal(signum, handler)
        except (OSError, ValueError):  # glibc's own 32 and 33
            continue
        previous[signum] = signals.SIG_DFL if before is None else before
        if handler is _noop:
            taken.add(signum)
    return previous, taken


def start_command(
    path: str,
    argv: Sequence[str],
    environ: Mapping[str, str],
    inherited: Mapping[int, object],
    mask: Iterable[int],
) -> int:
    """Fork and exec the command with the signal ``mask`` the shim was started with; its PID. An
    exec that fails is reported over a close-on-exec pipe and raised here as 126 or 127; a fork
    that fails is the shim's own error (125)."""
    report_read, report_write = os.pipe()  # both close-on-exec
    # Blocked across the fork, so that no handler of the shim's runs in the child before exec.
    held = signals.pthread_sigmask(signals.SIG_BLOCK, signals.valid_signals())
    flush_standard_streams()
    try:
        pid = fork_or_fail()
    except ShimError:
        signals.pthread_sigmask(signals.SIG_SETMASK, held)
        os.close(report_read)
        os.close(report_write)
        raise
    if pid == 0:
        _become_command(path, argv, environ, inherited, mask, report_write)
    signals.pthread_sigmask(signals.SIG_SETMASK, held)
    os.close(report_write)
    report = b""
    while chunk := _read_retrying(report_read):
        report += chunk
    os.close(report_read)
    if report:
        os.waitpid(pid, 0)
        number = int(report) if report.isdigit() else errno.ENOEXEC
        raise command_error(argv[0], OSError(number, os.strerror(number)))
    return pid


def _read_retrying(descriptor: int) -> bytes:
    while True:
        try:
            return os.read(descriptor, 64)
        except InterruptedError:
            continue


def _become_command(
    path: str,
    argv: Sequence[str],
    environ: Mapping[str, str],
    inherited: Mapping[int, object],
    mask: Iterable[int],
    report: int,
) -> NoReturn:
    """In the child: the signal state an exec would have had, its own group, the terminal, exec."""
    number = 0
    try:
        shim_pid, shim_group = os.getppid(), os.getpgid(os.getppid())
        for signum, disposition in inherited.items():
            signals.signal(signum, disposition)  # type: ignore[arg-type]
        restore_inherited_dispositions()
        os.setpgid(0, 0)
        _take_the_terminal(shim_group)
        if shim_pid != 1:  # as PID 1, the kernel ends the whole namespace with the shim
            _die_with(shim_pid)
        signals.pthread_sigmask(signals.SIG_SETMASK, mask)
        os.execve(path, list(argv), dict(environ))
    except OSError as error:
        number = error.errno or errno.ENOEXEC
    except BaseException:
        number = errno.ENOEXEC
    try:
        os.write(report, str(number).encode())
    finally:
        os._exit(127)


def _take_the_terminal(shim_group: int) -> None:
    """Make the command's group the terminal's foreground group, if the shim's was (tini does the
    same): a shell started as the command then has job control, and Ctrl-C goes to it alone."""
    try:
        if os.tcgetpgrp(0) != shim_group:
            return  # no terminal, or the shim runs in the background: not ours to take
        before = signals.signal(signals.SIGTTOU, signals.SIG_IGN)
        try:
            os.tcsetpgrp(0, os.getpid())
        finally:
            signals.signal(signals.SIGTTOU, before)
    except OSError:
        pass


_prctl: Callable[..., int] | None = None


def load_prctl() -> None:
    """Load ``prctl`` through ctypes in the shim, while the first fetch runs, so that the command's
    child does not spend the import between its fork and its exec."""
    global _prctl
    try:
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):  # no ctypes or no prctl: not Linux
        _prctl = None


def _die_with(shim_pid: int) -> None:
    """SIGKILL for the command when the shim dies, so it never runs on with nobody serving it."""
    if _prctl is None:
        load_prctl()
    if _prctl is None:
        return
    _prctl(PR_SET_PDEATHSIG, signals.SIGKILL, 0, 0, 0)
    if os.getppid() != shim_pid:  # the shim died before the request took effect
        os._exit(SIGNAL_BASE + signals.SIGKILL)


def hold_standard_descriptors() -> list[int]:
    """Fill descriptors 0-2 that were closed at start with close-on-exec placeholders.

    Otherwise the next socket or pipe would be given number 0 or 1, where anything aimed at stdin
    or stdout (a dup2 of /dev/null) would destroy it. Close-on-exec, so the command still finds them
    closed, as an exec would have left them.
    """
    held: list[int] = []
    while True:
        descriptor = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if descriptor > 2:
            os.close(descriptor)
            return held
        held.append(descriptor)


def detach_standard_input_and_output(placeholders: Sequence[int]) -> None:
    """Let go of stdin and stdout, which only the command uses: a reader of its output sees the end
    when the command closes it, not when the shim exits."""
    for descriptor in (0, 1):
        if descriptor in placeholders:
            continue
        try:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        except OSError:  # an empty root without /dev
            null = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.dup2(null, descriptor, inheritable=False)
        os.close(null)


def supervise(
    command: Sequence[str],
    environ: Mapping[str, str],
    services: Sequence[Service],
    placeholders: Sequence[int],
) -> int:
    """Run ``command`` as the shim's child under the supervisor; its exit status (126 and 127 are
    raised before anything starts, as for an exec). ``placeholders``: from
    :func:`hold_standard_descriptors`, called before any descriptor was made."""
    from shim.execute import locate

    flush_standard_streams()
    return Supervisor(services).run(locate(command[0], environ), command, environ, placeholders)
