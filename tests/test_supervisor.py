"""The supervised modes (--serve, --expiry-signal, --init): an init's duties, each stated in one line.

Every test runs the installed imds-shim in a subprocess, in a clean environment, against the
simulator, and looks at what the command itself saw: the signals it got and how often, its process
group and terminal, its exit status as the shim's parent sees it, and what is left running.
"""

from __future__ import annotations

import json
import os
import pty
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest
from helpers import SHIM, alive, budget, children, clean_env, hammering, missing, run_shim

from shim.simulator.server import Simulator

pytestmark = pytest.mark.behaviour

SUPERVISED_MODES = pytest.mark.parametrize(
    "mode", [["--serve"], ["--expiry-signal", "USR1"], ["--init"]], ids=["serve", "expiry-signal", "init"]
)
# Catchable, and each sent to the shim alone: the command must get each one exactly once.
# SIGPIPE and SIGXFSZ too, which CPython ignores in the shim while the command has them at their
# defaults (Yelp/dumb-init's own signal test sends every one of these).
FORWARDED = [
    *("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGALRM", "SIGCONT"),
    *("SIGPIPE", "SIGXFSZ"),
]

# The command: a line for every signal it gets, as it gets it; "ready PID" first; ends when stdin
# does. It takes its signals with sigtimedwait: Python handlers around a blocking read lose one that
# lands just before the read (issue 45; tests/signal_stress.py --command handlers counts them).
ECHOER = [sys.executable, str(Path(__file__).parent / "programs" / "signal_echo.py")]
# Sent after the signal under test has arrived: a real-time signal, which the kernel delivers after
# every standard one and Python handles after them, so a second delivery of the signal under test
# that the shim still had to send would arrive before it.
MARKER = "SIGRTMAX"


def line_within(process: subprocess.Popen[str], seconds: float = 30) -> str:
    """The command's next line, or a failure after ``seconds`` (never a hang) that tells what the
    shim and the command were doing. Read a byte at a time from the descriptor: a buffered
    readline could take a second line with the first, which ``select`` would then never see."""
    assert process.stdout is not None
    descriptor, line, ends = process.stdout.fileno(), b"", time.monotonic() + seconds
    while not line.endswith(b"\n"):
        if not select.select([descriptor], [], [], max(ends - time.monotonic(), 0))[0]:
            raise AssertionError(
                f"no line from the command in {seconds} s (got {line!r}); {signal_state(process.pid)}"
            )
        byte = os.read(descriptor, 1)
        if not byte:
            break
        line += byte
    return line.decode().strip()


def signal_state(shim: int) -> str:
    """What the shim and its children block, ignore, catch and have pending, and where they wait."""
    described = []
    for pid in [shim, *children(shim)]:
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            wchan = Path(f"/proc/{pid}/wchan").read_text()
        except OSError as error:
            described.append(f"{pid}: {error}")
            continue
        fields = [line.replace(":\t", " ") for line in status if line.startswith(("Name", "Sig", "ShdPnd"))]
        described.append(f"{pid}: {', '.join(fields)}, wchan {wchan}")
    return "; ".join(described)


def arrivals_until_the_marker(process: subprocess.Popen[str], name: str) -> list[str]:
    """Send ``name`` to the shim and wait for it to arrive; then the marker, and everything that
    arrived until it did, and after it until the command ended (its stdin closed)."""
    assert process.stdout is not None
    assert process.stdin is not None
    os.kill(process.pid, getattr(signal, name) if not name.isdigit() else int(name))
    got = [line_within(process)]
    os.kill(process.pid, signal.SIGRTMAX)
    while (line := line_within(process)) not in (MARKER, ""):
        got.append(line)
    process.stdin.close()
    return got + process.stdout.read().split()


