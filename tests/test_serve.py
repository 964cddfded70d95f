"""--serve and --expiry-signal: credentials for the whole life of a container.

The endpoint is judged by clients nobody here wrote (botocore, the AWS CLI v2, the AWS SDK for
JavaScript v3) against short-lived simulator credentials, so that renewals happen within seconds.
The companion process is looked for in /proc: it must be gone soon after the command is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import (
    BOTOCORE_LOOP,
    HERE,
    SAY_ENDPOINT,
    SHIM,
    ask_endpoint,
    budget,
    clean_env,
    closed_port,
    missing,
    probe_command,
    run_shim,
)

from shim.imds.protocol import ROLE_PATH
from shim.simulator.server import Simulator

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour

CLIENT = [sys.executable, str(HERE / "endpoint_client.py")]
SERVED_VARIABLES = {
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCOUNT_ID",
}
# How soon after the command a companion must be gone (the bar), plus emulation's slack.
GONE_WITHIN = budget(2.0)
REPO = HERE.parent
LOAD = REPO / "bench" / "endpoint_load.py"
JS_SDK = Path(os.environ.get("JS_SDK_DIR", REPO / "build" / "js-sdk"))
AWS_CLI = "/usr/bin/aws"  # Debian's awscli is v2; a pip-installed `aws` may be v1
# Seconds-long SDK loops and loads, or a moment measured to a fraction of a second: run apart from
# the parallel suites, whose own time budgets they would eat into (under qemu-user above all), two
# at a time: they mostly wait.
# Holds a time budget that is the product's promise: run apart, in the timed lane (make test).
HEAVY = pytest.mark.timed
# Signals whose default action does not end a process, and glibc's own two.
NOT_ENDING_SIGNALS = ("STOP", "TSTP", "CONT", "CHLD", "WINCH", "URG", "32", "33", "SIGTTIN")


def credentials_gets(sim: Simulator) -> int:
    """How many requests for a role's credentials (not role discovery) reached the simulator."""
    return sum(r.path.startswith(ROLE_PATH) and r.path != ROLE_PATH for r in sim.requests)


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat, None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def seconds_until_gone(pid: int, limit: float = 10.0) -> float:
    """How long until ``pid`` has exited (gone, or a zombie nobody reaped yet)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if process_state(pid) in (None, "Z"):
            return time.monotonic() - started
        time.sleep(0.02)
    return float("inf")


def expiry(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def issued_keys(sim: Simulator) -> set[str]:
    return {issued.access_key_id for issued in sim.state.issued.values()}


def client_line(*args: str) -> str:
    """The test client as a shell command line."""
    return " ".join([*CLIENT, *args])


# -- what the command gets ------------------------------------------------------------------------


def test_the_command_gets_the_endpoint_and_no_static_keys(sim: Simulator) -> None:
    """--serve: the URL, a fresh token, region and account; no static keys, inherited ones removed."""
    inherited = {"AWS_SESSION_TOKEN": "stale", "AWS_SECURITY_TOKEN": "stale", "KEEP_ME": "1"}
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **inherited)
    kept = {k: v for k, v in env.items() if k not in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")}
    tokens = []
    for _ in range(2):
        process = subprocess.Popen(
            [SHIM, "--serve", "--", *probe_command()], env=env, stdout=subprocess.PIPE, text=True
        )
        output, _ = process.communicate(timeout=30)
        report = json.loads(output)
        assert report["ppid"] == process.pid  # the shim stays as the command's parent
        child = report["env"]
        child.pop("LC_CTYPE", None)  # the probe's own interpreter may coerce it (PEP 538)
        assert set(child) - set(env) == SERVED_VARIABLES
        assert {k: v for k, v in child.items() if k not in SERVED_VARIABLES} == kept
        url = child["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/imds-shim/credentials", url)
        token = child["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
        assert re.fullmatch(r"[0-9a-f]{64}", token)  # 256 random bits
        tokens.append(token)
        assert (child["AWS_REGION"], child["AWS_ACCOUNT_ID"]) == ("eu-west-1", "123456789012")
    assert tokens[0] != tokens[1]


def test_the_endpoint_answers_only_the_token_on_loopback(sim: Simulator) -> None:
    """Credentials only for GET of the one path with exactly the token; 127.0.0.1 only; size bounded."""
    result = run_shim(["--serve", "--", *CLIENT, "auth"], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "right": 200,
        "none": 401,
        "wrong": 403,
        "prefixed": 403,
        "twice": 403,
        "other path": 404,
        "query": 404,
        "post": 405,
        "length 0": 200,
        "a body": 400,
        "huge header": "closed",
        "127.0.0.2": "refused",
    }
    assert result.stderr == ""  # nothing logged per request


def test_the_answer_is_what_the_sdks_read(simulator: Callable[..., Simulator]) -> None:
    """AccessKeyId, SecretAccessKey, Token, Expiration and AccountId: the instance's current set."""
    sim = simulator(account_in_credentials=True)
    result = run_shim(["--serve", "--", *CLIENT, "poll", "0.05"], endpoint=sim.url)
    answer = json.loads(result.stdout.splitlines()[0])
    assert answer["status"] == 200
    assert answer["fields"] == ["AccessKeyId", "AccountId", "Expiration", "SecretAccessKey", "Token"]
    assert answer["key"] in issued_keys(sim)


