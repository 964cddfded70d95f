"""The exec path: what the command actually gets from imds-shim."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from helpers import (
    EMULATED,
    EMULATOR_LOSES_IGNORED_SIGNALS,
    EXPORTED_VARIABLES,
    SHIM,
    UNDER_TEST_IS_BUNDLE,
    children,
    clean_env,
    probe_command,
    run_shim,
)

from shim.simulator.server import Simulator

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour


def status_field(status: str, name: str) -> int:
    """A hex mask such as SigIgn from /proc/<pid>/status."""
    line = next(line for line in status.splitlines() if line.startswith(name + ":"))
    return int(line.split()[1], 16)


def signal_bit(signum: int) -> int:
    return 1 << (signum - 1)


def test_exports_every_variable_and_nothing_else(sim: Simulator) -> None:
    """The command sees the role's credentials, token twice, expiry, region, account; nothing else changes."""
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, KEEP_ME="1")
    result = run_shim(["--", *probe_command()], env=env)
    assert result.returncode == 0, result.stderr
    child = result.probe()["env"]
    issued = next(iter(sim.state.issued.values()))
    assert child["AWS_ACCESS_KEY_ID"] == issued.access_key_id
    assert child["AWS_SECRET_ACCESS_KEY"] == issued.secret_access_key
    assert child["AWS_SESSION_TOKEN"] == issued.token
    assert child["AWS_SECURITY_TOKEN"] == issued.token
    assert child["AWS_CREDENTIAL_EXPIRATION"] == issued.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert child["AWS_REGION"] == child["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert child["AWS_ACCOUNT_ID"] == "123456789012"
    unchanged = {k: v for k, v in child.items() if k not in EXPORTED_VARIABLES}
    # LC_CTYPE may be coerced by the probe's own interpreter (PEP 538): not the shim's doing.
    unchanged.pop("LC_CTYPE", None)
    assert unchanged == env
    assert result.stderr == ""  # quiet on success


@pytest.mark.parametrize(
    "preset",
    [
        {},
        {"LD_LIBRARY_PATH": "/opt/app/lib"},
        {"LD_LIBRARY_PATH_ORIG": "/users/own/variable"},
    ],
    ids=["unset", "set", "only-orig"],
)
def test_library_path_reaches_the_command_exactly(sim: Simulator, preset: dict[str, str]) -> None:
    """LD_LIBRARY_PATH (which a frozen runtime rewrites) and its neighbours arrive as given."""
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **preset)
    for verb in (["--"], ["--refresh", "--"]):
        child = run_shim([*verb, *probe_command()], env=env).probe()["env"]
        assert {k: v for k, v in child.items() if k.startswith(("LD_", "_PYI"))} == preset


def test_stale_inherited_security_token_is_replaced(sim: Simulator) -> None:
    """A stale AWS_SECURITY_TOKEN (read first by botocore) never survives next to fresh keys."""
    env = clean_env(AWS_SECURITY_TOKEN="stale", AWS_SESSION_TOKEN="stale")
    result = run_shim(["--", *probe_command()], env=env, endpoint=sim.url)
    child = result.probe()["env"]
    assert child["AWS_SECURITY_TOKEN"] == child["AWS_SESSION_TOKEN"] != "stale"


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ({"AWS_REGION": "us-east-2"}, ("us-east-2", "us-east-2")),
        ({"AWS_DEFAULT_REGION": "ap-south-1"}, ("ap-south-1", "ap-south-1")),
        ({"AWS_REGION": "us-east-2", "AWS_DEFAULT_REGION": "ca-central-1"}, ("us-east-2", "ca-central-1")),
    ],
)
def test_preset_region_is_kept_and_copied(
    sim: Simulator, preset: dict[str, str], expected: tuple[str, str]
) -> None:
    """A preset region wins over IMDS and is copied to the other variable."""
    result = run_shim(["--", *probe_command()], env=clean_env(**preset), endpoint=sim.url)
    child = result.probe()["env"]
    assert (child["AWS_REGION"], child["AWS_DEFAULT_REGION"]) == expected


# Every way of handing over credentials, the supervised ones included: apart from its PID, the
# command must not be able to tell the difference in argv, descriptors or signals.
MODES = pytest.mark.parametrize(
    "mode",
    [[], ["--serve"], ["--expiry-signal", "USR1"], ["--init"]],
    ids=["keys", "serve", "expiry-signal", "init"],
)
SUPERVISED = ("--serve", "--expiry-signal", "--init")


