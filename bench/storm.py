#!/usr/bin/env python3
"""A storm: N containers start at once through IMDS's shared packet allowance (needs root).

EC2 lets all link-local traffic of a network interface through at 1,024 packets per second and
drops the rest silently; every container on a host shares that. Here, one machine: two network
namespaces of this script's own (no route off the machine), the simulator at 169.254.169.254:80 in
one, the clients in the other, and between them an ``iptables -m limit`` rule that passes
``--allowance`` packets per second, both directions counted together (one bucket), and drops the
rest. The clients see the DMI facts of ``--dmi`` (an EC2 instance's by default) through a tmpfs
over /sys/class in a mount namespace of their own.

Each row is one storm of ``--starts`` clients started at once, with the same allowance, one
after the other in the same run: imds-shim (IMDSv1 allowed, and IMDSv2 only), boto3's own
instance-metadata provider and the curl + jq recipe (bench/curl_recipe.sh). Per row: successes,
median and slowest time from start to exit, packets passed and dropped, and misdiagnoses (a
line calling the machine "not EC2" or blaming the hop limit). ``--json`` prints the rows as JSON
(tests/e2e/test_storm.py reads them). Bounded: every client is killed after ``--limit`` seconds,
the namespaces and the simulator are removed on every way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

Row = dict[str, Any]  # one client's storm: see Storm.row

HERE = Path(__file__).resolve().parent
IMDS_ADDRESS = "169.254.169.254"
MISDIAGNOSES = re.compile(r"not look like an EC2|not an EC2|hop limit", re.IGNORECASE)
DMI_FACTS = {"ec2": {"sys_vendor": "Amazon EC2\n"}, "other": {"sys_vendor": "QEMU\n"}, "none": {}}
# What each client must show to count as served: keys in its environment (or boto3's answer).
SERVED = 'test -n "$AWS_ACCESS_KEY_ID" && test "$AWS_ACCESS_KEY_ID" != null && test -n "$AWS_SESSION_TOKEN"'
BOTO3 = (
    "import botocore.session\n"
    "credentials = botocore.session.get_session().get_credentials()\n"
    "raise SystemExit(0 if credentials and credentials.get_frozen_credentials().token else 1)\n"
)


def clients(shim: str, python: str) -> dict[str, list[str]]:
    served = ["sh", "-c", SERVED]
    return {
        "imds-shim": [shim, "--", *served],
        "imds-shim (IMDSv2 only)": [shim, "--no-imds-v1", "--", *served],
        "boto3's provider": [python, "-c", BOTO3],
        "curl + jq": ["sh", str(HERE / "curl_recipe.sh"), *served],
    }


def run(*argv: str) -> str:
    completed = subprocess.run(argv, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {completed.stderr.strip()}")
    return completed.stdout


class Storm:
    """The namespaces, the allowance and the simulator; ``row`` runs one storm of a client."""

    def __init__(self, allowance: int, burst: int, simulator_args: list[str], python: str) -> None:
        tag = f"st{os.getpid() % 100000}"
        self.imds, self.host = f"{tag}-imds", f"{tag}-host"
        self.imds_link, self.host_link = f"{tag}i", f"{tag}h"
        self.allowance, self.burst = allowance, burst
        self.simulator_args, self.python = simulator_args, python
        self.simulator: subprocess.Popen[str] | None = None

    def __enter__(self) -> Storm:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _in(self, namespace: str, *argv: str) -> str:
        return run("ip", "netns", "exec", namespace, *argv)

    def _build(self) -> None:
        for namespace in (self.imds, self.host):
            run("ip", "netns", "add", namespace)
            self._in(namespace, "ip", "link", "set", "lo", "up")
        run("ip", "link", "add", self.imds_link, "netns", self.imds, "type", "veth", "peer", "name",
            self.host_link, "netns", self.host)  # fmt: skip
        self._in(self.imds, "ip", "addr", "add", f"{IMDS_ADDRESS}/16", "dev", self.imds_link)
        self._in(self.host, "ip", "addr", "add", "169.254.0.1/16", "dev", self.host_link)
        for namespace, link in ((self.imds, self.imds_link), (self.host, self.host_link)):
            self._in(namespace, "ip", "link", "set", link, "up")
        # One bucket for both directions, as the allowance counts every packet of the interface.
        rules = [
            ["-N", "ALLOWANCE"],
            ["-A", "ALLOWANCE", "-m", "limit", "--limit", f"{self.allowance}/second",
             "--limit-burst", str(self.burst), "-j", "RETURN"],
            ["-A", "ALLOWANCE", "-j", "DROP"],
            ["-A", "INPUT", "-i", self.imds_link, "-j", "ALLOWANCE"],
            ["-A", "OUTPUT", "-o", self.imds_link, "-j", "ALLOWANCE"],
        ]  # fmt: skip
        for rule in rules:
            self._in(self.imds, "iptables", "-w", *rule)
        # IMDS has CPUs of its own on EC2: here it shares two with the clients, so it goes first.
        self.simulator = subprocess.Popen(
            ["ip", "netns", "exec", self.imds, "nice", "-n", "-10", self.python, "-m", "shim", "simulate",
             "--host", IMDS_ADDRESS, "--port", "80", *self.simulator_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(HERE.parent), "IMDS_SHIM_LOG_LEVEL": "error"},
        )  # fmt: skip
        ends = time.monotonic() + 30
        while not self._in(self.imds, "ss", "-Hltn", "sport = :80").strip():
            if self.simulator.poll() is not None or time.monotonic() > ends:
                raise SystemExit("the simulator did not start")
            time.sleep(0.05)

    def counters(self) -> tuple[int, int]:
        """Packets passed and dropped by the allowance since the last reset."""
        listing = self._in(self.imds, "iptables", "-w", "-L", "ALLOWANCE", "-v", "-x", "-n")
        counts = [int(line.split()[0]) for line in listing.splitlines()[2:] if line.strip()]
        return counts[0], counts[1]

    def reset(self) -> None:
        self._in(self.imds, "iptables", "-w", "-Z", "ALLOWANCE")

    def row(self, name: str, argv: list[str], starts: int, dmi: str, limit: float) -> Row:
        """One storm: ``starts`` copies of ``argv`` at once, inside the clients' namespace."""
        time.sleep(max(2.0, self.burst / self.allowance))  # the bucket full again
        self.reset()
        facts = DMI_FACTS[dmi]
        writes = "".join(
            f"printf '{value.strip()}\\n' > /sys/class/dmi/id/{key}; " for key, value in facts.items()
        )
        setup = f'mount -t tmpfs tmpfs /sys/class && mkdir -p /sys/class/dmi/id && {writes}exec "$@"'
        launcher = [self.python, str(Path(__file__).resolve()), "--launch", str(starts),
                    "--limit", str(limit), "--", *argv]  # fmt: skip
        peak = PeakRate(self)
        completed = subprocess.run(
            ["ip", "netns", "exec", self.host, "unshare", "-m", "sh", "-c", setup, "storm", *launcher],
            capture_output=True, text=True, timeout=limit + 60,
            env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"},
        )  # fmt: skip
        peak.stop()
        if completed.returncode != 0:
            raise SystemExit(f"the launcher failed: {completed.stderr.strip()}")
        results = json.loads(completed.stdout)
        passed, dropped = self.counters()
        times = [result["seconds"] for result in results]
        lines = [line for result in results for line in result["stderr"].splitlines()]
        return {
            "client": name,
            "starts": starts,
            "succeeded": sum(result["status"] == 0 for result in results),
            "median": statistics.median(times),
            "slowest": max(times),
            "passed": passed,
            "dropped": dropped,
            "peak demand": peak.rate,
            "misdiagnosed": sum(bool(MISDIAGNOSES.search(result["stderr"])) for result in results),
            "failures": sorted({_shape(line) for result in results if result["status"] != 0
                                for line in result["stderr"].splitlines()[-1:]}),
            "lines": len(lines),
        }  # fmt: skip

    def close(self) -> None:
        if self.simulator is not None and self.simulator.poll() is None:
            self.simulator.terminate()
            try:
                self.simulator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.simulator.kill()
                self.simulator.wait()
        for namespace in (self.imds, self.host):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


