"""--on-interruption's cost and speed, side by side in one run.

    python bench/interruption.py [--shim PATH] [--rest 10] [--notices 20]

At rest, a supervisor without the watch (``--init``) and one with it (``--init --on-interruption
TERM``, the default 5 s period), each ``-- sleep`` against its own simulator on loopback, after
one period to settle: its context switches over ``--rest`` seconds (every time it woke up), its
private memory (smaps_rollup: what one more container adds), and the requests and connections
the simulator saw from it, per minute. Then ``--notices`` Spot notices at a 1 s period, one run
each, the notice appearing at a random moment 1 to 3 s in: the time to the moment the command
(tests/programs/finish_on_term.py) had SIGTERM from the notice's appearance and from the
simulator's first answer with it, on this machine's monotonic clock. Median and maximum; the bar
is period + 1 s.

A poll wakes the supervisor twice: once to ask, once (50 ms later) to read the answers together.
Reading them at the next period's wakeup instead would make it once, and double the worst time
from a notice's appearance to the signal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from shim.imds.protocol import SPOT_ACTION_PATH
from shim.simulator.knobs import Knobs
from shim.simulator.server import Simulator

HERE = Path(__file__).resolve().parent
PIP_SHIM = str(Path(sys.executable).parent / "imds-shim")
FINISHER = [sys.executable, str(HERE.parent / "tests" / "programs" / "finish_on_term.py")]
METADATA = ("/latest/meta-data/spot/", "/latest/meta-data/autoscaling/", "/latest/meta-data/events/")


def private_mib(pid: int) -> float:
    figures = dict(
        (found[1], int(found[2]))
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        if (found := re.match(r"(\w+):\s+(\d+) kB", line))
    )
    return (figures["Private_Clean"] + figures["Private_Dirty"]) / 1024


def switches(pid: int) -> int:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)


def at_rest(shim: str, watch: bool, rest: float) -> dict[str, float]:
    """One supervisor at rest: wakeups over ``rest`` s, private MiB, requests and connections a minute."""
    with Simulator(Knobs()) as sim:
        args = ["--init", *(["--on-interruption", "TERM"] if watch else []), "--", "sleep", str(rest + 30)]
        process = subprocess.Popen(
            [shim, *args], env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_SERVICE_ENDPOINT": sim.url}
        )
        try:
            time.sleep(6.0)  # the start, and the watch's first (randomly placed) check
            state = sim.server.state
            before = (switches(process.pid), len(state.requests), state.connections)
            time.sleep(rest)
            after = (switches(process.pid), len(state.requests), state.connections)
            memory = private_mib(process.pid)
        finally:
            process.kill()
            process.wait()
    per_minute = 60.0 / rest
    return {
        "wakeups_per_10s": (after[0] - before[0]) * 10.0 / rest,
        "private_mib": round(memory, 2),
        "requests_per_minute": (after[1] - before[1]) * per_minute,
        "connections_per_minute": (after[2] - before[2]) * per_minute,
    }


def notice_to_signal(shim: str, period: float) -> tuple[float, float]:
    """Seconds to the command's SIGTERM from a Spot notice's appearance, and from the first
    answer with it."""
    appears_in = 1.0 + 2.0 * int.from_bytes(os.urandom(2), "big") / 65536
    with Simulator(Knobs(spot_interruption_in=appears_in)) as sim:
        # The simulator counts from its wall-clock start: that moment on the monotonic clock.
        appears = time.monotonic() - (time.time() - sim.server.state.started) + appears_in
        completed = subprocess.run(
            [shim, "--on-interruption", "TERM", "--interruption-poll", str(period), "--", *FINISHER],
            env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_SERVICE_ENDPOINT": sim.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        got = float(
            next(line for line in completed.stdout.splitlines() if line.startswith("got ")).split()[2]
        )
        first = next(
            r.at for r in sim.server.state.requests if r.path == SPOT_ACTION_PATH and r.status == 200
        )
    return got - appears, got - first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shim", default=PIP_SHIM)
    parser.add_argument("--rest", type=float, default=10.0)
    parser.add_argument("--notices", type=int, default=20)
    args = parser.parse_args()
    off, on = at_rest(args.shim, False, args.rest), at_rest(args.shim, True, args.rest)
    runs = [notice_to_signal(args.shim, 1.0) for _ in range(args.notices)]
    result: dict[str, object] = {
        "watch_off": off,
        "watch_on_5s": on,
        "private_mib_more": round(on["private_mib"] - off["private_mib"], 2),
    }
    for index, since in enumerate(("appearance", "first_answer")):
        latencies = [run[index] for run in runs]
        result[f"signal_after_{since}_s"] = {
            "notices": len(latencies),
            "period": 1.0,
            "median": round(statistics.median(latencies), 3),
            "max": round(max(latencies), 3),
        }
    print(json.dumps(result))
    print("\n| at rest | wakeups per 10 s | private MiB | requests/min | connections/min |")
    print("|---|---|---|---|---|")
    for name, row in (("--init", off), ("--init --on-interruption TERM (5 s)", on)):
        print(
            f"| {name} | {row['wakeups_per_10s']:g} | {row['private_mib']:.2f} | "
            f"{row['requests_per_minute']:g} | {row['connections_per_minute']:g} |"
        )
    for since in ("appearance", "first_answer"):
        figures = result[f"signal_after_{since}_s"]
        assert isinstance(figures, dict)
        print(
            f"signal after the notice's {since.replace('_', ' ')}, 1 s period, {figures['notices']} "
            f"notices: median {figures['median']} s, max {figures['max']} s (bar: 2 s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
