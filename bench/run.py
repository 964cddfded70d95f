"""Side-by-side start-up benchmark: imds-shim against its floor and the alternatives.

    python bench/run.py                 # 40 interleaved rounds, the README's table
    python bench/run.py --rounds 3      # CI's smoke run
    python bench/run.py --other bundle=build/bench-bundle/imds-shim/imds-shim   # plus its rows
    python bench/run.py --other before=/tmp/before/bin/imds-shim   # against an older build

Every command runs once per round, in a rotating order, so that drift in the machine's speed hits
every command alike. All fetch against the project's IMDS simulator on loopback (IMDSv2 required),
started as a separate process. Wall time is measured around fork, exec and wait. Peak RSS is the
child's ``ru_maxrss``. The script prints medians, ratios to the floor (`import requests, tenacity`
in the same interpreter), the targets, and the IMDS requests per run. Three rows send the same
four requests through requests, urllib3 and http.client alone (bench/client_floor.py): what the
HTTP client costs without imds-shim. A missing alternative (curl and jq, boto3, AWS CLI v2) is
skipped with the reason. This is a benchmark, not a test: it fails
only on ``--check`` when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SHIM = str(BIN / "imds-shim")
PYTHON = sys.executable
AWS_CLI = "/usr/bin/aws"  # Debian's awscli package is v2; a pip-installed `aws` may be v1
BOTO3_EXEC = (
    "import os, boto3\n"
    "c = boto3.Session().get_credentials().get_frozen_credentials()\n"
    "os.execvpe('true', ['true'], dict(os.environ, AWS_ACCESS_KEY_ID=c.access_key,\n"
    "           AWS_SECRET_ACCESS_KEY=c.secret_key, AWS_SESSION_TOKEN=c.token))\n"
)
AWS_CLI_EXEC = f'eval "$({AWS_CLI} configure export-credentials --format env)" && exec true'


@dataclass
class Case:
    """One command in the comparison."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


