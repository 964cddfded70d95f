#!/usr/bin/env python3
"""Signal pairs through the supervisor: does every forwarded signal reach the command, every time?

Each round sends the shim one signal and, at once, another (standard then real-time, real-time
then standard, two of the same), waits until the command has said it got them, then sends a
marker (SIGRTMAX, delivered after everything before it) and reads up to it, so that rounds never
overlap. A signal the command has not reported within ``--wait`` seconds counts as **lost** (one
that turns up before the marker is lost as much: a SIGTERM that sits until some other signal comes
along is a ``docker stop`` that waits its 10 s and kills). Two of one standard signal may merge
into one while pending, as the kernel merges them: one is enough there; every other surplus
arrival counts as **doubled**.

The command (``--command``): ``sigwait`` (tests/programs/signal_echo.py, race-free) or
``handlers`` (the suite's earlier command: Python handlers around a blocking read; it loses a
signal that lands in the gap between CPython's check for pending signals and the read). With
``--strace DIR`` the shim is traced (strace -p, attached once the command runs), and the
signals the shim read from its signalfd are compared, in order, with the ones it sent the
command: where a lost signal stopped, in the shim or in the command.

Started from a background job (``cmd &`` in a script: SIGINT and SIGQUIT ignored), the shim
rightly keeps those ignored and does not forward them: they are left out of the pairs then.

Bounded: ``--pairs`` per mode, and ``--seconds`` in all; it kills what it started (busy loops
included) on every way out. Exit 0 when nothing was lost or doubled, 1 otherwise, 2 for bad use.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from shim.simulator.knobs import Knobs  # noqa: E402
from shim.simulator.server import Simulator  # noqa: E402

COMMANDS = {
    "sigwait": HERE / "programs" / "signal_echo.py",
    "handlers": HERE / "programs" / "signal_echo_with_handlers.py",
}
MODES = {"serve": ["--serve"], "expiry-signal": ["--expiry-signal", "USR1"], "init": ["--init"]}
STANDARD = ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGALRM", "SIGCONT", "SIGINT", "SIGQUIT"]
REAL_TIME = [str(signal.SIGRTMIN + 2), str(signal.SIGRTMAX - 1)]
MARKER = int(signal.SIGRTMAX)  # an int: str() of a Signals member differs across Pythons
KERNEL_SIGRTMIN = 32  # strace's SIGRT_N is the kernel's 32 + N (glibc keeps 32 and 33 for itself)
KINDS = (
    "standard, real-time",
    "real-time, standard",
    "two standard",
    "two real-time",
    "the second once the first arrived",
)


def number(name: str) -> int:
    return int(name) if name.isdigit() else int(getattr(signal, name))


def said(name: str) -> str:
    """How the command names a signal (signal.Signals' name, or the number for real-time ones)."""
    try:
        return signal.Signals(number(name)).name
    except ValueError:
        return name


class Command:
    """The shim and its command: lines read from the command's stdout with deadlines."""

    def __init__(self, shim: str, mode: list[str], program: Path, names: list[str], url: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_EC2_METADATA_SERVICE_ENDPOINT": url}
        env.update({"LANG": "C.UTF-8", "IMDS_SHIM_LOG_LEVEL": "error"})
        self.process = subprocess.Popen(
            [shim, *mode, "--", sys.executable, str(program), *names, str(MARKER)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.descriptor = self.process.stdout.fileno()
        self.buffer = b""
        ready = self.line(30)
        if not ready or not ready.startswith("ready "):
            self.close()
            raise SystemExit(f"the command did not start under the shim ({ready!r})")
        self.command_pid = int(ready.split()[1])

    def line(self, seconds: float) -> str | None:
        """The command's next line, or None after ``seconds``."""
        ends = time.monotonic() + seconds
        while b"\n" not in self.buffer:
            left = ends - time.monotonic()
            if left <= 0 or not select.select([self.descriptor], [], [], left)[0]:
                return None
            chunk = os.read(self.descriptor, 4096)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def pair(kind: str, standard: list[str], rng: random.Random) -> tuple[str, str]:
    first, second = rng.choice(standard), rng.choice(REAL_TIME)
    if kind in ("standard, real-time", "the second once the first arrived"):
        return first, second
    if kind == "real-time, standard":
        return second, first
    if kind == "two standard":
        return first, first
    return second, second


def one_round(command: Command, sent: tuple[str, str], wait: float, sequential: bool) -> tuple[int, int]:
    """(lost, doubled) for one pair; ``sequential``: the second is sent once the first arrived
    (what the suite's signal test does: the moment the command goes back to waiting)."""
    shim = command.process.pid
    got: Counter[str] = Counter()
    os.kill(shim, number(sent[0]))
    if sequential and (line := command.line(wait)):
        got[line] += 1
    os.kill(shim, number(sent[1]))
    expected = Counter(said(name) for name in sent)
    merged = sent[0] == sent[1] and not sent[0].isdigit()  # two of one standard signal may merge
    if merged:
        expected[said(sent[0])] = 1
    ends = time.monotonic() + wait
    while any(got[name] < count for name, count in expected.items()):
        line = command.line(max(ends - time.monotonic(), 0))
        if not line:
            break
        got[line] += 1
    lost = sum(max(count - got[name], 0) for name, count in expected.items())
    # The marker ends the round: whatever comes before it belongs to this round (late or extra).
    for _ in range(5):
        os.kill(shim, MARKER)
        line = command.line(wait)
        while line and line != said(str(MARKER)):
            got[line] += 1
            line = command.line(wait)
        if line:
            break
    else:
        raise SystemExit("the marker never arrived: the command or the shim is stuck")
    allowed = Counter(expected)
    if merged:
        allowed[said(sent[0])] = 2
    doubled = sum(max(got[name] - allowed[name], 0) for name in got)
    return lost, doubled


def read_trace(path: Path, command_pid: int, signalfd: int) -> tuple[list[int], list[int]]:
    """From strace's log of the shim: the signals it read from its signalfd (SIGCHLD left out),
    and those it sent the command, each in order."""
    read_pattern = re.compile(r'^read\((\d+), "((?:\\x[0-9a-f]{2})*)".*\)\s+= (\d+)$')
    kill_pattern = re.compile(rf"^kill\({command_pid}, (\w+)\)\s+= 0")
    taken: list[int] = []
    sent: list[int] = []
    for line in path.read_text().splitlines():
        if (match := read_pattern.match(line)) and int(match.group(1)) == signalfd:
            data = bytes.fromhex(match.group(2).replace("\\x", ""))
            for offset in range(0, int(match.group(3)), 128):
                signo = int.from_bytes(data[offset : offset + 4], "little")
                if signo != signal.SIGCHLD:
                    taken.append(signo)
        elif match := kill_pattern.match(line):
            name = match.group(1)
            sent.append(int(name[6:]) + KERNEL_SIGRTMIN if name.startswith("SIGRT_") else number(name))
    return taken, sent


def signalfd_descriptor(pid: int) -> int:
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        if os.readlink(entry) == "anon_inode:[signalfd]":
            return int(entry.name)
    raise SystemExit(f"the shim (PID {pid}) has no signalfd")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1000, help="pairs per mode (default 1000)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated (default all)")
    parser.add_argument("--command", choices=COMMANDS, default="sigwait")
    parser.add_argument("--busy", type=int, default=0, help="busy loops beside the shims")
    parser.add_argument("--wait", type=float, default=2.0, help="seconds a pair may take to arrive")
    parser.add_argument("--seconds", type=float, default=600, help="the whole run's limit")
    parser.add_argument("--strace", type=Path, help="trace each shim into this folder and compare")
    parser.add_argument("--shim", default=str(Path(sys.executable).parent / "imds-shim"))
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES) or args.pairs < 1:
        parser.error(f"--modes takes {', '.join(MODES)}; --pairs at least 1")
    # From a background job, SIGINT and SIGQUIT arrive ignored: the shim keeps them so.
    standard = [name for name in STANDARD if signal.getsignal(number(name)) != signal.SIG_IGN]
    names = [*standard, *REAL_TIME]
    rng = random.Random(args.seed)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    ends = time.monotonic() + args.seconds
    totals = Counter[str]()
    try:
        with Simulator(Knobs()) as sim:
            for mode in modes:
                command = Command(args.shim, MODES[mode], COMMANDS[args.command], names, sim.url)
                tracer = None
                if args.strace:
                    args.strace.mkdir(parents=True, exist_ok=True)
                    log = args.strace / f"{mode}.strace"
                    signalfd = signalfd_descriptor(command.process.pid)
                    tracer = subprocess.Popen(
                        ["strace", "-qq", "-xx", "-s", "65536", "-o", str(log),
                         "-p", str(command.process.pid),
                         "-e", "trace=kill,tgkill,rt_sigqueueinfo,read", "-e", "signal=none"],
                        stderr=subprocess.PIPE,
                    )  # fmt: skip
                    time.sleep(1)  # strace has no "attached" signal to wait for; a bounded pause
                counts = Counter[str]()
                for index in range(args.pairs):
                    if time.monotonic() > ends:
                        print(f"{mode}: stopped at --seconds {args.seconds:g}", file=sys.stderr)
                        break
                    kind = KINDS[index % len(KINDS)]
                    sequential = kind == KINDS[-1]
                    lost, doubled = one_round(command, pair(kind, standard, rng), args.wait, sequential)
                    counts["pairs"] += 1
                    counts["lost"] += lost
                    counts["doubled"] += doubled
                    counts[f"lost ({kind})"] += lost
                status = command.close()
                counts["bad exit"] += status != 0
                if tracer is not None:
                    tracer.terminate()
                    tracer.wait(timeout=30)
                    taken, forwarded = read_trace(log, command.command_pid, signalfd)
                    counts["read, never sent"] += sum((Counter(taken) - Counter(forwarded)).values())
                    counts["sent, never read"] += sum((Counter(forwarded) - Counter(taken)).values())
                    counts["read by the shim"] += len(taken)
                print(f"{mode}: " + ", ".join(f"{key} {value}" for key, value in counts.items()), flush=True)
                totals.update(counts)
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()
    background = "background job" if len(standard) < len(STANDARD) else "foreground"
    print(
        f"signal pairs ({args.command} command, {background}, {args.busy} busy loops): "
        + ", ".join(f"{key} {value}" for key, value in totals.items() if not key.startswith("lost ("))
    )
    return (
        0
        if totals["lost"] == totals["doubled"] == totals["bad exit"] == totals["read, never sent"] == 0
        else 1
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
