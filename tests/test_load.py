"""A herd: many containers starting at once against a throttling IMDS."""

from __future__ import annotations

import subprocess
import time
from typing import Callable

import pytest
from helpers import SHIM, clean_env

from shim.simulator import Simulator

SHIMS = 100
RATE = 50  # requests per second; real IMDS throttles per instance and sends no Retry-After
NEEDED = 4 * SHIMS  # token, role, credentials, identity document
UNHURRIED = ("--timeout", "10", "--deadline", "110")


def test_herd_of_100_against_throttling_imds(
    simulator: Callable[..., Simulator], capsys: pytest.CaptureFixture[str]
) -> None:
    """100 shims at once, IMDS at 50 req/s: all succeed, and at most 2x the needed requests arrive.

    What is measured is the answer to throttling (429), not the machine's speed: a generous
    --timeout and --deadline keep a machine under load (it failed once at load 15) from adding
    timed-out requests of its own. The 429 backoff is the same at any --timeout."""
    sim = simulator(throttle=RATE)
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    started = time.monotonic()
    herd = [
        subprocess.Popen(
            [SHIM, *UNHURRIED, "--", "true"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(SHIMS)
    ]
    failures = []
    for process in herd:
        _, stderr = process.communicate(timeout=120)
        if process.returncode != 0:
            failures.append(stderr.strip())
    elapsed = time.monotonic() - started
    total = len(sim.requests)
    throttled = sum(r.status == 429 for r in sim.requests)
    with capsys.disabled():
        print(
            f"\nherd: {SHIMS} shims, IMDS at {RATE} req/s: {elapsed:.1f} s, {total} requests "
            f"({total / NEEDED:.2f} x the {NEEDED} needed), {throttled} answered 429, "
            f"{len(failures)} failed"
        )
    assert failures == []
    assert total - throttled == NEEDED
    assert total <= 2 * NEEDED