@MODES
def test_same_pid_or_the_shims_child_and_untouched_argv(sim: Simulator, mode: list[str]) -> None:
    """exec: the command has the shim's PID; supervised: it is the shim's child. Argv exactly as given."""
    awkward = ["--", "-v", "$HOME", "a b", "*", "'quoted'", "", "--help", "ünï"]
    process = subprocess.Popen(
        [SHIM, *mode, "--", *probe_command(), *awkward],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        stdout=subprocess.PIPE,
        text=True,
    )
    output, _ = process.communicate(timeout=30)
    import json

    report = json.loads(output)
    if mode and mode[0] in SUPERVISED:
        assert report["ppid"] == process.pid
    else:
        assert report["pid"] == process.pid
    assert report["argv"] == [*probe_command(), *awkward]


def test_stdin_reaches_the_command(sim: Simulator) -> None:
    """The command reads the shim's stdin."""
    result = run_shim(["--", *probe_command(), "--read-stdin"], endpoint=sim.url, input="hello from stdin\n")
    assert result.probe()["stdin"] == "hello from stdin\n"


@MODES
def test_no_file_descriptor_leaks(sim: Simulator, mode: list[str]) -> None:
    """The command has exactly the descriptors it would have had without the shim."""
    direct = subprocess.run(probe_command(), capture_output=True, text=True, check=True)
    shimmed = run_shim([*mode, "--", *probe_command()], endpoint=sim.url)
    import json

    assert shimmed.probe()["fds"] == json.loads(direct.stdout)["fds"]


def _ignore_sighup_block_sigusr2() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})


# Signals 32 and 33 belong to glibc (SIGCANCEL, SIGSETXID): no program can set them through it,
# and glibc may install its own handlers for them, so an inherited "ignored" on them is not
# promised to survive the bundle's runtime. Nothing but glibc uses them.
GLIBC_RESERVED = (1 << 31) | (1 << 32)


def signal_state(
    preexec: Callable[[], None], endpoint: str | None, mode: tuple[str, ...] = ()
) -> tuple[int, int, int]:
    """(SigIgn, SigBlk, SigCgt) of `cat /proc/self/status`, via the shim or (None) directly,
    without glibc's own two signals."""
    command = ["cat", "/proc/self/status"]
    if endpoint is None:
        completed = subprocess.run(command, capture_output=True, text=True, check=True, preexec_fn=preexec)
        status = completed.stdout
    else:
        result = run_shim([*mode, "--", *command], endpoint=endpoint, preexec_fn=preexec)
        assert result.returncode == 0, result.stderr
        status = result.stdout
    ignored, blocked, caught = (
        status_field(status, name) & ~GLIBC_RESERVED for name in ("SigIgn", "SigBlk", "SigCgt")
    )
    return ignored, blocked, caught


@pytest.mark.skipif(EMULATED, reason=EMULATOR_LOSES_IGNORED_SIGNALS)
@MODES
def test_signal_dispositions_and_mask_are_inherited_not_pythons(sim: Simulator, mode: list[str]) -> None:
    """SIGPIPE/SIGXFSZ/SIGINT as inherited (not as CPython set them); ignored stays ignored; mask kept."""
    direct = signal_state(_ignore_sighup_block_sigusr2, None)
    shimmed = signal_state(_ignore_sighup_block_sigusr2, sim.url, tuple(mode))
    assert shimmed == direct
    ignored, blocked, caught = shimmed
    assert ignored & signal_bit(signal.SIGHUP)
    assert not ignored & (signal_bit(signal.SIGPIPE) | signal_bit(signal.SIGXFSZ))
    assert blocked & signal_bit(signal.SIGUSR2)
    assert caught == 0


@pytest.mark.skipif(EMULATED, reason=EMULATOR_LOSES_IGNORED_SIGNALS)
def test_sigint_inherited_as_ignored_stays_ignored(sim: Simulator) -> None:
    """A background job's ignored SIGINT is passed on as ignored."""

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    shimmed = signal_state(ignore_sigint, sim.url)
    assert shimmed == signal_state(ignore_sigint, None)
    assert shimmed[0] & signal_bit(signal.SIGINT)


@MODES
def test_pipelines_see_default_sigpipe(sim: Simulator, mode: list[str]) -> None:
    """`yes | head -n 1` ends by SIGPIPE, not by a write error, inside the command."""
    result = run_shim([*mode, "--", "sh", "-c", "yes | head -n 1"], endpoint=sim.url)
    assert result.stdout == "y\n"
    assert "Broken pipe" not in result.stderr  # what `yes` says when SIGPIPE is ignored


@MODES
@pytest.mark.parametrize("status", [0, 1, 42, 255])
def test_command_exit_status_is_its_own(sim: Simulator, status: int, mode: list[str]) -> None:
    """The shim's exit status is the command's."""
    assert run_shim([*mode, "--", "sh", "-c", f"exit {status}"], endpoint=sim.url).returncode == status