def start(mode: list[str], command: list[str], sim: Simulator, **env: str) -> subprocess.Popen[str]:
    """The shim in ``mode`` with ``command``; its stdin and stdout are pipes to the test."""
    return subprocess.Popen(
        [SHIM, *mode, "--", *command],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@SUPERVISED_MODES
@pytest.mark.parametrize("name", FORWARDED)
def test_a_signal_sent_to_the_shim_reaches_the_command_once(
    sim: Simulator, mode: list[str], name: str
) -> None:
    """kill -SIG <shim>: the command gets SIG exactly once (counted until a later signal arrived,
    and on until the command ended)."""
    process = start(mode, [*ECHOER, name, MARKER], sim)
    assert line_within(process).startswith("ready ")
    assert arrivals_until_the_marker(process, name) == [name]
    assert process.wait(timeout=30) == 0


# Every standard signal a command can catch, as Yelp/dumb-init's proxy test sends them: all but
# SIGKILL and SIGSTOP (uncatchable), SIGCHLD (the shim's own), SIGTTIN and SIGTTOU (which the shim
# ignores so that it is never stopped), and the seven a fault raises (tini does not forward those).
NOT_FORWARDED = {"SIGKILL", "SIGSTOP", "SIGCHLD", "SIGTTIN", "SIGTTOU"}
FAULTS = {"SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGSEGV", "SIGSYS"}
EVERY_NORMAL_SIGNAL = sorted(
    (item.name for item in signal.Signals if item < signal.SIGRTMIN),
    key=lambda name: int(getattr(signal, name)),
)
EVERY_NORMAL_SIGNAL = [name for name in EVERY_NORMAL_SIGNAL if name not in NOT_FORWARDED | FAULTS]


@SUPERVISED_MODES
def test_every_normal_signal_is_forwarded_once(sim: Simulator, mode: list[str]) -> None:
    """Each of them, sent to the shim after the one before has arrived (a stop signal discards a
    pending SIGCONT, and the other way round), reaches the command exactly once."""
    assert len(EVERY_NORMAL_SIGNAL) >= 18  # Linux: 19 below SIGRTMIN, less the excluded (3.9 lacks SIGSTKFLT)
    process = start(mode, [*ECHOER, *EVERY_NORMAL_SIGNAL], sim)
    assert process.stdout is not None
    assert process.stdin is not None
    assert process.stdout.readline().startswith("ready ")
    got = []
    for name in EVERY_NORMAL_SIGNAL:
        os.kill(process.pid, getattr(signal, name))
        got.append(process.stdout.readline().strip())
    process.stdin.close()
    got += process.stdout.read().split()  # a second delivery of any would show here
    assert process.wait(timeout=30) == 0
    assert got == EVERY_NORMAL_SIGNAL


def test_a_real_time_signal_is_forwarded_too(sim: Simulator) -> None:
    """SIGRTMIN+3 (any catchable signal, not only the well-known ones) reaches the command once."""
    number = str(signal.SIGRTMIN + 3)
    process = start(["--init"], [*ECHOER, number, MARKER], sim)
    assert line_within(process).startswith("ready ")
    assert arrivals_until_the_marker(process, number) == [number]


@SUPERVISED_MODES
@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 0", 0), ("exit 7", 7), ("exit 255", 255), ("kill -TERM $$", 143), ("kill -KILL $$", 137)],
    ids=["0", "7", "255", "TERM", "KILL"],
)
def test_the_shim_exits_with_the_commands_status(
    sim: Simulator, mode: list[str], script: str, status: int
) -> None:
    """The command's own code, or 128+N when signal N killed it (as tini and dumb-init)."""
    assert run_shim([*mode, "--", "sh", "-c", script], endpoint=sim.url).returncode == status


@SUPERVISED_MODES
def test_the_command_dies_with_a_killed_shim(sim: Simulator, mode: list[str]) -> None:
    """SIGKILL to the shim (the OOM killer): the command does not run on without it."""
    process = start(mode, [*ECHOER], sim)
    assert process.stdout is not None
    command = int(process.stdout.readline().split()[1])
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 30  # the outcome, not its speed: PR_SET_PDEATHSIG acts at once
    while alive(command) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(command)


