"""Never shadow a more specific identity; --override and --optional."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from helpers import clean_env, probe_command, run_shim

from shim.simulator.server import Simulator
from shim.step_aside import IDENTITY_FAMILY

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour

STEP_ASIDE = [
    {"AWS_ACCESS_KEY_ID": "AKIAEXPLICITKEY00001", "AWS_SECRET_ACCESS_KEY": "explicit-secret"},
    {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/task"},
    {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/var/run/secrets/pods.eks.amazonaws.com/token",
    },
    {
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks.amazonaws.com/token",
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/irsa",
    },
    {"AWS_PROFILE": "prod"},
    {"AWS_EC2_METADATA_DISABLED": "TRUE"},
]
IDS = ["keys", "ecs", "eks-pod-identity", "irsa", "profile", "metadata-disabled"]


@pytest.mark.parametrize("preset", STEP_ASIDE, ids=IDS)
def test_steps_aside_without_any_request(sim: Simulator, preset: dict[str, str]) -> None:
    """A more specific identity: no IMDS request, the command's environment exactly as given."""
    env = clean_env(**preset)
    result = run_shim(["--", *probe_command()], env=dict(env, AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url))
    assert result.returncode == 0, result.stderr
    assert sim.requests == []
    child = result.probe()["env"]
    child.pop("LC_CTYPE", None)
    assert child == dict(env, AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    assert result.stderr == ""


def test_step_aside_says_why_at_info_level(sim: Simulator) -> None:
    """-v names the variable that made the shim step aside."""
    env = clean_env(AWS_WEB_IDENTITY_TOKEN_FILE="/token", AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    result = run_shim(["-v", "--", "true"], env=env)
    assert "stepping aside: AWS_WEB_IDENTITY_TOKEN_FILE is set" in result.stderr


@pytest.mark.parametrize("value", ["", "false", "1"])
def test_metadata_disabled_counts_only_true(sim: Simulator, value: str) -> None:
    """AWS_EC2_METADATA_DISABLED means disabled only for the word true, as in the SDKs."""
    env = clean_env(AWS_EC2_METADATA_DISABLED=value, AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    result = run_shim(["--", "true"], env=env)
    assert result.returncode == 0
    assert len(sim.requests) == 4


def test_empty_values_do_not_count(sim: Simulator) -> None:
    """`docker run -e AWS_PROFILE=` (empty) is not a profile."""
    env = clean_env(AWS_PROFILE="", AWS_ACCESS_KEY_ID="", AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    assert run_shim(["--", "true"], env=env).returncode == 0
    assert len(sim.requests) == 4


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
    ],
)
def test_half_set_key_pair_is_an_error(sim: Simulator, present: str, missing: str) -> None:
    """A key without its secret (or the reverse) exits 125 naming both variables; no request."""
    env = clean_env(**{present: "value"}, AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    result = run_shim(["--", "true"], env=env)
    assert result.returncode == 125
    (line,) = result.stderr.strip().splitlines()
    assert f"{present} is set but {missing} is not" in line
    assert sim.requests == []


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_override_clears_the_whole_family_then_fetches(sim: Simulator, how: str) -> None:
    """--override: fetch anyway; none of the previous identity survives next to the new keys."""
    preset = {name: f"old-{name.lower()}" for name in IDENTITY_FAMILY}
    args = ["--override"] if how == "flag" else []
    extra = {} if how == "flag" else {"IMDS_SHIM_OVERRIDE": "1"}
    env = clean_env(**preset, **extra, AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    result = run_shim([*args, "--", *probe_command()], env=env)
    assert result.returncode == 0, result.stderr
    child = result.probe()["env"]
    assert child["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    leftovers = {name for name in IDENTITY_FAMILY if name in child and child[name].startswith("old-")}
    assert leftovers == set()
    assert "AWS_PROFILE" not in child
    assert "AWS_ROLE_ARN" not in child


def test_override_with_half_set_pair_is_fine(sim: Simulator) -> None:
    """--override clears a half-set pair instead of complaining about it."""
    env = clean_env(AWS_ACCESS_KEY_ID="AKIAHALF", AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    assert run_shim(["--override", "--", "true"], env=env).returncode == 0


def test_optional_by_variable_on_no_role(simulator: Callable[..., Simulator]) -> None:
    """IMDS_SHIM_OPTIONAL=1 runs the command without credentials when no role is attached."""
    sim = simulator(no_role=True)
    env = clean_env(IMDS_SHIM_OPTIONAL="1", AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    result = run_shim(["--", "sh", "-c", 'echo "key=${AWS_ACCESS_KEY_ID:-none}"; exit 7'], env=env)
    assert result.returncode == 7
    assert result.stdout == "key=none\n"
    assert "no IAM role is attached" in result.stderr


def test_step_aside_path_imports_nothing_heavy() -> None:
    """Stepping aside pays for neither requests nor tenacity, nor re, typing, enum or dataclasses.

    Run without site (-S), so that only what imds-shim itself imports is listed.
    """
    env = clean_env(AWS_PROFILE="prod", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    completed = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", "-c", "from shim.cli import run; run()", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    imported = {line.split("|")[-1].strip() for line in completed.stderr.splitlines()}
    assert "shim.cli" in imported  # the measurement works
    heavy = {
        "requests",
        "urllib3",
        "tenacity",
        "re",
        "typing",
        "enum",
        "dataclasses",
        "json",
        "logging",
        "argparse",
        "contextlib",
        "signal",
        "collections",
    }
    assert imported & heavy == set()