@MODES
def test_command_killed_by_signal(sim: Simulator, mode: list[str]) -> None:
    """A command that dies of SIGTERM: exec'd, the shim's parent sees that signal; supervised, 128+15."""
    result = run_shim([*mode, "--", "sh", "-c", "kill -TERM $$"], endpoint=sim.url)
    assert result.returncode == (128 + signal.SIGTERM if mode and mode[0] in SUPERVISED else -signal.SIGTERM)


def test_command_not_found_is_127(sim: Simulator) -> None:
    """A missing command exits 127 with one line naming it."""
    result = run_shim(["--", "no-such-command-xyz", "arg"], endpoint=sim.url)
    assert result.returncode == 127
    assert result.stderr.strip().splitlines() == [
        "imds-shim: error: 'no-such-command-xyz': command not found"
    ]


def test_command_not_executable_is_126(sim: Simulator, tmp_path: Path) -> None:
    """A command that exists but cannot be executed exits 126 with one line naming it."""
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    result = run_shim(["--", str(script)], endpoint=sim.url)
    assert result.returncode == 126
    assert str(script) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_python_dash_m_behaves_the_same(sim: Simulator) -> None:
    """`python -m shim` is the same program as the console script."""
    completed = subprocess.run(
        [sys.executable, "-m", "shim", "--", "sh", "-c", 'echo "$AWS_ACCESS_KEY_ID"'],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ASIASIMULATED")


def _default_int_and_term() -> None:
    """SIGINT and SIGTERM at their default, whatever the caller had: `make test` started as a
    background job inherits an ignored SIGINT, which the shim rightly keeps ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_signal_while_waiting_on_imds_ends_the_shim(
    simulator: Callable[..., Simulator], signum: int, status: int
) -> None:
    """SIGTERM/SIGINT during the fetch: exit 128+N at once, no traceback, the command never runs."""
    sim = simulator(token_hang=True)
    process = subprocess.Popen(
        [SHIM, "--timeout", "30", "--", "sh", "-c", "echo ran"],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_int_and_term,
    )
    _wait_for_request(sim)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=5)
    assert process.returncode == status
    assert stdout == ""
    assert "Traceback" not in stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(),
    reason="needs root and unshare to make a PID namespace",
)
def test_sigterm_as_pid_1_exits_143(simulator: Callable[..., Simulator]) -> None:
    """As PID 1 (no default signal actions) SIGTERM still ends the fetch at once with 143."""
    sim = simulator(token_hang=True)
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", SHIM, "--timeout", "30", "--", "true"],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_request(sim)
    os.kill(children(process.pid)[0], signal.SIGTERM)
    process.communicate(timeout=5)
    assert process.returncode == 143


def _wait_for_request(sim: Simulator) -> None:
    """Block until the shim's first request has reached the simulator (no sleeping on guesses)."""
    import time

    deadline = time.monotonic() + 20
    while not sim.requests:
        assert time.monotonic() < deadline, "the shim never reached the simulator"
        time.sleep(0.01)


def test_imds_shim_as_the_command_runs_itself_without_fetching() -> None:
    """`imds-shim -- imds-shim ...` execs this same imds-shim at once: no fetch, no PATH lookup."""
    env = clean_env(PATH="/usr/bin:/bin")  # no imds-shim on PATH; IMDS refuses every connection
    result = run_shim(["-v", "--", "imds-shim", "--version"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imds-shim ")
    assert "running it without fetching" in result.stderr


def test_doctor_under_the_entrypoint_sees_what_doctor_alone_sees(sim: Simulator) -> None:
    """`docker run IMAGE imds-shim doctor`: doctor is not run behind already exported keys."""
    alone = run_shim(["doctor"], endpoint=sim.url)
    requests_alone = len(sim.requests)
    under = run_shim(["--", "imds-shim", "doctor"], endpoint=sim.url)
    assert under.returncode == alone.returncode == 0, under.stderr
    assert "would step aside" not in under.stdout
    assert len(sim.requests) == 2 * requests_alone


@pytest.mark.skipif(EMULATED, reason=EMULATOR_LOSES_IGNORED_SIGNALS)
def test_sigpipe_and_sigxfsz_ignored_by_the_caller(sim: Simulator) -> None:
    """The bundle's launcher sees them ignored before Python starts, and they stay ignored; the
    pip-installed shim cannot see past CPython's own start-up, and gives them the default (README)."""

    def ignore_both() -> None:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    ignored = signal_state(ignore_both, sim.url)[0]
    both = signal_bit(signal.SIGPIPE) | signal_bit(signal.SIGXFSZ)
    assert ignored & both == (both if UNDER_TEST_IS_BUNDLE else 0)
