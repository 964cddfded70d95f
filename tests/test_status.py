"""``imds-shim status``: one line and 0 or 1, from another process with none of the command's variables.

It is run the way ``docker exec``, a Docker HEALTHCHECK or a Kubernetes exec probe runs it: a
process of its own beside the supervised command, here with an empty environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import (
    SAY_ENDPOINT,
    SHIM,
    Running,
    ask_endpoint,
    budget,
    children,
    clean_env,
    hammering,
    missing,
    own_pid_namespace,
    run_shim,
)

from shim.simulator.server import Simulator

pytestmark = pytest.mark.behaviour

PROGRAMS = Path(__file__).parent / "programs"
# The command: says it is up, then waits for the test to finish with it.
WAIT = [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"]


def supervised(args: list[str], sim: Simulator, **env: str) -> Running:
    """A supervised shim whose command has said "up" (killed with its session after the test,
    whatever happens: conftest's _no_process_outlives_its_test)."""
    process = Running([*args, "--", *WAIT], clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **env))
    assert process.wait_for(lambda line: True, stream="stdout") == "up\n"
    return process


def finish(process: Running | subprocess.Popen[str]) -> str:
    """Close the command's stdin and wait: the shim's stderr."""
    if isinstance(process, Running):
        return process.finish()[2]
    _, stderr = process.communicate("", timeout=30)
    return stderr