class PeakRate:
    """The busiest second's packets (passed and dropped: what the clients asked for), sampled
    four times a second in a thread while a row runs."""

    def __init__(self, storm: Storm) -> None:
        import threading

        self.storm, self.rate, self.done = storm, 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        seen: list[int] = []
        while not self.done.wait(0.25):
            seen.append(sum(self.storm.counters()))
            if len(seen) > 4:
                self.rate = max(self.rate, seen[-1] - seen[-5])

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def _shape(line: str) -> str:
    """A failure line with its numbers masked, so that alike failures count as one kind."""
    return re.sub(r"\d+(\.\d+)?", "N", line.strip())[:200]


def launch(starts: int, limit: float, argv: list[str]) -> int:
    """Inside the clients' namespace: start them all at once; each one's status, stderr and time
    from its start to its exit (every child is waited for as it ends, whichever it is)."""
    import tempfile
    import threading

    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": "/nonexistent"}
    logs = tempfile.TemporaryDirectory()
    started: dict[int, tuple[float, Path]] = {}
    kept = []  # a Popen dropped while its process runs is reaped by subprocess itself, not here
    for index in range(starts):
        log = Path(logs.name) / str(index)
        with log.open("wb") as stderr:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=stderr)  # fmt: skip
        started[process.pid] = (time.monotonic(), log)
        kept.append(process)
    watchdog = threading.Timer(limit, _kill, args=(list(started),))
    watchdog.start()
    results = []
    for _ in range(starts):
        pid, status = os.wait()
        ended = time.monotonic()
        began, log = started[pid]
        results.append({"status": os.waitstatus_to_exitcode(status), "seconds": ended - began,
                        "stderr": log.read_text(errors="replace")})  # fmt: skip
    watchdog.cancel()
    logs.cleanup()
    print(json.dumps(results))
    return 0


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--allowance", type=int, default=200, help="packets per second, both ways")
    parser.add_argument("--burst", type=int, default=20, help="packets the allowance lets through at once")
    parser.add_argument("--dmi", choices=DMI_FACTS, default="ec2")
    parser.add_argument("--clients", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--imds-v2-required", action="store_true", help="the simulator refuses IMDSv1")
    parser.add_argument("--limit", type=float, default=90, help="seconds before a client is killed")
    parser.add_argument(
        "--shim", default=shutil.which("imds-shim") or str(Path(sys.executable).parent / "imds-shim")
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--launch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launch is not None:
        return launch(args.launch, args.limit, args.command)
    if os.geteuid() != 0:
        parser.error("a storm needs root: network namespaces, iptables and a mount namespace")
    table = clients(os.path.abspath(args.shim), sys.executable)
    chosen = [name for name in table if not args.clients or name in args.clients.split(",")]
    rows: list[Row] = []
    with Storm(args.allowance, args.burst, ["--imds-v2-required"] if args.imds_v2_required else [],
               sys.executable) as storm:  # fmt: skip
        for name in chosen:
            rows.append(storm.row(name, table[name], args.starts, args.dmi, args.limit))
            if not args.json:
                print(_format(rows[-1]), flush=True)
    if args.json:
        print(json.dumps(rows))
    return 0


def _format(row: Row) -> str:
    return (
        f"{row['client']:<24} {row['succeeded']:>4}/{row['starts']:<4} median {row['median']:6.2f} s, "
        f"slowest {row['slowest']:6.2f} s, packets {row['passed']} passed, {row['dropped']} dropped "
        f"(peak demand {row['peak demand']}/s), "
        f"{row['misdiagnosed']} misdiagnosed" + "".join(f"\n    {line}" for line in row["failures"])
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
