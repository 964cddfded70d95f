"""doctor, run as users run it: each step's story, and the entrypoint's verdict.

doctor walks the entrypoint's own path (its configuration, client, role rules and mode), so
wherever the entrypoint would refuse to start the command, doctor says why and exits non-zero.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import SHIM, budget, clean_env, closed_port, run_shim

from shim.simulator.server import Simulator

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour


# Every failure the suite injects at the start, and two healthy controls: (simulator knobs,
# options, environment, whether the entrypoint starts the command). "TMPDIR" is replaced by a
# folder any user may write to, which --refresh refuses.
CASES: dict[str, tuple[dict[str, Any] | None, list[str], dict[str, str], bool]] = {
    "healthy": ({}, [], {}, True),
    "hop limit, IMDSv1 allowed": ({"token_hang": True}, [], {}, True),
    "the expected role": ({"role_name": "app-role"}, ["--expect-role", "app-role"], {}, True),
    "another role than expected": ({"role_name": "app-role"}, ["--expect-role", "other-role"], {}, False),
    "no role attached": ({"no_role": True}, [], {}, False),
    "the given role unknown": ({}, ["--role", "no-such-role"], {}, False),
    "hop limit, IMDSv2 required": ({"token_hang": True, "imds_v2_required": True}, [], {}, False),
    "token refused, IMDSv1 allowed": ({"token_status": 403}, [], {}, True),
    "token refused, IMDSv2 required": ({"token_status": 403, "imds_v2_required": True}, [], {}, False),
    "IMDS busy past the deadline": ({"fail_first": 1000}, ["--deadline", "1"], {}, False),
    "malformed credentials": ({"credentials_fault": "malformed"}, ["--deadline", "1"], {}, False),
    "oversized credentials": ({"credentials_fault": "oversized"}, [], {}, False),
    "nothing listening": (None, [], {}, False),
    "half a key pair": ({}, [], {"AWS_ACCESS_KEY_ID": "AKIAHALFSET"}, False),
    "--refresh with an open TMPDIR": ({}, ["--refresh"], {"TMPDIR": "TMPDIR"}, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_doctor_and_the_entrypoint_give_the_same_verdict(
    simulator: Callable[..., Simulator], tmp_path: Path, case: str
) -> None:
    """Side by side on each case: the entrypoint starts the command exactly when doctor exits 0,
    and where it refuses, doctor's report has a failed step that says why."""
    knobs, options, variables, starts = CASES[case]
    endpoint = f"http://127.0.0.1:{closed_port()}" if knobs is None else simulator(**knobs).url
    if variables.get("TMPDIR") == "TMPDIR":
        (tmp_path / "open").mkdir()
        (tmp_path / "open").chmod(0o777)
        variables = {**variables, "TMPDIR": str(tmp_path / "open")}
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=endpoint, **variables)
    entrypoint = run_shim([*options, "--", "true"], env=dict(env))
    report = run_shim([*options, "doctor"], env=dict(env))
    assert (entrypoint.returncode == 0) == starts, entrypoint.stderr
    assert (report.returncode == 0) == starts, report.stdout
    if not starts:
        assert (entrypoint.returncode, report.returncode) == (125, 125)
        assert any(line.split()[:1] == ["fail"] for line in report.stdout.splitlines()), report.stdout


def test_doctor_refuses_another_role_than_expected(simulator: Callable[..., Simulator]) -> None:
    """doctor --expect-role other against an instance with app-role: exit 125, in the entrypoint's words."""
    sim = simulator(role_name="app-role")
    entrypoint = run_shim(["--expect-role", "other-role", "--", "true"], endpoint=sim.url)
    result = run_shim(["--expect-role", "other-role", "doctor", "--format", "json"], endpoint=sim.url)
    assert result.returncode == 125
    report = json.loads(result.stdout)
    assert (report["credentials"], report["entrypoint_would_start"]) == (False, False)
    steps = {step["name"]: step for step in report["steps"]}
    assert steps["expected role"]["status"] == "fail"
    assert steps["expected role"]["detail"] in entrypoint.stderr
    assert steps["credentials"]["status"] == "skip"


def test_doctor_says_when_the_mode_cannot_have_what_it_needs(sim: Simulator, tmp_path: Path) -> None:
    """--refresh where TMPDIR is open to every user: IMDS is fine, the entrypoint is not; doctor
    says so on the mode's line and in the result."""
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, TMPDIR=str(tmp_path / "open"))
    result = run_shim(["--refresh", "doctor"], env=env)
    assert result.returncode == 125
    mode = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["mode"])
    assert mode.split()[0] == "fail"
    assert "--refresh: " in mode.split("; but ", 1)[1]
    assert result.stdout.endswith("result: credentials available, but the entrypoint would fail (see fail)\n")


def test_doctor_healthy(sim: Simulator) -> None:
    """doctor on a healthy IMDS: exit 0, every step ok, the key masked."""
    result = run_shim(["doctor"], endpoint=sim.url)
    assert result.returncode == 0, result.stdout
    assert "result: credentials available" in result.stdout
    assert "ASIA…" in result.stdout
    assert " fail " not in result.stdout