def status(process: Running | subprocess.Popen[Any] | None = None) -> tuple[int, str]:
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
    """No --pid, no variables (a HEALTHCHECK): the supervisor in this PID namespace is found. The
    shim is PID 1 of a PID namespace of its own, as in a container, and its command asks."""
    completed = subprocess.run(
        [*own_pid_namespace(), SHIM, "--serve", "--", "env", "-i", SHIM, "status"],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.startswith("imds-shim status: ok: mode --serve, ")


def test_no_supervisor_is_unhealthy_and_says_why() -> None:
    """Nothing supervising in this PID namespace (the default exec mode, or no imds-shim at
    all), whatever runs beside it on the machine: 1, and why."""
    completed = subprocess.run(
        [*own_pid_namespace(), SHIM, "status"], env={}, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 1
    assert completed.stdout.startswith("imds-shim status: unhealthy: no imds-shim supervisor answered")


def test_stepping_aside_is_healthy(sim: Simulator) -> None:
    """Another identity configured (IRSA here): the command uses it, which is healthy."""
    process = supervised(["--init"], sim, AWS_WEB_IDENTITY_TOKEN_FILE="/var/run/token")
    code, output = status(process)
    finish(process)
    assert code == 0, output
    assert "stepped aside: AWS_WEB_IDENTITY_TOKEN_FILE is set" in output


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
        missing("switching to another user needs root")
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


def test_lines_after_the_command_started_carry_a_utc_timestamp(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """Read hours later, a renewal line says when; lines before the command starts stay as they were."""
    sim = simulator(expires_in=2)
    shim = running(
        ["-v", "--serve", "--", "sh", "-c", "read line"], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url
    )
    shim.wait_for(lambda line: "--serve: renewed" in line)
    returncode, _, stderr = shim.finish("\n")
    assert returncode == 0, stderr
    lines = stderr.splitlines()
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


# Binds the status name the shim will want (it will have this PID once exec'd), hands it to a
# forked squatter that answers everyone "ok" with a role of its own, then execs the shim.
# A squatter that binds the status name the shim will want (the shim will have this PID once
# exec'd) and answers everyone "ok" with a role of its own; the shim is exec'd once it listens.
SQUAT_THEN_EXEC = r"""
import json, os, socket, sys
from shim.lifetime.status import socket_name
ready_read, ready_write = os.pipe()
squatter = os.fork()
if squatter == 0:
    squat = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squat.bind(socket_name(os.getppid()))
    squat.listen(64)
    os.write(ready_write, b"x")
    lie = {"mode": "--serve", "role": "SQUATTER-ROLE", "key": "ASIA…SQAT", "expires_at": 4102444800.0,
           "renewed_at": None, "failures": 0, "last_error": None, "note": None}
    while True:
        peer, _ = squat.accept()
        peer.send(json.dumps(lie).encode())
        peer.close()
assert os.read(ready_read, 1) == b"x"
with open(os.environ.pop("SQUATTER_PIDFILE"), "w") as pidfile:
    pidfile.write(str(squatter))
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_a_squatter_on_the_name_is_not_believed_and_the_supervisor_stays_reachable(
    sim: Simulator, tmp_path: Path
) -> None:
    """Another process bound the supervisor's name first: status answers from the supervisor
    (under its suffixed name), never the squatter's "ok"; the supervisor says so once."""
    pidfile = tmp_path / "squatter"
    process = subprocess.Popen(
        [sys.executable, "-c", SQUAT_THEN_EXEC, SHIM, "--serve", "--", *WAIT],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, SQUATTER_PIDFILE=str(pidfile)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "up\n"
        code, output = status(process)
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    stderr = finish(process)
    assert code == 0, output
    assert output.startswith("imds-shim status: ok: mode --serve, role imds-shim-simulated-role, ")
    assert "SQUATTER" not in output
    held = [line for line in stderr.splitlines() if "holds the name" in line]
    assert len(held) == 1, stderr
    assert re.search(r"imds-shim: warning: status: another process in this network namespace holds", held[0])


def test_a_name_held_by_someone_else_is_not_my_supervisor(tmp_path: Path) -> None:
    """status --pid of a process whose name another process holds: unhealthy, and whose it is."""
    from shim.lifetime.status import socket_name

    target = subprocess.Popen(["sleep", "60"])
    squat = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        squat.bind(socket_name(target.pid))
        squat.listen(8)
        code, output = status(target)
    finally:
        squat.close()
        target.kill()
        target.wait()
    assert code == 1
    assert output == (
        f"imds-shim status: unhealthy: the status socket of PID {target.pid} is held by another process "
        f"(PID {os.getpid()}, uid {os.geteuid()}), not by imds-shim's supervisor\n"
    )


def _connect_50_times(name: bytes) -> bool:
    for _ in range(50):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        with contextlib.suppress(OSError):
            client.connect(name)
        client.close()
    return True


@pytest.mark.serial  # two flooders take both cores: alone, so no other test pays
def test_health_checks_answer_through_a_connect_flood_from_another_user(sim: Simulator) -> None:
    """Two processes of another user flood the supervisor's socket with connections: every one of
    twenty health checks still answers ok."""
    if os.geteuid() != 0:
        missing("flooding as another user needs root")
    from shim.lifetime.status import socket_name

    process = supervised(["--serve"], sim)
    stop_read, stop_write = os.pipe()
    name = socket_name(process.pid)
    flooders = [hammering(lambda: _connect_50_times(name), stop_read, user=65534) for _ in range(2)]
    os.close(stop_read)
    try:
        results = [status(process) for _ in range(20)]
    finally:
        os.close(stop_write)
        for flooder in flooders:
            os.waitpid(flooder, 0)
    finish(process)
    assert [code for code, _ in results] == [0] * 20, [output for code, output in results if code]


def _get_seconds(url: str, token: str) -> float:
    started = time.monotonic()
    code, _ = ask_endpoint(url, token)
    assert code == 200
    return time.monotonic() - started


@pytest.mark.serial  # two flooders take both cores: alone, so no other test pays
def test_a_connect_flood_on_the_status_socket_does_not_hold_up_the_endpoint(sim: Simulator) -> None:
    """Another user connects to the status socket as fast as two C processes can: credential
    GETs take within 50 ms of what they take at rest (the loop takes a few connections a turn)."""
    if os.geteuid() != 0:
        missing("flooding as another user needs root")
    compiler = shutil.which("cc")
    if compiler is None:
        missing("no C compiler (Debian package gcc)")
    from shim.lifetime.status import socket_name

    # Where uid 65534 may run it: pytest's own temporary folders are root's alone.
    folder = Path(tempfile.mkdtemp(prefix="imds-shim-flood-"))
    folder.chmod(0o755)
    flood = folder / "connect_flood"
    subprocess.run([compiler, "-O2", "-o", str(flood), str(PROGRAMS / "connect_flood.c")], check=True)
    process = Running(
        ["--serve", "--", sys.executable, "-c", SAY_ENDPOINT],
        clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
    )
    url, token = process.wait_for(lambda line: True, stream="stdout").split()
    at_rest = statistics.median(_get_seconds(url, token) for _ in range(20))
    name = socket_name(process.pid)[1:].decode()
    flooders = [
        subprocess.Popen([str(flood), name], stdin=subprocess.PIPE, user=65534, group=65534) for _ in range(2)
    ]
    try:
        flooded = [_get_seconds(url, token) for _ in range(20)]
    finally:
        for flooder in flooders:
            assert flooder.stdin is not None
            flooder.stdin.close()
            flooder.wait(timeout=30)
        shutil.rmtree(folder)
    process.finish()
    assert statistics.median(flooded) <= at_rest + 0.05, (at_rest, flooded)
    assert max(flooded) <= at_rest + 0.25, (at_rest, flooded)


def _in_own_pid_namespace(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*own_pid_namespace(), "sh", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )


def _up(shim: str, args: str, wrapper: str = "") -> str:
    """A sh fragment: start a supervised `sleep` in the background (ended with the namespace's
    PID 1, the script), and wait until it answers status --pid, healthy or not."""
    return (
        f"{wrapper} {shim} {args} -- sleep 120 > /dev/null 2>&1 & pid=$!; "
        f"until {shim} status --pid $pid 2>&1 | grep -q 'mode'; do sleep 0.05; done; "
    )


@pytest.mark.serial  # alone, as in a container: no other test's supervisor is there to answer
def test_two_supervisors_in_one_pid_namespace_are_never_guessed_between(
    sim: Simulator, tmp_path: Path
) -> None:
    """Two supervisors in this mount namespace: status names both and asks for --pid (exit 1);
    one of them in a mount namespace of its own (another container): status asks only its own."""
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    both = f"cd {tmp_path}; " + _up(SHIM, "--init") + _up(SHIM, "--init") + f"{SHIM} status; echo exit $?"
    completed = _in_own_pid_namespace(both, env)
    assert "imds-shim status: unhealthy: more than one imds-shim supervisor here (PIDs " in completed.stdout
    assert "name one with --pid" in completed.stdout
    assert completed.stdout.strip().endswith("exit 1"), completed.stdout + completed.stderr
    if os.geteuid() != 0:
        return  # a mount namespace of its own needs root (unshare -m)
    # The other container's supervisor has no IMDS: it stands unhealthy, and must not be asked.
    other = _up(SHIM, "--serve --optional", "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9 unshare -m")
    mixed = f"cd {tmp_path}; " + other + _up(SHIM, "--init") + f"{SHIM} status; echo exit $?"
    completed = _in_own_pid_namespace(mixed, env)
    assert "imds-shim status: ok: mode --init" in completed.stdout, completed.stdout + completed.stderr
    assert completed.stdout.strip().endswith("exit 0")


# The impostor: another user's process named imds-shim, answering "ok" under its own usual name.
IMPOSTOR = r"""
import json, os, socket
from shim.lifetime.status import socket_name
with open("/proc/self/comm", "w") as comm:  # while /proc/self is still ours to write
    comm.write("imds-shim")
os.setgid(65534)
os.setuid(65534)
lie = {"mode": "--serve", "role": "all-is-well", "key": "ASIA…FINE", "expires_at": 4102444800.0,
       "renewed_at": None, "failures": 0, "last_error": None, "note": None}
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(socket_name(os.getpid()))
server.listen(16)
print("impostor up", flush=True)
while True:
    peer, _ = server.accept()
    peer.send(json.dumps(lie).encode())
    peer.close()
"""


@pytest.mark.serial  # alone, as in a container
def test_a_stopped_supervisor_is_its_own_verdict_and_an_impostor_is_never_asked(
    sim: Simulator, tmp_path: Path
) -> None:
    """As root, inside the supervised command: the supervisor (PID 1) stopped, another user's
    process named imds-shim answering "ok": status says the supervisor did not answer (exit 1)."""
    if os.geteuid() != 0:
        missing("an impostor of another user needs root")
    impostor = tmp_path / "impostor.py"
    impostor.write_text(IMPOSTOR)
    inside = (
        f"PYTHONPATH={Path(__file__).parents[1]} {sys.executable} {impostor} > {tmp_path}/impostor.out & "
        f"until grep -q up {tmp_path}/impostor.out; do sleep 0.05; done; touch {tmp_path}/ready; "
        f"until [ -e {tmp_path}/go ]; do sleep 0.05; done; "
        f"{SHIM} status > {tmp_path}/status.out; echo exit $? >> {tmp_path}/status.out; kill %1"
    )
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    namespace = subprocess.Popen([*own_pid_namespace(), SHIM, "--init", "--", "sh", "-c", inside], env=env)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline, "the impostor never came up"
            assert namespace.poll() is None
            time.sleep(0.05)
        (supervisor,) = children(namespace.pid)  # PID 1 inside: only from out here can it be stopped
        os.kill(supervisor, signal.SIGSTOP)
        (tmp_path / "go").touch()
        while "exit" not in (
            answer := (tmp_path / "status.out").read_text() if (tmp_path / "status.out").exists() else ""
        ):
            assert time.monotonic() < deadline + 30, answer
            time.sleep(0.05)
        os.kill(supervisor, signal.SIGCONT)
    finally:
        namespace.wait(timeout=30)
    assert "imds-shim status: unhealthy: supervisor PID 1 did not answer in 1 s" in answer, answer
    assert "all-is-well" not in answer
    assert answer.strip().endswith("exit 1")


# Before the shim execs: its usual name and decoys (names it might take) bound, their queues full.
SQUAT_FULL_THEN_EXEC = r"""
import os, socket, sys
from shim.lifetime.status import socket_name
held = []
for suffix in ["", "/0000000000000000", "/ffffffffffffffff", "/decoy"]:
    squat = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squat.bind(socket_name(os.getpid(), suffix))
    squat.listen(0)
    for _ in range(4):  # fill the queue: a connect now waits, as a squatter wants it to
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(socket_name(os.getpid(), suffix))
        except BlockingIOError:
            break
        held.append(filler)
    held.append(squat)
for kept in held:
    os.set_inheritable(kept.fileno(), False)
squatter = os.fork()
if squatter == 0:  # keeps the names (and their full queues) while the shim runs
    os.read(os.open("/dev/zero", os.O_RDONLY), 0)
    os.kill(os.getpid(), 19)
for kept in held:
    kept.close()
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_names_squatted_with_full_queues_cost_status_no_time(sim: Simulator) -> None:
    """The supervisor's usual name and decoys bound first, their queues full: status --pid finds
    the name the supervisor's own descriptor holds, and answers ok within 0.5 s."""
    process = subprocess.Popen(
        [sys.executable, "-c", SQUAT_FULL_THEN_EXEC, SHIM, "--serve", "--", *WAIT],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, PYTHONPATH=str(Path(__file__).parents[1])),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "up\n"
        started = time.monotonic()
        code, output = status(process)
        took = time.monotonic() - started
    finally:
        for child in children(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    finish(process)
    assert code == 0, output
    assert output.startswith("imds-shim status: ok: mode --serve, role imds-shim-simulated-role, ")
    assert took <= min(budget(0.5), 0.95), took  # the old shared deadline: over 1 s


def test_status_answers_in_json_when_asked(sim: Simulator) -> None:
    """status --log-format json: one JSON object with the verdict and the line."""
    process = supervised(["--init"], sim)
    completed = subprocess.run(
        [SHIM, "status", "--pid", str(process.pid), "--log-format", "json"],
        env={},
        capture_output=True,
        text=True,
    )
    finish(process)
    assert completed.returncode == 0
    answer = json.loads(completed.stdout)
    assert answer["healthy"] is True
    assert answer["message"].startswith("ok: mode --init, role imds-shim-simulated-role")
