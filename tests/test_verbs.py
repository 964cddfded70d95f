"""export, credential-process and --refresh, run as users run them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest
from helpers import EXPORTED_VARIABLES, SHIM, clean_env, probe_command, run_shim

from shim.command_line.config import EXPORT_FORMATS
from shim.credentials import Credentials, Fetched
from shim.formats import render
from shim.simulator.server import Simulator

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour

HOSTILE = "a'b\"c$(touch pwned)`touch pwned2`;\\d e*"


def exported_json(sim: Simulator) -> dict[str, str]:
    result = run_shim(["export", "--format", "json"], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    variables: dict[str, str] = json.loads(result.stdout)
    return variables


def test_json_has_every_variable_the_entrypoint_exports(sim: Simulator) -> None:
    """export --format json: the same variable set and values as the exec path."""
    variables = exported_json(sim)
    assert tuple(variables) == EXPORTED_VARIABLES
    child = run_shim(["--", *probe_command()], endpoint=sim.url).probe()["env"]
    assert {name: child[name] for name in EXPORTED_VARIABLES} == variables


@pytest.mark.parametrize("format_name", ["env", "env-no-export"])
def test_shell_formats_eval_back_to_the_same_values(sim: Simulator, format_name: str) -> None:
    """eval "$(imds-shim export)" in sh sets exactly the exported values."""
    expected = exported_json(sim)
    script = f'eval "$("{SHIM}" export --format {format_name})" && set'
    completed = subprocess.run(
        ["sh", "-c", script],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    for name, value in expected.items():
        assert f"{name}='{value}'" in completed.stdout or f"{name}={value}" in completed.stdout


def test_default_format_is_env(sim: Simulator) -> None:
    """Without --format, export prints `export NAME=value` lines."""
    lines = run_shim(["export"], endpoint=sim.url).stdout.splitlines()
    assert [line.split("=")[0] for line in lines] == [f"export {name}" for name in EXPORTED_VARIABLES]


def test_dotenv_is_what_docker_env_file_reads(sim: Simulator) -> None:
    """dotenv: NAME=value lines, no quotes, no export: docker's --env-file takes them literally."""
    expected = exported_json(sim)
    output = run_shim(["export", "--format", "dotenv"], endpoint=sim.url).stdout
    parsed = dict(line.split("=", 1) for line in output.splitlines())
    assert parsed == expected


@pytest.mark.parametrize(
    ("format_name", "shape"),
    [
        ("fish", "set -gx AWS_ACCESS_KEY_ID '"),
        ("powershell", "$Env:AWS_ACCESS_KEY_ID='"),
        ("windows-cmd", 'set "AWS_ACCESS_KEY_ID='),
    ],
)
def test_other_shells_line_shapes(sim: Simulator, format_name: str, shape: str) -> None:
    """fish, PowerShell and cmd lines have their shell's assignment shape."""
    result = run_shim(["export", "--format", format_name], endpoint=sim.url)
    assert result.returncode == 0
    assert result.stdout.splitlines()[0].startswith(shape)
    assert len(result.stdout.splitlines()) == len(EXPORTED_VARIABLES)


@pytest.mark.parametrize("verb", [["credential-process"], ["export", "--format", "process"]])
def test_credential_process_document(sim: Simulator, verb: list[str]) -> None:
    """credential-process prints only the Version 1 JSON, with the account."""
    result = run_shim(verb, endpoint=sim.url)
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert list(document) == [
        "Version",
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
        "AccountId",
    ]
    assert document["Version"] == 1
    assert document["AccountId"] == "123456789012"
    assert result.stderr == ""


@pytest.mark.parametrize(
    "verb", [*[["export", "--format", f] for f in EXPORT_FORMATS], ["credential-process"]]
)
def test_failure_prints_nothing_on_stdout(simulator: Callable[..., Simulator], verb: list[str]) -> None:
    """On failure: exit 125, one line on stderr, and not a byte on stdout."""
    sim = simulator(no_role=True)
    result = run_shim(verb, endpoint=sim.url)
    assert result.returncode == 125
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


def fetched_with(value: str) -> Fetched:
    credentials = Credentials(value, value, value, datetime(2030, 1, 1, tzinfo=timezone.utc), None)
    return Fetched(credentials, "role", "eu-west-1", None, 2, 4)


@pytest.mark.parametrize("format_name", ["env", "env-no-export"])
def test_shell_quoting_never_executes_a_value(tmp_path: Path, format_name: str) -> None:
    """A hostile value survives eval in sh verbatim and runs nothing."""
    output = render("export", format_name, fetched_with(HOSTILE), {})
    completed = subprocess.run(
        ["sh", "-c", output + 'printf %s "$AWS_SECRET_ACCESS_KEY"'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout == HOSTILE
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_quoting_never_executes_a_value(tmp_path: Path) -> None:
    """The fish format survives fish's eval verbatim."""
    output = render("export", "fish", fetched_with(HOSTILE), {})
    completed = subprocess.run(
        ["fish", "-c", output + "printf %s $AWS_SECRET_ACCESS_KEY"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout == HOSTILE
    assert list(tmp_path.iterdir()) == []


def test_refresh_gives_a_profile_not_static_keys(sim: Simulator) -> None:
    """--refresh: no static keys in the child; a private config file runs credential-process."""
    env = clean_env(AWS_SESSION_TOKEN="stale", AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    result = run_shim(["--refresh", "--", *probe_command()], env=env)
    assert result.returncode == 0, result.stderr
    child = result.probe()["env"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        assert name not in child
    config = Path(child["AWS_CONFIG_FILE"])
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    text = config.read_text()
    assert f"credential_process = {SHIM} --endpoint {sim.url}" in text
    assert text.rstrip().endswith("region = eu-west-1")
    assert child["AWS_REGION"] == "eu-west-1"
    assert os.path.isabs(text.split("= ", 1)[1].split()[0])


def test_export_does_not_step_aside(sim: Simulator) -> None:
    """export prints the instance role's credentials even where the entrypoint would step aside."""
    env = clean_env(
        AWS_PROFILE="prod", AWS_ACCESS_KEY_ID="AKIAHALFSET", AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url
    )
    result = run_shim(["export", "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