def test_a_command_that_cannot_be_found_or_run_is_127_or_126_and_nothing_stays(
    sim: Simulator, tmp_path: Path
) -> None:
    """Checked before anything starts, as for an exec: one line each."""
    missing = run_shim(["--serve", "--", "no-such-command-xyz"], endpoint=sim.url)
    assert (missing.returncode, len(missing.stderr.splitlines())) == (127, 1)
    script = tmp_path / "no-interpreter"
    script.write_bytes(b"#!/no/such/interpreter\n")
    script.chmod(0o755)
    broken = run_shim(["--init", "--", str(script)], endpoint=sim.url)
    assert broken.returncode in (126, 127)
    assert len(broken.stderr.splitlines()) == 1, broken.stderr
    assert "internal error" not in broken.stderr


@contextmanager
def no_more_processes() -> Iterator[Callable[[], object]]:
    """A preexec function after which the shim's own process can make no further one.

    Not root: RLIMIT_NPROC 1 (the user has more processes than that already). Root is not held by
    RLIMIT_NPROC: a pids cgroup of its own with pids.max 1 (v2, else v1's pids hierarchy).
    """
    if os.geteuid() != 0:
        yield lambda: resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
        return
    v2 = Path("/sys/fs/cgroup")
    parent = v2 if "pids" in _read(v2 / "cgroup.subtree_control") else Path("/sys/fs/cgroup/pids")
    if not (parent / "cgroup.procs").exists():
        missing("no pids cgroup controller to limit the shim's processes with")
    group = parent / f"imds-shim-test-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir()
    try:
        (group / "pids.max").write_text("1")
        yield lambda: (group / "cgroup.procs").write_text(str(os.getpid()))
    finally:
        for _ in range(100):  # the limited processes take a moment to leave
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@SUPERVISED_MODES
def test_a_fork_that_fails_is_one_line_and_125(sim: Simulator, mode: list[str]) -> None:
    """A pids cgroup full (or RLIMIT_NPROC reached): "cannot start the command: ...", 125, no traceback."""
    with no_more_processes() as limit:
        result = run_shim([*mode, "--", "true"], endpoint=sim.url, preexec_fn=limit)
    assert result.returncode == 125, result.stderr
    (line,) = result.stderr.splitlines()
    assert "cannot start the command: fork failed" in line
    assert "internal error" not in line


