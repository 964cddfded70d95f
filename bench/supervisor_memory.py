"""What a resident ``--serve`` supervisor costs in memory, at 1, 10 and 50 of them side by side.

    python bench/supervisor_memory.py [--shim PATH]... [--counts 1,10,50]

For each shim (the pip-installed one by default; add the bundle with ``--shim``) and each count,
starts that many ``imds-shim --serve -- sleep`` against one simulator on loopback, waits until each
serves (its command runs), and reads ``/proc/PID/smaps_rollup`` of every process of the shim's
(the bundle's launcher and its Python alike, never the command): private memory (what one more
container adds), PSS (private plus its share of what the copies share) and RSS. Medians per
supervisor; one JSON line per (shim, count), then a table.
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

HERE = Path(__file__).resolve().parent
PIP_SHIM = str(Path(sys.executable).parent / "imds-shim")


def rollup(pid: int) -> dict[str, int]:
    """KiB figures of one process, from smaps_rollup."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        found = re.match(r"(\w+):\s+(\d+) kB", line)
        if found:
            figures[found[1]] = int(found[2])
    return figures


def shim_processes(command_pid: int, shim_pid: int) -> list[int]:
    """The shim's processes above the command, up to the one started (the bundle's launcher may
    stand above its Python)."""
    chain: list[int] = []
    pid = command_pid
    while pid != shim_pid:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


def measure(shim: str, count: int, endpoint: str) -> dict[str, float]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint}
    # The command says its PID once it runs, i.e. once the shim serves, then sleeps.
    command = ["sh", "-c", "echo $$; exec sleep 600"]
    started = [
        subprocess.Popen([shim, "--serve", "--", *command], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    try:
        commands = [(int(process.stdout.readline()), process.pid) for process in started if process.stdout]
        time.sleep(1.0)  # let start-up's transient pages go, as at rest
        per_supervisor = []
        for command_pid, shim_pid in commands:
            figures = [rollup(pid) for pid in shim_processes(command_pid, shim_pid)]
            per_supervisor.append(
                {
                    "private": sum(f["Private_Clean"] + f["Private_Dirty"] for f in figures) / 1024,
                    "pss": sum(f["Pss"] for f in figures) / 1024,
                    "rss": sum(f["Rss"] for f in figures) / 1024,
                }
            )
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=30)
    return {key: statistics.median(s[key] for s in per_supervisor) for key in ("private", "pss", "rss")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shim", action="append", default=[], help="another imds-shim to measure")
    parser.add_argument("--counts", default="1,10,50")
    args = parser.parse_args()
    simulator = subprocess.Popen([PIP_SHIM, "simulate"], stdout=subprocess.PIPE, text=True)
    assert simulator.stdout is not None
    found = re.search(r"http://\S+", simulator.stdout.readline())
    assert found, "the simulator did not start"
    rows = []
    try:
        for shim in [PIP_SHIM, *args.shim]:
            for count in (int(n) for n in args.counts.split(",")):
                figures = measure(shim, count, found[0])
                row = {"shim": shim, "supervisors": count, **{k: round(v, 2) for k, v in figures.items()}}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        simulator.terminate()
    print("\n| shim | supervisors | private MiB each | PSS MiB each | RSS MiB each |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['shim']} | {row['supervisors']} | {row['private']} | {row['pss']} | {row['rss']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