# -- renewal ---------------------------------------------------------------------------------------


def test_botocore_renews_from_the_endpoint_and_never_sees_an_expired_set(
    simulator: Callable[..., Simulator],
) -> None:
    """A long-running botocore loop gets new keys after each renewal, every one unexpired."""
    pytest.importorskip("botocore")
    # Each set valid for 4 s and a new one every second: a renewal, due halfway through a set's
    # life, finds a new set at its first try, well before the old one expires, on a busy machine too.
    sim = simulator(expires_in=4, rotate_every=1)
    result = run_shim(["--serve", "--", sys.executable, "-c", BOTOCORE_LOOP, "9"], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    readings = [json.loads(line) for line in result.stdout.splitlines()]
    assert {reading["method"] for reading in readings} == {"container-role"}
    keys = [reading["key"] for reading in readings]
    assert len(set(keys)) >= 4, "fewer than three renewals"
    assert set(keys) <= issued_keys(sim)
    assert all(reading["now"] < reading["expires"] for reading in readings)
    # About one IMDS fetch per set, not one per SDK refresh (botocore refreshed at every reading).
    assert credentials_gets(sim) <= 2 * len(set(keys)) + 1 < len(readings)


def test_many_processes_share_one_fetch(sim: Simulator) -> None:
    """Twenty SDK processes in the command read the same set; IMDS is asked once."""
    pytest.importorskip("botocore")
    read = "import botocore.session as s; print(s.get_session().get_credentials().access_key)"
    one = f"{sys.executable} -c '{read}'"
    script = " & ".join([one] * 20) + " & wait"
    result = run_shim(["--serve", "--", "sh", "-c", script], endpoint=sim.url, timeout=120)
    assert result.returncode == 0, result.stderr
    keys = result.stdout.split()
    assert len(keys) == 20
    assert len(set(keys)) == 1
    assert credentials_gets(sim) == 1


def test_aws_cli_v2_reads_the_endpoint(sim: Simulator) -> None:
    """The AWS CLI v2 resolves the served set (export-credentials shows what it got)."""
    exists = os.path.exists(AWS_CLI)
    version = subprocess.run([AWS_CLI, "--version"], capture_output=True, text=True) if exists else None
    if version is None or not version.stdout.startswith("aws-cli/2"):
        missing(f"AWS CLI v2 not installed at {AWS_CLI} (Debian package awscli)")
    result = run_shim(
        ["--serve", "--", AWS_CLI, "configure", "export-credentials", "--format", "process"],
        endpoint=sim.url,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout)
    issued = next(iter(sim.state.issued.values()))
    assert (exported["AccessKeyId"], exported["SecretAccessKey"], exported["SessionToken"]) == (
        issued.access_key_id,
        issued.secret_access_key,
        issued.token,
    )


JS_LOOP = """
const { fromNodeProviderChain } = require("@aws-sdk/credential-providers");
const provider = fromNodeProviderChain();
const ends = Date.now() + Number(process.argv[2]) * 1000;
(async () => {
  while (Date.now() < ends) {
    const credentials = await provider();
    const now = Date.now();
    console.log(JSON.stringify({ key: credentials.accessKeyId, now: now / 1000,
                                 expires: credentials.expiration.getTime() / 1000 }));
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
})();
"""


def test_the_javascript_sdk_v3_default_chain_renews_from_the_endpoint(
    simulator: Callable[..., Simulator], tmp_path: Path
) -> None:
    """The JS SDK v3's default chain finds the endpoint and follows its renewals."""
    node = shutil.which("node")
    if node is None or not (JS_SDK / "node_modules" / "@aws-sdk" / "credential-providers").is_dir():
        missing(f"node or @aws-sdk/credential-providers in {JS_SDK} missing (.ci/run installs them)")
    script = tmp_path / "loop.js"
    script.write_text(JS_LOOP)
    sim = simulator(expires_in=4, rotate_every=1)  # as for botocore: each renewal finds a new set
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, NODE_PATH=str(JS_SDK / "node_modules"))
    result = run_shim(["--serve", "--", node, str(script), "7"], env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    readings = [json.loads(line) for line in result.stdout.splitlines()]
    keys = {reading["key"] for reading in readings}
    assert len(keys) >= 3
    assert keys <= issued_keys(sim)
    assert all(reading["now"] < reading["expires"] for reading in readings)


def test_imds_going_away_serves_the_cached_set_until_it_expires_then_503(
    simulator: Callable[..., Simulator],
) -> None:
    """IMDS stopped after start: the same set is served while valid, never after; then a 503."""
    # One set for the whole test, valid until 8 s after the simulator started, so that a renewal
    # before IMDS stops (a slow start under load) brings nothing new either.
    sim = simulator(expires_in=8, rotate_every=60)
    process = subprocess.Popen(
        [SHIM, "--serve", "--", *CLIENT, "poll", "9", "--wait-for-go"],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    lines = [process.stdout.readline()]
    assert process.stdout.readline() == "ready\n", lines
    sim.stop()
    process.stdin.write("go\n")
    process.stdin.flush()
    output, stderr = process.communicate(timeout=30)
    answers = [json.loads(line) for line in [*lines, *output.splitlines()]]
    served = [answer for answer in answers if answer["status"] == 200]
    assert {answer["key"] for answer in served} == {answers[0]["key"]}, (answers, stderr)
    assert all(answer["before"] < expiry(answer["expiration"]) for answer in served)
    expired_at = expiry(answers[0]["expiration"])
    after = [answer["status"] for answer in answers if answer["before"] > expired_at + 0.05]
    assert after, (answers, stderr)
    assert set(after) == {503}
    assert "renewal failed (1 in a row): IMDS stopped answering" in stderr


# -- the end of the command ends the service --------------------------------------------------


def refused(url: str) -> bool:
    """Whether nothing listens at the endpoint ``url`` any more."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


URL_THEN = (
    "import os, sys, time; print(os.environ.get('AWS_CONTAINER_CREDENTIALS_FULL_URI', ''), flush=True); "
)


@HEAVY  # the promise is a bound in seconds
@pytest.mark.parametrize(
    ("ending", "status"), [("sys.exit(3)", 3), ("os.kill(os.getpid(), 9)", 128 + 9)], ids=["exits", "killed"]
)
@pytest.mark.parametrize("moment", ["at rest", "mid-renewal", "stderr full"])
def test_nothing_answers_within_1_5_s_of_the_commands_end(
    simulator: Callable[..., Simulator], ending: str, status: int, moment: str
) -> None:
    """Exit or SIGKILL, at rest, while a renewal waits on a hanging IMDS, or with stderr a full pipe
    nobody reads: the shim exits with the command's status within 1.5 s, and the port is closed.
    The command ends only once its moment has come: a renewal child of the shim's is running (on
    a port that never answers), or a renewal has failed (its warning met the full pipe)."""
    sim = simulator(expires_in=2) if moment != "at rest" else simulator()
    fill = ""
    if moment == "stderr full":
        # The command fills the shared stderr pipe; the shim's renewal warnings then find it full.
        fill = (
            "import fcntl; fcntl.fcntl(2, fcntl.F_SETFL, os.O_NONBLOCK)\n"
            "try:\n    while True: os.write(2, b'x' * 4096)\nexcept BlockingIOError: pass\n"
            "fcntl.fcntl(2, fcntl.F_SETFL, 0)\n"
        )
    script = (
        URL_THEN.replace("; ", "\n")
        + fill
        + "import re, subprocess\n"
        + "sys.stdin.readline()\n"  # go: IMDS is gone, or hangs
        + "shim, moment, deadline = os.getppid(), sys.argv[2], time.monotonic() + 30\n"
        + "def renewing():\n"
        + "    return len(open(f'/proc/{shim}/task/{shim}/children').read().split()) >= 2\n"
        + "def failed():\n"
        + "    asked = subprocess.run([sys.argv[1], 'status', '--pid', str(shim)], env={},\n"
        + "                           capture_output=True, text=True).stdout\n"
        + "    return re.search(r'[1-9][0-9]* failures in a row', asked) is not None\n"
        + "done = {'at rest': lambda: True, 'mid-renewal': renewing, 'stderr full': failed}[moment]\n"
        + "while not done() and time.monotonic() < deadline: time.sleep(0.02)\n"
        + "print('ending', time.time(), done(), flush=True)\n"
        + ending
        + "\n"
    )
    stderr_target: Any = subprocess.PIPE if moment == "stderr full" else subprocess.DEVNULL
    process = subprocess.Popen(
        [SHIM, "--serve", "--deadline", "20", "--", sys.executable, "-c", script, SHIM, moment],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr_target,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    url = process.stdout.readline().strip()
    hang = None
    if moment != "at rest":
        sim.stop()  # renewals now fail (stderr full) or hang (mid-renewal: a port that never answers)
        hang = hanging_listener(sim) if moment == "mid-renewal" else None
    process.stdin.write("go\n")
    process.stdin.flush()
    _, ending_at, reached = process.stdout.readline().split()
    code = process.wait(timeout=30)
    gone_after = time.time() - float(ending_at)
    if hang is not None:
        hang.close()
    assert reached == "True", f"the {moment} moment never came"
    assert code == status
    assert gone_after <= budget(1.5)
    assert refused(url)


def hanging_listener(sim: Simulator) -> socket.socket:
    """A socket on the stopped simulator's port that accepts connections and never answers."""
    port = int(sim.url.rsplit(":", 1)[1])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    return listener


@pytest.mark.parametrize("mode", [["--serve"], ["--expiry-signal", "TERM"]], ids=["serve", "expiry-signal"])
def test_nothing_is_left_running_when_there_are_no_credentials(mode: list[str]) -> None:
    """No IMDS: 125 and no companion; with --optional the command runs alone, without credentials."""
    failed = run_shim([*mode, "--", *CLIENT, "children"])
    assert failed.returncode == 125
    assert failed.stdout == ""
    optional = run_shim([*mode, "--optional", "--", *CLIENT, "children"])
    assert optional.returncode == 0, optional.stderr
    assert json.loads(optional.stdout)["children"] == []


def test_the_endpoint_stays_through_sigterm_to_the_group(sim: Simulator) -> None:
    """A SIGTERM to the whole process group (a graceful stop) leaves the endpoint for the shutdown."""
    script = (
        f"trap 'sleep 0.5; {client_line('poll', '0.05')}; exit 0' TERM; "
        f"{client_line('children')}; while :; do sleep 0.1; done"
    )
    process = subprocess.Popen(
        [SHIM, "--serve", "--", "sh", "-c", script],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    json.loads(process.stdout.readline())
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert json.loads(output.splitlines()[0])["status"] == 200


@HEAVY
def test_expiry_signal_arrives_when_the_keys_are_due_for_renewal(simulator: Callable[..., Simulator]) -> None:
    """--expiry-signal USR1: static keys, and SIGUSR1 at min(15 min, half the lifetime) before expiry."""
    sim = simulator(expires_in=4)
    script = (
        "import calendar, json, os, signal, time\n"
        "started = time.time()\n"
        "got = []\n"
        "signal.signal(signal.SIGUSR1, lambda *_: got.append(time.time()))\n"
        "while not got and time.time() < started + 30: time.sleep(0.01)\n"
        # Once: nothing more may come until the keys have expired (the set's whole life).
        "expiration = os.environ['AWS_CREDENTIAL_EXPIRATION']\n"
        "expires = calendar.timegm(time.strptime(expiration, '%Y-%m-%dT%H:%M:%SZ'))\n"
        "while time.time() < expires + 0.5: time.sleep(0.01)\n"
        "print(json.dumps({'started': started, 'got': got,\n"
        "                  'key': os.environ.get('AWS_ACCESS_KEY_ID'),\n"
        "                  'expiration': os.environ['AWS_CREDENTIAL_EXPIRATION']}))\n"
    )
    result = run_shim(["--expiry-signal", "USR1", "--", sys.executable, "-c", script], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["key"] in issued_keys(sim)
    expires = expiry(report["expiration"])
    due = expires - min(900, (expires - report["started"]) / 2)
    assert len(report["got"]) == 1
    assert due - 0.3 <= report["got"][0] <= budget(due + 0.5)


def test_expiry_signal_term_ends_a_command_that_does_not_catch_it(
    simulator: Callable[..., Simulator],
) -> None:
    """--expiry-signal TERM on a command that does not catch it: it ends by SIGTERM, for a restart."""
    sim = simulator(expires_in=2)
    result = run_shim(["--expiry-signal", "SIGTERM", "--", "sleep", "60"], endpoint=sim.url)
    assert result.returncode == 128 + signal.SIGTERM  # killed by the signal, not ended by itself


def test_expiry_signal_leaves_keys_that_have_already_expired_alone(
    simulator: Callable[..., Simulator],
) -> None:
    """Expired keys from IMDS (it is recovering): a warning, the command runs, no watcher, no signal."""
    sim = simulator(expires_in=-60)
    result = run_shim(["--expiry-signal", "TERM", "--", *CLIENT, "children"], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["children"] == []
    assert "no signal will be sent" in result.stderr


# -- what is refused -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--serve", "--refresh"], {}, "--refresh and --serve"),
        (["--serve", "--expiry-signal", "TERM"], {}, "--serve and --expiry-signal"),
        (["--refresh"], {"IMDS_SHIM_EXPIRY_SIGNAL": "HUP"}, "--refresh and --expiry-signal"),
        (["--expiry-signal", "NOPE"], {}, "--expiry-signal"),
        (["--expiry-signal", "0"], {}, "--expiry-signal"),
        ([], {"IMDS_SHIM_EXPIRY_SIGNAL": "65"}, "IMDS_SHIM_EXPIRY_SIGNAL"),
        ([], {"IMDS_SHIM_SERVE": "maybe"}, "IMDS_SHIM_SERVE"),
        *((["--expiry-signal", name], {}, "does not end a process") for name in NOT_ENDING_SIGNALS),
    ],
)
def test_modes_that_do_not_combine_are_refused(
    sim: Simulator, args: list[str], env: dict[str, str], named: str
) -> None:
    """One line, exit 125, and no request to IMDS."""
    environment = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **env)
    result = run_shim([*args, "--", "true"], env=environment)
    assert result.returncode == 125
    assert len(result.stderr.splitlines()) == 1
    assert named in result.stderr
    assert sim.requests == []


def test_a_nested_imds_shim_steps_aside(sim: Simulator) -> None:
    """An imds-shim inside a --serve command sees the endpoint and leaves the environment alone."""
    # Through sh: an imds-shim that is the command itself runs without fetching at all.
    inner = " ".join([SHIM, "-v", "--", *probe_command()])
    result = run_shim(["--serve", "--", "sh", "-c", inner], endpoint=sim.url)
    assert "stepping aside: AWS_CONTAINER_CREDENTIALS_FULL_URI is set" in result.stderr
    assert "AWS_ACCESS_KEY_ID" not in result.probe()["env"]


def test_works_against_moto(moto_endpoint: str) -> None:
    """moto's IMDS behind the endpoint: its set is what the endpoint serves."""
    result = run_shim(["--serve", "--", *CLIENT, "poll", "0.05"], endpoint=moto_endpoint)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["key"] == "test-key"


# -- secrets and size ------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_or_token_in_the_logs_across_renewals(
    simulator: Callable[..., Simulator], log_format: str
) -> None:
    """At debug level, across renewals and refused requests, as text and as JSON lines: no secret,
    session token or either token."""
    sim = simulator(expires_in=3, rotate_every=1)  # each renewal finds a new set at its first try
    script = (
        f'echo "$AWS_CONTAINER_AUTHORIZATION_TOKEN"; {client_line("auth")} >/dev/null; '
        f"{client_line('poll', '4')} >/dev/null"
    )
    result = run_shim(
        ["-vv", "--log-format", log_format, "--serve", "--", "sh", "-c", script], endpoint=sim.url
    )
    assert result.returncode == 0, result.stderr
    assert "--serve: renewed" in result.stderr
    secrets = [result.stdout.strip(), *sim.state.tokens]
    for issued in sim.state.issued.values():
        secrets += [issued.secret_access_key, issued.token, issued.access_key_id]
    for secret in secrets:
        assert secret[4:-4] not in result.stderr