@SUPERVISED_MODES
def test_orphans_are_reaped_when_the_shim_is_pid_1(sim: Simulator, mode: list[str]) -> None:
    """As PID 1 (no --init, on Kubernetes, FROM scratch): an orphan handed to the shim is no zombie."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        missing("a PID namespace needs root and unshare (util-linux)")
    # The orphan ends once it has been handed to PID 1 (its parent is gone); the command then
    # waits until the orphan is no longer in /proc at all: exited *and* reaped. A zombie would
    # stay, and the wait would end at its deadline with the orphan still there.
    orphan_then_look = (
        "import os, time\n"
        "read_end, write_end = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    orphan = os.fork()\n"
        "    if orphan == 0:\n"
        "        while os.getppid() != 1: time.sleep(0.01)\n"
        "        os._exit(0)\n"
        "    os.write(write_end, str(orphan).encode())\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "orphan = int(os.read(read_end, 32))\n"
        "deadline = time.monotonic() + 30\n"
        "while os.path.exists(f'/proc/{orphan}') and time.monotonic() < deadline: time.sleep(0.01)\n"
        "zombies = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()\n"
        "    if fields[0] == 'Z': zombies.append(pid)\n"
        "print(os.getppid(), os.path.exists(f'/proc/{orphan}'), len(zombies))\n"
    )
    result = subprocess.run(
        [
            "unshare",
            "--fork",
            "--pid",
            "--mount-proc",
            SHIM,
            *mode,
            "--",
            sys.executable,
            "-c",
            orphan_then_look,
        ],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # The shim is PID 1; the orphan exited and was reaped; no zombie is left.
    assert result.stdout.split() == ["1", "False", "0"]


@pytest.mark.timed  # "at once" (docker stop) is a bound in seconds
def test_sigterm_to_the_shim_as_pid_1_stops_the_command_at_once(sim: Simulator) -> None:
    """docker stop: SIGTERM to PID 1 reaches a command that does not catch it; 143, well under 10 s."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        missing("a PID namespace needs root and unshare (util-linux)")
    process = subprocess.Popen(
        [
            "unshare",
            "--fork",
            "--pid",
            "--mount-proc",
            SHIM,
            "--serve",
            "--",
            "sh",
            "-c",
            "echo up; sleep 30",
        ],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "up\n"
    shim = _child_of(process.pid)
    started = time.monotonic()
    os.kill(shim, signal.SIGTERM)
    assert process.wait(timeout=10) == 143
    assert time.monotonic() - started < budget(2)


def _child_of(pid: int) -> int:
    return children(pid)[0]


@SUPERVISED_MODES
def test_on_a_terminal_the_command_is_the_foreground_group_and_ctrl_c_reaches_it_once(
    sim: Simulator, mode: list[str]
) -> None:
    """docker run -it: the command leads the terminal's foreground group (job control); ^C arrives
    once (counted until a later signal arrived, and on until the command ended)."""
    pid, master = pty.fork()
    if pid == 0:
        env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
        os.execve(SHIM, [SHIM, *mode, "--", *ECHOER, "SIGINT", MARKER], env)
    output = _read_until(master, b"ready")
    fields = output.split(b"ready", 1)[1].split()[:3]
    command, group, foreground = (int(field) for field in fields)
    assert command == group == foreground
    os.write(master, b"\x03")
    output += _read_until(master, b"SIGINT")
    os.kill(pid, signal.SIGRTMAX)
    output += _read_until(master, MARKER.encode())
    os.write(master, b"\x04")  # end of file on the terminal: the command ends
    _, status = os.waitpid(pid, 0)
    assert output.count(b"SIGINT") == 1, output
    assert os.waitstatus_to_exitcode(status) == 0
    os.close(master)


def _read_until(master: int, word: bytes) -> bytes:
    output = b""
    deadline = time.monotonic() + 20
    while word not in output or not output.endswith(b"\n"):
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {word!r} on the terminal: {output!r}")
        try:
            output += os.read(master, 4096)
        except OSError:
            break
    return output


@SUPERVISED_MODES
def test_closed_stdin_and_stdout_at_start_stay_closed_and_the_endpoint_keeps_answering(
    sim: Simulator, mode: list[str], tmp_path: Path
) -> None:
    """<&- >&- (cron, some supervisors): the command finds 0 and 1 closed; --serve's socket is not on them."""
    report = tmp_path / "report.json"
    script = (
        "import fcntl, http.client, json, os, sys, time, urllib.parse\n"
        "def is_open(fd):\n"
        "    try: return fcntl.fcntl(fd, fcntl.F_GETFD) >= 0\n"
        "    except OSError: return False\n"
        "fds = [fd for fd in (0, 1, 2) if is_open(fd)]\n"
        "statuses = []\n"
        "uri = urllib.parse.urlsplit(os.environ.get('AWS_CONTAINER_CREDENTIALS_FULL_URI', 'http://x:1/'))\n"
        "for _ in range(3 if 'AWS_CONTAINER_CREDENTIALS_FULL_URI' in os.environ else 0):\n"
        "    time.sleep(0.2)\n"
        "    c = http.client.HTTPConnection(uri.hostname, uri.port, timeout=5)\n"
        "    token = os.environ['AWS_CONTAINER_AUTHORIZATION_TOKEN']\n"
        "    c.request('GET', uri.path, headers={'Authorization': token})\n"
        "    statuses.append(c.getresponse().status); c.close()\n"
        f"open({str(report)!r}, 'w').write(json.dumps({{'fds': fds, 'statuses': statuses}}))\n"
    )

    def close_stdin_and_stdout() -> None:
        os.close(0)
        os.close(1)

    result = run_shim(
        [*mode, "--", sys.executable, "-c", script], endpoint=sim.url, preexec_fn=close_stdin_and_stdout
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(report.read_text())
    assert seen["fds"] == [2]
    assert seen["statuses"] == ([200, 200, 200] if mode == ["--serve"] else [])


@pytest.mark.serial
def test_the_supervisor_does_not_wake_up_at_rest(sim: Simulator) -> None:
    """--serve with 6-hour credentials, nothing asking: no context switch of the shim's in 2 s."""
    process = start(["--serve"], ["sh", "-c", "echo up; sleep 30"], sim)
    assert process.stdout is not None
    assert process.stdout.readline() == "up\n"
    _wait_until_asleep_in_select(process.pid)  # the start's own work done
    before = _switches(process.pid)
    time.sleep(2)  # the measurement itself: how often it wakes in 2 s
    after = _switches(process.pid)
    process.kill()
    process.wait()
    assert after - before <= 1


def _wait_until_asleep_in_select(pid: int) -> None:
    """Until the supervisor sleeps in a system call (its loop's select: /proc/PID/syscall names the
    call, not "running") at two looks in a row with no context switch between them: the start's
    own work is over."""
    deadline = time.monotonic() + 30
    last = -1
    while True:
        asleep = Path(f"/proc/{pid}/syscall").read_text().split()[0] != "running"
        switches = _switches(pid)
        if asleep and switches == last:
            return
        assert time.monotonic() < deadline, Path(f"/proc/{pid}/syscall").read_text()
        last = switches if asleep else -1
        time.sleep(0.05)


def _switches(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.endswith("ctxt_switches:") or "ctxt_switches" in line:
            total += int(line.split()[1])
    return total


# The command for a storm: ignores the storm's signal, says it is up, exits 7 once stdin closes.
STORM_COMMAND = """
import signal, sys
signal.signal(signal.SIGRTMIN + 1, signal.SIG_IGN)
print("up", flush=True)
sys.stdin.read()
sys.exit(7)
"""


def _queue_signals(pid: int) -> bool:
    """Queue a thousand SIGRTMIN+1 at ``pid``; False once it is gone."""
    for _ in range(1000):
        try:
            os.kill(pid, signal.SIGRTMIN + 1)
        except ProcessLookupError:
            return False
        except OSError:  # the queue is full for now (RLIMIT_SIGPENDING)
            break
    return True


@pytest.mark.serial  # two processes flooding a third take both cores: alone, so no other test pays
@SUPERVISED_MODES
def test_a_storm_of_queued_signals_never_costs_the_commands_exit(sim: Simulator, mode: list[str]) -> None:
    """Two processes queue real-time signals at the shim as fast as they can while the command
    exits: the wakeup pipe overflows, and the shim still notices the exit and ends with its code."""
    process = start(mode, [sys.executable, "-c", STORM_COMMAND], sim)
    assert process.stdout is not None
    assert process.stdin is not None
    assert process.stdout.readline() == "up\n"
    stop_read, stop_write = os.pipe()
    storms = [hammering(lambda: _queue_signals(process.pid), stop_read) for _ in range(2)]
    os.close(stop_read)
    try:
        time.sleep(0.5)  # the storm itself: long enough to fill a 64 KiB pipe many times over
        process.stdin.close()
        returncode = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    finally:
        os.close(stop_write)
        for storm in storms:
            os.waitpid(storm, 0)
    assert returncode == 7


def test_a_sigpipe_the_shim_raises_at_itself_is_not_forwarded(simulator: Callable[..., Simulator]) -> None:
    """The shim's renewal warnings go to a stderr pipe nobody reads any more: its own write raises
    SIGPIPE at itself, which is its business, not the command's (which gets none)."""
    sim = simulator(expires_in=2)
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [SHIM, "--serve", "--", *ECHOER, "SIGPIPE", MARKER],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=write_end,
        text=True,
    )
    os.close(write_end)
    os.close(read_end)  # from now on, a write to stderr raises SIGPIPE at the writer
    assert process.stdout is not None
    assert process.stdin is not None
    assert process.stdout.readline().startswith("ready ")
    sim.stop()  # the renewal due 1 s after the start fails, and its warning meets the broken pipe
    deadline = time.monotonic() + 30
    while "1 failures in a row" not in (answer := _status(process.pid)):  # the warning was written
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGRTMAX)  # after anything the shim would have forwarded
    assert process.stdout.readline().strip() == MARKER
    process.stdin.close()
    assert process.stdout.read() == ""
    assert process.wait(timeout=30) == 0


def _status(pid: int) -> str:
    return subprocess.run([SHIM, "status", "--pid", str(pid)], env={}, capture_output=True, text=True).stdout
