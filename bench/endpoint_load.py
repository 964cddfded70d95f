"""The --serve supervisor, run as its command: wakeups at rest, memory, and latency under load.

    imds-shim simulate -- imds-shim --serve -- \
        python bench/endpoint_load.py --requests 10000 --clients 50 --rest 10

First, at rest: the supervisor's context switches (voluntary and not, /proc/PID/status) over
``--rest`` seconds while nothing asks it anything, and its proportional set size (PSS, from
/proc/PID/smaps_rollup: what it costs the host, pages shared with others counted in part).
Then the load.

The clients are concurrent connections of one asyncio loop, each keeping its connection (as the
SDKs' HTTP clients do) and sending its next request as soon as the last is answered; every request
is timed from send to the last byte. One process, not eight: on a 2-core machine eight busy client
processes measure the scheduler's time slices (a p99 of 6-8 ms), not the endpoint.
The endpoint is served by the supervisor, this process's parent; its peak resident memory is
VmHWM. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import statistics
import time
import urllib.parse
from collections import Counter


def supervisor_pid() -> int:
    """The parent of this process: the imds-shim --serve that serves the endpoint."""
    parent = os.getppid()
    with open(f"/proc/{parent}/comm") as comm:
        if comm.read().strip() != "imds-shim":
            raise SystemExit("the parent is not imds-shim: run this under imds-shim --serve")
    return parent


def context_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)


def pss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise SystemExit("no Pss in smaps_rollup")


def memory_mib(pid: int) -> dict[str, float]:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status.read().splitlines())
    return {name: int(fields[key].split()[0]) / 1024 for name, key in (("rss", "VmRSS"), ("peak", "VmHWM"))}


# Untimed requests per connection before the timed ones: after the rest period the machine's CPUs
# are cold (on this VM the first round after 10 s idle took 9-12 ms, the steady state under 3).
WARM_UP = 3


async def client(count: int, latencies: list[float], statuses: Counter[int]) -> None:
    """One keep-alive connection sending ``count`` requests one after another (after WARM_UP)."""
    uri = urllib.parse.urlsplit(os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"])
    token = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    request = f"GET {uri.path} HTTP/1.1\r\nHost: {uri.netloc}\r\nAuthorization: {token}\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection(uri.hostname, uri.port)
    for number in range(WARM_UP + count):
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        statuses[int(head.split(b" ", 2)[1])] += 1
        if number >= WARM_UP:
            latencies.append(time.perf_counter() - started)
    writer.close()


async def load(requests: int, clients: int) -> tuple[list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    await asyncio.gather(*(client(share, latencies, statuses) for share in shares))
    return latencies, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rest", type=float, default=0.0, help="seconds at rest to count wakeups over")
    args = parser.parse_args()
    endpoint = supervisor_pid()
    time.sleep(0.5)  # the start's own work (the first fetch child's exit) done
    before = context_switches(endpoint)
    time.sleep(args.rest)
    at_rest = context_switches(endpoint) - before
    resident = pss_mib(endpoint)
    gc.disable()  # the client's own collections would be timed as the endpoint's latency
    latencies, statuses = asyncio.run(load(args.requests, args.clients))
    cuts = statistics.quantiles(latencies, n=100)
    memory = memory_mib(endpoint)
    print(
        json.dumps(
            {
                "requests": len(latencies),
                "warm_up_requests_per_client": WARM_UP,
                "clients": args.clients,
                "statuses": {str(status): count for status, count in sorted(statuses.items())},
                "p50_ms": round(cuts[49] * 1000, 2),
                "p99_ms": round(cuts[98] * 1000, 2),
                "max_ms": round(max(latencies) * 1000, 2),
                "rest_seconds": args.rest,
                "switches_at_rest": at_rest,
                "pss_mib_at_rest": round(resident, 2),
                "rss_mib": round(memory["rss"], 1),
                "peak_rss_mib": round(memory["peak"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
