"""Promises the README and --help make that no other test held: each runs the real shim against
the simulator, and each was seen to fail against a build with its code broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable

import pytest
from helpers import (
    SAY_ENDPOINT,
    SHIM,
    Running,
    alive,
    ask_endpoint,
    children,
    clean_env,
    closed_port,
    probe_command,
    run_shim,
)

from shim.simulator.server import Simulator

pytestmark = pytest.mark.behaviour


def issued_keys(sim: Simulator) -> set[str]:
    return {issued.access_key_id for issued in sim.state.issued.values()}


@pytest.mark.parametrize("expect_role", [True, False], ids=["expect-role", "no-expect-role"])
def test_a_role_that_changes_at_renewal_is_refused_or_announced(
    simulator: Callable[..., Simulator], running: Callable[..., Running], expect_role: bool
) -> None:
    """The instance's role changes while --serve runs. With --expect-role the renewal is refused,
    said so in a warning, and the new role's keys are never served; without it, the shim warns
    that the role changed and serves the new role's keys."""
    port = closed_port()
    first = simulator(port=port, role_name="app-role", expires_in=4, rotate_every=60)
    expect = ["--expect-role", "app-role"] if expect_role else []
    shim = running(
        ["--serve", *expect, "--", sys.executable, "-c", SAY_ENDPOINT],
        AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{port}",
    )
    url, token = shim.wait_for(lambda line: True, stream="stdout").split()
    status, document = ask_endpoint(url, token)
    assert (status, document["AccessKeyId"] in issued_keys(first)) == (200, True)
    first.stop()
    second = simulator(port=port, role_name="other-role", rotate_every=60)
    if expect_role:
        refused = shim.wait_for(lambda line: "renewal failed" in line)
        assert "--expect-role app-role" in refused
        assert "other-role" in refused
        status, document = ask_endpoint(url, token)
        assert document.get("AccessKeyId") not in issued_keys(second), document
    else:
        changed = shim.wait_for(lambda line: "role changed" in line)
        assert "the instance's role changed from app-role to other-role" in changed
        status, document = ask_endpoint(url, token)
        assert (status, document["AccessKeyId"] in issued_keys(second)) == (200, True)
    returncode, _, stderr = shim.finish()
    assert returncode == 0, stderr


@pytest.mark.parametrize(
    ("mode", "sees"),
    [
        (["--serve"], "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        (["--expiry-signal", "USR1"], "AWS_ACCESS_KEY_ID"),
        (["--refresh"], "AWS_CONFIG_FILE"),
    ],
    ids=["serve", "expiry-signal", "refresh"],
)
def test_init_goes_with_each_mode(sim: Simulator, mode: list[str], sees: str) -> None:
    """--init with --serve, --expiry-signal or --refresh: the command gets what that mode hands
    out, and the shim stays as its parent (its PPID is the shim's PID, not the test's)."""
    process = subprocess.Popen(
        [SHIM, "--init", *mode, "--", *probe_command()],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    report = json.loads(output)
    assert sees in report["env"]
    assert report["ppid"] == process.pid  # supervised: the shim is the command's parent
    assert report["pid"] != process.pid


@pytest.mark.parametrize("how", ["killed", "the command ends"])
def test_a_renewal_child_leaves_nothing_running(
    simulator: Callable[..., Simulator], running: Callable[..., Running], how: str
) -> None:
    """A renewal hangs on an IMDS that no longer answers. Killed (the OOM killer, say), the child
    is reaped, the failure logged, and the shim serves on; when the command ends instead, the
    shim ends, and its renewal child with it: nothing of the shim's is left."""
    port = closed_port()
    first = simulator(port=port, expires_in=3, rotate_every=60)
    shim = running(
        ["--serve", "--timeout", "30", "--", sys.executable, "-c", SAY_ENDPOINT],
        AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{port}",
    )
    url, token = shim.wait_for(lambda line: True, stream="stdout").split()
    first.stop()
    simulator(port=port, latency=120)  # accepts, then answers nothing for two minutes
    command = children(shim.pid)[0]
    ends = time.monotonic() + 30
    while len(kids := children(shim.pid)) < 2:  # the renewal child has started
        assert time.monotonic() < ends, "no renewal started"
        time.sleep(0.05)
    (renewal,) = [child for child in kids if child != command]
    if how == "killed":
        os.kill(renewal, 9)
        failed = shim.wait_for(lambda line: "renewal failed" in line)
        assert "(1 in a row)" in failed
        assert not alive(renewal)  # reaped, not a zombie
        assert ask_endpoint(url, token)[0] in (200, 503)  # the endpoint still answers
        returncode, _, _ = shim.finish()
    else:
        returncode, _, _ = shim.finish()
    assert returncode == 0
    assert not alive(renewal)
    assert not alive(command)


@pytest.mark.parametrize(("word", "optional"), [("yes", True), ("on", True), ("no", False), ("off", False)])
def test_boolean_words_for_a_switch(word: str, optional: bool) -> None:
    """IMDS_SHIM_OPTIONAL=yes/on runs the command without credentials off EC2; no/off does not."""
    result = run_shim(["--", "sh", "-c", "echo ran"], env=clean_env(IMDS_SHIM_OPTIONAL=word))
    assert (result.returncode, result.stdout) == ((0, "ran\n") if optional else (125, ""))


def test_quiet_keeps_errors_and_drops_warnings(simulator: Callable[..., Simulator]) -> None:
    """-q: the hop-limit fallback's warning is not printed; a failure's error still is."""
    fallback = simulator(token_hang=True)  # the hop-limit fallback: a warning
    warned = run_shim(["--", "true"], endpoint=fallback.url)
    quiet = run_shim(["-q", "--", "true"], endpoint=fallback.url)
    assert warned.stderr.startswith(
        "imds-shim: warning: the IMDSv2 token request connected but got no answer"
    )
    no_role = simulator(no_role=True)
    failed = run_shim(["-q", "--", "true"], endpoint=no_role.url)
    assert (quiet.returncode, quiet.stderr) == (0, "")
    assert failed.returncode == 125
    assert failed.stderr.startswith("imds-shim: error: no IAM role is attached")


def test_the_pid_variable_names_the_supervisor_to_ask(
    sim: Simulator, running: Callable[..., Running]
) -> None:
    """IMDS_SHIM_PID=PID is --pid PID: status asks that supervisor, and a PID that is not one is unhealthy."""
    shim = running(
        ["--init", "--", sys.executable, "-c", SAY_ENDPOINT], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url
    )
    shim.wait_for(lambda line: True, stream="stdout")
    asked = subprocess.run(
        [SHIM, "status"], env={"IMDS_SHIM_PID": str(shim.pid)}, capture_output=True, text=True
    )
    assert asked.returncode == 0, asked.stdout
    assert asked.stdout.startswith("imds-shim status: ok: mode --init, role imds-shim-simulated-role")
    other = subprocess.run(
        [SHIM, "status"], env={"IMDS_SHIM_PID": str(os.getpid())}, capture_output=True, text=True
    )
    assert other.returncode == 1, other.stdout
    shim.finish()
