"""The two situations loopback cannot show: one router hop from IMDS, and no IMDS at all.

Run with the shim's defaults (no endpoint override) inside the namespaces of conftest.py.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from helpers import HOP_LIMIT_SECONDS, OFF_EC2_SECONDS, budget, under_test

from .netns import StartImds, Topology, record, shim_env

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour

ENV_REPORT = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


def timed(topology: Topology, namespace: str, args: list[str]) -> tuple[float, object]:
    started = time.monotonic()
    completed = topology.run(namespace, [under_test().SHIM, *args], env=shim_env())
    return time.monotonic() - started, completed


def test_hop_limit_2_imdsv2_required_works_from_the_container(topology: Topology, imds: StartImds) -> None:
    """Hop limit 2, IMDSv2 required: the container gets credentials through the host."""
    imds("--hop-limit", "2", "--imds-v2-required")
    seconds, completed = timed(topology, topology.container, ["--", *ENV_REPORT])
    record("hop limit 2, IMDSv2 required, container: credentials", seconds)
    assert completed.returncode == 0, completed.stderr  # type: ignore[attr-defined]
    env = json.loads(completed.stdout)  # type: ignore[attr-defined]
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    assert env["AWS_SESSION_TOKEN"] == env["AWS_SECURITY_TOKEN"]


def test_hop_limit_1_falls_back_to_imdsv1_with_a_warning(topology: Topology, imds: StartImds) -> None:
    """Hop limit 1, IMDSv1 allowed: works in <= 6 s, warning about the hop limit."""
    imds("--hop-limit", "1")
    seconds, completed = timed(topology, topology.container, ["--", *ENV_REPORT])
    record("hop limit 1, IMDSv1 allowed, container: IMDSv1 fallback", seconds)
    assert completed.returncode == 0, completed.stderr  # type: ignore[attr-defined]
    assert json.loads(completed.stdout)["AWS_ACCESS_KEY_ID"].startswith("ASIA")  # type: ignore[attr-defined]
    assert "hop limit" in completed.stderr  # type: ignore[attr-defined]
    assert seconds <= budget(HOP_LIMIT_SECONDS)


def test_hop_limit_1_imdsv2_required_is_diagnosed(topology: Topology, imds: StartImds) -> None:
    """Hop limit 1, IMDSv2 required: 125 in <= 6 s naming the hop limit and the fix."""
    imds("--hop-limit", "1", "--imds-v2-required")
    seconds, completed = timed(topology, topology.container, ["--", "true"])
    record("hop limit 1, IMDSv2 required, container: diagnosis", seconds)
    assert completed.returncode == 125  # type: ignore[attr-defined]
    assert "hop limit is probably 1" in completed.stderr  # type: ignore[attr-defined]
    assert "--http-put-response-hop-limit 2" in completed.stderr  # type: ignore[attr-defined]
    assert seconds <= budget(HOP_LIMIT_SECONDS)
    host_seconds, on_host = timed(topology, topology.host, ["--", *ENV_REPORT])
    record("hop limit 1, IMDSv2 required, host: credentials", host_seconds)
    assert on_host.returncode == 0, on_host.stderr  # type: ignore[attr-defined]


@pytest.mark.parametrize("optional", [False, True], ids=["fails", "optional"])
def test_not_on_ec2(topology: Topology, optional: bool) -> None:
    """No IMDS (packets silently dropped): 125 saying unreachable, or --optional runs the command."""
    args = ["--optional", "--", *ENV_REPORT] if optional else ["--", "true"]
    seconds, completed = timed(topology, topology.offec2, args)
    record(f"not on EC2{', --optional' if optional else ''}: verdict", seconds)
    assert seconds <= budget(OFF_EC2_SECONDS)
    if optional:
        assert completed.returncode == 0  # type: ignore[attr-defined]
        assert "AWS_ACCESS_KEY_ID" not in json.loads(completed.stdout)  # type: ignore[attr-defined]
    else:
        assert completed.returncode == 125  # type: ignore[attr-defined]
        assert "unreachable" in completed.stderr  # type: ignore[attr-defined]
