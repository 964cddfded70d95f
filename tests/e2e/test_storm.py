"""A storm on one machine: many starts at once through an IMDS packet allowance (bench/storm.py).

The bench builds its own two network namespaces, an ``iptables -m limit`` allowance between them
in both directions, the simulator at 169.254.169.254, and EC2's DMI facts for the clients in a
mount namespace of their own; this test runs a smaller storm than the bench's default (30
starts, the allowance scaled with them: about five times over-subscribed at the peak) and holds
the verdicts, not the times.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import missing, under_test

from .netns import why_no_namespaces

STORM = Path(__file__).resolve().parents[2] / "bench" / "storm.py"
SHIM_ROWS = "imds-shim,imds-shim (IMDSv2 only)"


def storm(*args: str) -> list[dict[str, Any]]:
    reason = why_no_namespaces()
    if reason:
        missing(reason)
    for tool in ("iptables", "unshare"):
        if shutil.which(tool) is None:
            missing(f"{tool} is missing (Debian packages iptables, util-linux)")
    completed = subprocess.run(
        [sys.executable, str(STORM), "--shim", under_test().SHIM, "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    rows: list[dict[str, Any]] = json.loads(completed.stdout)
    return rows


@pytest.mark.serial  # 30 starts take both cores: alone, so no other test pays
def test_thirty_starts_through_a_spent_allowance_are_all_served_and_never_misjudged() -> None:
    """30 at once, EC2's DMI facts, 60 packets/s both ways: every start gets its keys, with
    IMDSv1 allowed and with IMDSv2 only; no line says "not EC2" or blames the hop limit."""
    rows = storm("--starts", "30", "--allowance", "60", "--burst", "10", "--clients", SHIM_ROWS)
    assert [row["client"] for row in rows] == SHIM_ROWS.split(",")
    for row in rows:
        assert row["dropped"] > 0, row  # the allowance was spent: a storm, not a quiet start
        assert (row["succeeded"], row["misdiagnosed"]) == (30, 0), row
        assert row["slowest"] <= 30, row  # the default deadline


@pytest.mark.serial
def test_a_start_sends_at_most_fifteen_packets() -> None:
    """One start, nothing dropped: one connection, four requests, closed with a reset."""
    (row,) = storm("--starts", "1", "--allowance", "10000", "--burst", "10000", "--clients", "imds-shim")
    assert (row["succeeded"], row["dropped"]) == (1, 0), row
    assert row["passed"] <= 15, row
