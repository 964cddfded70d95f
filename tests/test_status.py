"""``imds-shim status``: one line and 0 or 1, from another process with none of the command's variables.

It is run the way ``docker exec``, a Docker HEALTHCHECK or a Kubernetes exec probe runs it: a
process of its own beside the supervised command, here with an empty environment.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from typing import Callable

import pytest
from helpers import SHIM, START_SLACK, clean_env, run_shim

from shim.simulator import Simulator

pytestmark = pytest.mark.behaviour

# The command: says it is up, then waits for the test to finish with it.
WAIT = [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"]


def supervised(args: list[str], sim: Simulator, **env: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [SHIM, *args, "--", *WAIT],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "up\n"
    return process


def finish(process: subprocess.Popen[str]) -> str:
    _, stderr = process.communicate("", timeout=30)
    return stderr


def status(process: subprocess.Popen[str] | None = None) -> tuple[int, str]:
    """``imds-shim status`` with an empty environment, as a health check runs it; with ``--pid``
    of ``process`` when given (the parallel suites run many supervisors on one host, where a
    container has one)."""
    pid = [] if process is None else ["--pid", str(process.pid)]
    completed = subprocess.run([SHIM, "status", *pid], env={}, capture_output=True, text=True, timeout=30)
    assert completed.stderr == ""
    return completed.returncode, completed.stdout


@pytest.mark.parametrize(
    ("args", "mode"),
    [(["--serve"], "--serve"), (["--expiry-signal", "HUP"], "--expiry-signal"), (["--init"], "--init")],
    ids=["serve", "expiry-signal", "init"],
)
def test_a_supervised_container_is_healthy_and_says_how_it_stands(
    sim: Simulator, args: list[str], mode: str
) -> None:
    """Exit 0; one line: mode, role, masked key, expiry, last renewal, failures; no secret."""
    process = supervised(args, sim)
    code, output = status(process)
    finish(process)
    assert code == 0, output
    (line,) = output.splitlines()
    issued = next(iter(sim.state.issued.values()))
    masked = f"{issued.access_key_id[:4]}…{issued.access_key_id[-4:]}"
    assert re.fullmatch(
        rf"imds-shim status: ok: mode {mode}, role imds-shim-simulated-role, key {masked}, "
        r"expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in 5h5\dm\), last renewal none yet, 0 failures in a row",
        line,
    ), line
    for secret in (issued.secret_access_key, issued.token, issued.access_key_id):
        assert secret not in output


@pytest.mark.serial  # alone, as in a container: no other test's supervisor is there to answer
def test_status_finds_the_supervisor_by_itself(sim: Simulator) -> None:
    """No --pid, no variables (a HEALTHCHECK): the supervisor in this PID namespace is found."""
    process = supervised(["--serve"], sim)
    code, output = status()
    finish(process)
    assert code == 0, output
    assert output.startswith("imds-shim status: ok: mode --serve, ")


@pytest.mark.serial  # alone: no other test's supervisor may answer
def test_no_supervisor_is_unhealthy_and_says_why() -> None:
    """Nothing supervising here (the default exec mode, or no imds-shim at all): 1, and why."""
    code, output = status()
    assert code == 1
    assert output.startswith("imds-shim status: unhealthy: no imds-shim supervisor answered")


def test_stepping_aside_is_healthy(sim: Simulator) -> None:
    """Another identity configured (IRSA here): the command uses it, which is healthy."""
    process = supervised(["--init"], sim, AWS_WEB_IDENTITY_TOKEN_FILE="/var/run/token")
    code, output = status(process)
    finish(process)
    assert code == 0, output
    assert "stepped aside: AWS_WEB_IDENTITY_TOKEN_FILE is set" in output


@pytest.mark.timed  # seconds of waiting for a set to expire; asks its supervisor by PID
def test_unhealthy_once_imds_is_gone_and_the_set_has_expired_then_healthy_again(
    simulator: Callable[..., Simulator],
) -> None:
    """IMDS stops: healthy while the set lasts, unhealthy (with the failures and why) once it has
    expired, healthy again once IMDS is back and a renewal got through."""
    sim = simulator(expires_in=3, rotate_every=60)
    port = int(sim.url.rsplit(":", 1)[1])
    process = supervised(["--serve"], sim)
    sim.stop()
    assert status(process)[0] == 0
    deadline = time.monotonic() + 15
    while (checked := status(process))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    code, output = checked
    assert code == 1, output
    assert re.search(r"expired at \S+, last renewal none yet, [1-9]\d* failures in a row", output), output
    assert "IMDS stopped answering" in output
    back = simulator(port=port)
    deadline = time.monotonic() + 40
    while (checked := status(process))[0] != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    stderr = finish(process)
    assert checked[0] == 0, (checked, stderr)
    assert "0 failures in a row" in checked[1]
    assert back.requests
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ imds-shim: warning: --serve: renewed again after", stderr, re.M
    )


def test_a_process_of_another_user_is_told_nothing(sim: Simulator) -> None:
    """SO_PEERCRED: only the supervisor's own user and root are answered."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    from shim.lifetime.status import socket_name

    process = supervised(["--init"], sim)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        os.setuid(65534)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(5)
        client.connect(socket_name(process.pid))
        os.write(write, client.recv(4096) or b"nothing")
        os._exit(0)
    os.close(write)
    told = os.read(read, 4096)
    os.waitpid(child, 0)
    finish(process)
    assert told == b"nothing"


def test_lines_after_the_command_started_carry_a_utc_timestamp(simulator: Callable[..., Simulator]) -> None:
    """Read hours later, a renewal line says when; lines before the command starts stay as they were."""
    sim = simulator(expires_in=2)
    result = run_shim(["-v", "--serve", "--", "sleep", str(3 + START_SLACK)], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("imds-shim: info: role ")
    renewed = [line for line in lines if "--serve: renewed" in line]
    assert renewed, lines
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ imds-shim: info: ", line) for line in renewed)


def test_status_takes_no_command_and_no_option_but_pid() -> None:
    """Bad input: one line, 125."""
    for args in (["status", "--", "true"], ["status", "--serve"], ["status", "--pid", "0"]):
        result = run_shim(args)
        assert result.returncode == 125
        assert len(result.stderr.splitlines()) == 1