@HEAVY
def test_the_endpoint_stays_small(sim: Simulator) -> None:
    """After 1000 answers to 8 concurrent clients, the endpoint's peak resident memory is at most 60 MB."""
    command = [sys.executable, str(LOAD), "--requests", "1000", "--clients", "8"]
    result = run_shim(["--serve", "--", *command], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["statuses"] == {"200": 1000 + 8 * report["warm_up_requests_per_client"]}
    assert report["peak_rss_mib"] <= 60


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        ([], {}, "static keys: they do not renew"),
        ([], {"IMDS_SHIM_SERVE": "1"}, "--serve: the command gets AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        (["--refresh"], {}, "--refresh: the command gets an AWS config file"),
        (["--expiry-signal", "hup"], {}, "--expiry-signal sends SIGHUP"),
    ],
    ids=["keys", "serve", "refresh", "expiry-signal"],
)
def test_doctor_names_the_mode(sim: Simulator, args: list[str], env: dict[str, str], says: str) -> None:
    """doctor says how the entrypoint would hand the credentials over, from flags or IMDS_SHIM_*."""
    result = run_shim(["doctor", *args], env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **env))
    assert result.returncode == 0, result.stderr
    mode = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["mode"])
    assert says in mode


# 70 connections without the token trickle a byte every 0.2 s, then a client with the token asks
# three times; it prints the statuses it got and how long each answer took.
TRICKLERS = """
import http.client, json, os, socket, time, urllib.parse
uri = urllib.parse.urlsplit(os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"])
held = [socket.create_connection((uri.hostname, uri.port)) for _ in range(70)]
results = []
for round in range(3):
    for sock in held:
        try:
            sock.send(b"G")
        except OSError:
            pass
    started = time.monotonic()
    try:
        c = http.client.HTTPConnection(uri.hostname, uri.port, timeout=3)
        c.request("GET", uri.path, headers={"Authorization": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]})
        results.append([c.getresponse().status, time.monotonic() - started])
        c.close()
    except OSError as error:
        results.append([type(error).__name__, time.monotonic() - started])
    time.sleep(0.2)
print(json.dumps(results))
"""