def test_doctor_hop_limit(simulator: Callable[..., Simulator]) -> None:
    """doctor with the hop-limit symptom and IMDSv2 required: exit 125, names the hop limit and fix."""
    sim = simulator(token_hang=True, imds_v2_required=True)
    result = run_shim(["doctor", "--format", "json"], endpoint=sim.url)
    assert result.returncode == 125
    report = json.loads(result.stdout)
    assert report["credentials"] is False
    text = json.dumps(report)
    assert "hop limit" in text
    assert "--http-put-response-hop-limit 2" in text
    # One story, in order: the token step fails (IMDSv1 cannot stand in), the rest is skipped.
    steps = [
        (step["name"], step["status"])
        for step in report["steps"]
        if step["name"] not in ("environment", "mode", "endpoint", "tcp")
    ]
    assert steps == [
        ("imdsv2 token", "fail"),
        ("role", "skip"),
        ("credentials", "skip"),
        ("region/account", "skip"),
    ]
    assert "IMDSv1 is used instead" not in text


def test_doctor_hop_limit_with_imdsv1_allowed(simulator: Callable[..., Simulator]) -> None:
    """doctor with the hop-limit symptom where IMDSv1 works: warns once, then credentials via v1."""
    sim = simulator(token_hang=True)
    result = run_shim(["doctor", "--format", "json"], endpoint=sim.url)
    assert result.returncode == 0, result.stdout
    steps = {step["name"]: step for step in json.loads(result.stdout)["steps"]}
    assert steps["imdsv2 token"]["status"] == "warn"
    assert "IMDSv1 is used instead" in steps["imdsv2 token"]["detail"]
    assert steps["imdsv1"]["detail"].startswith("enabled on this instance")
    assert steps["credentials"]["status"] == "ok"


@pytest.mark.timed  # a verdict budget: measured apart from the parallel suites
def test_doctor_not_on_ec2(unanswered_endpoint: str) -> None:
    """doctor off EC2: exit 125 quickly, the TCP step fails saying IMDS is unreachable."""
    result = run_shim(["doctor", "--format", "json"], endpoint=unanswered_endpoint)
    assert result.returncode == 125
    steps = {step["name"]: step for step in json.loads(result.stdout)["steps"]}
    assert steps["tcp"]["status"] == "fail"
    assert "unreachable" in steps["tcp"]["detail"]
    assert result.seconds < budget(1.5)


def test_doctor_no_role(simulator: Callable[..., Simulator]) -> None:
    """doctor with no instance profile: exit 125 and the role step says so."""
    sim = simulator(no_role=True)
    result = run_shim(["doctor", "--format", "json"], endpoint=sim.url)
    assert result.returncode == 125
    steps = {step["name"]: step for step in json.loads(result.stdout)["steps"]}
    assert "no IAM role is attached" in steps["role"]["detail"]


def test_doctor_reports_step_aside_and_proxy(sim: Simulator) -> None:
    """doctor names the variable that would make the entrypoint step aside, and proxy variables."""
    env = clean_env(
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="/v2/x",
        HTTP_PROXY="http://proxy:3128",
        AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url,
    )
    result = run_shim(["doctor"], env=env)
    assert "would step aside: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is set" in result.stdout
    assert "HTTP_PROXY" in result.stdout


@pytest.mark.parametrize(
    ("variables", "also_set"),
    [
        ({"AWS_PROFILE": "prod", "AWS_DEFAULT_PROFILE": "old"}, "AWS_DEFAULT_PROFILE"),
        (
            {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x", "AWS_PROFILE": "prod"},
            "AWS_PROFILE",
        ),
        (
            {"AWS_WEB_IDENTITY_TOKEN_FILE": "/t", "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://x/"},
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ),
    ],
    ids=["profile and its older name", "keys and a profile", "pod identity outranks IRSA"],
)
def test_doctor_lists_the_other_identities_set(
    sim: Simulator, variables: dict[str, str], also_set: str
) -> None:
    """doctor lists every other identity variable set beside the one that decides, and only those."""
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **variables)
    lines = [line for line in run_shim(["doctor"], env=env).stdout.splitlines() if "also set:" in line]
    assert len(lines) == 1
    assert lines[0].endswith(f"also set: {also_set}")


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare to make a PID namespace",
)
def test_doctor_hints_at_an_init_when_pid_1(sim: Simulator) -> None:
    """Run as PID 1 (a container without --init), doctor says to use docker run --init."""
    completed = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", SHIM, "doctor"],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stdout
    assert "pid 1" in completed.stdout
    assert "docker run --init" in completed.stdout
    assert "pid 1" not in run_shim(["doctor"], endpoint=sim.url).stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare to make a PID namespace",
)
@pytest.mark.parametrize(("variable", "mode"), [("IMDS_SHIM_SERVE", "--serve"), ("IMDS_SHIM_INIT", "--init")])
def test_doctor_as_pid_1_of_a_supervised_image_gives_no_init_advice(
    sim: Simulator, variable: str, mode: str
) -> None:
    """`docker run IMAGE imds-shim doctor` in an image with IMDS_SHIM_SERVE=1: imds-shim is the
    init there, so doctor says so instead of asking for docker run --init."""
    completed = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", SHIM, "doctor"],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **{variable: "1"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stdout
    assert f"running as PID 1; under {mode} imds-shim is the init itself" in completed.stdout
    assert "--init (or tini)" not in completed.stdout