def run_once(case: Case, base_env: dict[str, str]) -> None:
    env = dict(base_env, **case.env)
    started = time.perf_counter()
    child = subprocess.Popen(
        case.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{case.name}: exited {child.returncode}; run it by hand to see why")
    case.times.append(elapsed)
    case.rss_kib.append(usage.ru_maxrss)


def start_simulator() -> tuple[subprocess.Popen[str], str]:
    # Served without a command, the simulator prints its address on stdout.
    simulator = subprocess.Popen([SHIM, "simulate", "--imds-v2-required"], stdout=subprocess.PIPE, text=True)
    assert simulator.stdout is not None
    line = simulator.stdout.readline()
    found = re.search(r"http://\S+", line)
    if not found:
        simulator.kill()
        raise SystemExit(f"the simulator did not start: {line!r}")
    return simulator, found.group(0)


SERVE_CASE = "imds-shim --serve -- true"
BUNDLE_CASE = "bundle: imds-shim -- true"
BUNDLE_STEP_ASIDE_CASE = "bundle: step-aside (keys preset)"
REQUESTS_ALONE_CASE = "requests alone: 4 requests + exec"  # bench/client_floor.py


def available_cases(others: dict[str, str]) -> tuple[list[Case], list[str]]:
    keys = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE00", "AWS_SECRET_ACCESS_KEY": "example"}
    cases = [
        Case("imds-shim -- true", [SHIM, "--", "true"]),
        Case("floor: python -c 'import requests, tenacity'", [PYTHON, "-c", "import requests, tenacity"]),
        Case("python -c pass", [PYTHON, "-c", "pass"]),
        *(
            Case(
                f"{client} alone: 4 requests + exec", [PYTHON, str(HERE / "client_floor.py"), client, "true"]
            )
            for client in ("requests", "urllib3", "http.client")
        ),
        Case("imds-shim step-aside (keys preset)", [SHIM, "--", "true"], keys),
        Case(SERVE_CASE, [SHIM, "--serve", "--", "true"]),
        Case("imds-shim export", [SHIM, "export"]),
        Case("imds-shim credential-process", [SHIM, "credential-process"]),
    ]
    skipped = []
    for label, executable in others.items():
        cases += [
            Case(f"{label}: imds-shim -- true", [executable, "--", "true"]),
            Case(f"{label}: step-aside (keys preset)", [executable, "--", "true"], keys),
        ]
    if "bundle" not in others:
        skipped.append("the bundle: no --other bundle=PATH given (make bundle, then make bench)")
    if shutil.which("curl") and shutil.which("jq"):
        cases.append(Case("curl + jq recipe", ["sh", str(HERE / "curl_recipe.sh"), "true"]))
    else:
        skipped.append("curl + jq recipe: curl or jq not installed")
    if subprocess.run([PYTHON, "-c", "import boto3"], capture_output=True).returncode == 0:
        cases.append(Case("boto3 provider + exec", [PYTHON, "-c", BOTO3_EXEC]))
    else:
        skipped.append("boto3 provider: boto3 not installed in this interpreter")
    version = (
        subprocess.run([AWS_CLI, "--version"], capture_output=True, text=True)
        if os.path.exists(AWS_CLI)
        else None
    )
    if version is not None and version.stdout.startswith("aws-cli/2"):
        cases.append(Case("AWS CLI v2 export-credentials + exec", ["sh", "-c", AWS_CLI_EXEC]))
    else:
        skipped.append(f"AWS CLI v2: {AWS_CLI} missing or not v2 (Debian package awscli)")
    return cases, skipped


def requests_per_run(base_env: dict[str, str]) -> int:
    """How many requests one `imds-shim -- true` sends, from its own -vv lines."""
    completed = subprocess.run(
        [SHIM, "-vv", "--", "true"], env=base_env, capture_output=True, text=True, check=True
    )
    return sum(": debug: " in line and " -> " in line for line in completed.stderr.splitlines())


def endpoint_load(base_env: dict[str, str], runs: int, rest: float) -> dict[str, float]:
    """The --serve supervisor at rest for ``rest`` seconds (wakeups, PSS), then 10000 requests from
    50 concurrent clients (bench/endpoint_load.py); each figure the median of ``runs`` runs."""
    load = [
        PYTHON,
        str(HERE / "endpoint_load.py"),
        "--requests",
        "10000",
        "--clients",
        "50",
        "--rest",
        str(rest),
    ]
    measured: list[dict[str, float]] = []
    for _ in range(runs):
        completed = subprocess.run(
            [SHIM, "--serve", "--", *load], env=base_env, capture_output=True, text=True, check=True
        )
        measured.append(json.loads(completed.stdout))
    numbers = [name for name, value in measured[0].items() if isinstance(value, (int, float))]
    medians = {name: statistics.median(run[name] for run in measured) for name in numbers}
    medians["runs"] = runs
    return medians


def labelled_executable(value: str) -> tuple[str, str]:
    """``--other LABEL=EXECUTABLE``, checked: the executable must exist and be runnable."""
    label, _, executable = value.partition("=")
    if not label or not os.access(executable, os.X_OK):
        raise argparse.ArgumentTypeError(f"expected LABEL=EXECUTABLE, got {value!r}")
    return label, executable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--endpoint-runs", type=int, default=3, help="runs of the --serve supervisor's figures"
    )
    parser.add_argument("--rest", type=float, default=10.0, help="seconds at rest to count its wakeups over")
    parser.add_argument(
        "--other",
        action="append",
        default=[],
        metavar="LABEL=EXECUTABLE",
        type=labelled_executable,
        help="another imds-shim to measure in the same rounds (bundle=... for the "
        "self-contained build, whose target is checked)",
    )
    args = parser.parse_args()

    simulator, url = start_simulator()
    base_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ["HOME"],
        "LANG": "C.UTF-8",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": url,
    }
    try:
        others = dict(args.other)
        cases, skipped = available_cases(others)
        for _ in range(args.warmup):
            for case in cases:
                run_once(case, base_env)
                case.times.clear()
                case.rss_kib.clear()
        for round_number in range(args.rounds):
            shift = round_number % len(cases)
            for case in cases[shift:] + cases[:shift]:
                run_once(case, base_env)
        requests = requests_per_run(base_env)
        endpoint = endpoint_load(base_env, args.endpoint_runs, args.rest)
    finally:
        simulator.terminate()
        simulator.wait()
    return report(cases, skipped, requests, endpoint, args)