@HEAVY  # "at once" against "once the tricklers are cut off after 5 s": a bound in seconds
def test_clients_without_the_token_cannot_hold_every_connection_slot(sim: Simulator) -> None:
    """70 tokenless sockets trickling bytes: a request with the token is still answered, at once."""
    result = run_shim(["--serve", "--", sys.executable, "-c", TRICKLERS], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert max(seconds for _, seconds in answers) < budget(1.0)


def test_a_request_trickling_for_longer_than_5_s_is_cut_off(sim: Simulator) -> None:
    """A whole request within 5 s of connecting, however slowly its bytes come."""
    script = (
        "import os, socket, time, urllib.parse\n"
        "uri = urllib.parse.urlsplit(os.environ['AWS_CONTAINER_CREDENTIALS_FULL_URI'])\n"
        "sock = socket.create_connection((uri.hostname, uri.port)); started = time.monotonic()\n"
        "try:\n"
        "    for byte in b'GET /imds-shim/credentials HTTP/1.1\\r\\nX: ' + b'y' * 100:\n"
        "        sock.send(bytes([byte])); time.sleep(0.1)\n"
        "except OSError: pass\n"
        "print(round(time.monotonic() - started))\n"
    )
    result = run_shim(["--serve", "--", sys.executable, "-c", script], endpoint=sim.url, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 4 <= int(result.stdout) <= 7


# `setpriv`, as an entrypoint that drops privileges runs the shim (gosu, su-exec alike): user
# nobody, keeping only the right to search folders, so that it reaches this machine's Python under
# /root; the right to write to files of others' (CAP_DAC_OVERRIDE) it does not keep.
AS_NOBODY = [
    *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
    *("--inh-caps=-all,+dac_read_search", "--ambient-caps=-all,+dac_read_search"),
]


@pytest.mark.timed  # polls for seconds
def test_a_shim_running_as_another_user_than_its_full_stderr_pipes_owner_keeps_serving(
    simulator: Callable[..., Simulator],
) -> None:
    """`gosu app imds-shim --serve ...`: stderr is root's pipe, full and never read, which the shim
    (as nobody) may not open again non-blocking. Its renewal warnings are lost, not waited for:
    every request is still answered, at the command's pace."""
    if os.geteuid() != 0:
        missing("running the shim as another user needs root")
    sim = simulator(expires_in=2)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)  # as the shim gets it: a blocking pipe it shares
    try:
        process = subprocess.Popen(
            [*AS_NOBODY, SHIM, "--serve", "--", *CLIENT, "poll", "4", "--wait-for-go"],
            env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=write_end,
            text=True,
        )
        os.close(write_end)
        assert process.stdout is not None
        assert process.stdin is not None
        assert json.loads(process.stdout.readline())["status"] == 200
        assert process.stdout.readline() == "ready\n"
        sim.stop()  # renewals now fail, and each failure is a warning for the full pipe
        process.stdin.write("go\n")
        process.stdin.close()
        polls = [json.loads(line) for line in process.stdout]
        assert process.wait(timeout=30) == 0
    finally:
        os.close(read_end)
    # 200 while the set lasts, then 503 (expired, IMDS gone): answered either way, never waited on.
    assert {poll["status"] for poll in polls} <= {200, 503}
    assert len(polls) > 20
    gaps = [later["before"] - earlier["before"] for earlier, later in zip(polls, polls[1:])]
    assert max(gaps) < 1.5, gaps  # the client polls every 0.1 s; a blocked supervisor answers none


def test_serve_optional_recovers_from_an_outage_at_the_start(simulator: Callable[..., Simulator]) -> None:
    """IMDS down at the start: with --optional the command starts at once with the endpoint, which
    answers 503 and status 1 ("waiting"); once IMDS answers, the endpoint serves and status is 0,
    without a restart."""
    port = closed_port()
    process = subprocess.Popen(
        [SHIM, "--serve", "--optional", "--", sys.executable, "-c", SAY_ENDPOINT],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{port}"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url, token = process.stdout.readline().split()
        code, document = ask_endpoint(url, token)
        assert (code, document["Code"]) == (503, "CredentialsUnavailable")
        waiting = subprocess.run(
            [SHIM, "status", "--pid", str(process.pid)], env={}, capture_output=True, text=True
        )
        assert waiting.returncode == 1
        assert re.match(
            r"imds-shim status: unhealthy: mode --serve, waiting for IMDS since "
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, \d+ failures in a row, last error: ",
            waiting.stdout,
        ), waiting.stdout
        sim = simulator(port=port)  # IMDS is back, at the same address
        deadline = time.monotonic() + 60  # the retries back off to every 30 s at most
        while (answer := ask_endpoint(url, token))[0] != 200:
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
        assert answer[1]["AccessKeyId"] == next(iter(sim.state.issued.values())).access_key_id
        healthy = subprocess.run(
            [SHIM, "status", "--pid", str(process.pid)], env={}, capture_output=True, text=True
        )
        assert healthy.returncode == 0, healthy.stdout
        assert healthy.stdout.startswith(
            "imds-shim status: ok: mode --serve, role imds-shim-simulated-role, "
        )
    finally:
        _, stderr = process.communicate("", timeout=30)
    assert process.returncode == 0, stderr
    assert "--serve: renewed again after" in stderr