def report(
    cases: list[Case], skipped: list[str], requests: int, endpoint: dict[str, float], args: argparse.Namespace
) -> int:
    by_name = {case.name: case for case in cases}
    shim = by_name["imds-shim -- true"].median_ms
    floor = by_name["floor: python -c 'import requests, tenacity'"].median_ms
    print(
        f"imds-shim start-up benchmark, {date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{args.rounds} interleaved rounds"
    )
    print(f"{'command':<44} {'median ms':>9} {'x floor':>8} {'/ shim':>7} {'peak RSS MiB':>12}")
    for case in cases:
        print(
            f"{case.name:<44} {case.median_ms:>9.1f} {case.median_ms / floor:>8.2f} "
            f"{case.median_ms / shim:>7.2f} {statistics.median(case.rss_kib) / 1024:>12.1f}"
        )
    for reason in skipped:
        print(f"skipped: {reason}")
    print(f"IMDS requests per `imds-shim -- true`: {requests}")
    print(
        f"--serve supervisor, median of {endpoint['runs']:g} runs: {endpoint['switches_at_rest']:g} context "
        f"switches in {endpoint['rest_seconds']:g} s at rest, PSS {endpoint['pss_mib_at_rest']:.2f} MiB; "
        f"10000 requests from 50 concurrent keep-alive clients: p50 {endpoint['p50_ms']} ms, "
        f"p99 {endpoint['p99_ms']} ms, max {endpoint['max_ms']} ms; peak RSS {endpoint['peak_rss_mib']} MiB"
    )

    targets = [
        ("imds-shim -- true <= 1.0 x floor", shim / floor, shim <= floor),
        (
            "step-aside <= 20 ms",
            by_name["imds-shim step-aside (keys preset)"].median_ms,
            by_name["imds-shim step-aside (keys preset)"].median_ms <= 20,
        ),
        ("<= 4 IMDS requests per run", requests, requests <= 4),
        (
            "--serve -- true <= 1.05 x imds-shim -- true",
            by_name[SERVE_CASE].median_ms / shim,
            by_name[SERVE_CASE].median_ms <= 1.05 * shim,
        ),
        (
            f"--serve at rest: <= 3 context switches in {endpoint['rest_seconds']:g} s",
            endpoint["switches_at_rest"],
            endpoint["switches_at_rest"] <= 3,
        ),
        ("--serve supervisor PSS <= 12 MiB", endpoint["pss_mib_at_rest"], endpoint["pss_mib_at_rest"] <= 12),
        ("--serve endpoint p99 <= 3 ms (50 clients)", endpoint["p99_ms"], endpoint["p99_ms"] <= 3),
        ("--serve endpoint peak RSS <= 60 MiB", endpoint["peak_rss_mib"], endpoint["peak_rss_mib"] <= 60),
    ]
    if BUNDLE_CASE in by_name:
        ratio = by_name[BUNDLE_CASE].median_ms / shim
        targets.append(("bundle fetch + exec <= 1.0 x the pip-installed shim", ratio, ratio <= 1.0))
        aside = (
            by_name[BUNDLE_STEP_ASIDE_CASE].median_ms
            / by_name["imds-shim step-aside (keys preset)"].median_ms
        )
        targets.append(("bundle step-aside <= 1.3 x the pip-installed shim's", aside, aside <= 1.3))
    if "boto3 provider + exec" in by_name:
        ratio = by_name["boto3 provider + exec"].median_ms / shim
        targets.append(("boto3 provider >= 1.3 x slower", ratio, ratio >= 1.3))
    if "AWS CLI v2 export-credentials + exec" in by_name:
        ratio = by_name["AWS CLI v2 export-credentials + exec"].median_ms / shim
        targets.append(("AWS CLI v2 >= 3.5 x slower", ratio, ratio >= 3.5))
    if "curl + jq recipe" in by_name:
        ratio = shim / by_name["curl + jq recipe"].median_ms
        targets.append(("imds-shim <= 1.35 x curl + jq", ratio, ratio <= 1.35))
        if BUNDLE_CASE in by_name:
            ratio = by_name[BUNDLE_CASE].median_ms / by_name["curl + jq recipe"].median_ms
            targets.append(("bundle fetch + exec <= 1.0 x curl + jq", ratio, ratio <= 1.0))
        # Not a target: what the HTTP client alone costs against curl + jq, on this Python.
        alone = by_name[REQUESTS_ALONE_CASE].median_ms / by_name["curl + jq recipe"].median_ms
        print(f"requests alone (bench/client_floor.py) / curl + jq: {alone:.2f}")
    missed = 0
    for label, value, met in targets:
        missed += not met
        print(f"target {'met   ' if met else 'MISSED'} {label}: {value:.2f}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
