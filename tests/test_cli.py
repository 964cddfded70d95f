"""The command line: help, version, bad input, precedence, exit codes."""

from __future__ import annotations

import re
import subprocess
import urllib.request

import pytest
from helpers import (
    EMULATED,
    EMULATOR_LOSES_SPAWN_ERRORS,
    SHIM,
    clean_env,
    closed_port,
    run_shim,
    version_under_test,
)

from shim.command_line.config import DOCTOR_FORMATS, EXPORT_FORMATS, OPTIONS, Config
from shim.command_line.exit_codes import MEANINGS
from shim.command_line.parse import parse_command_line
from shim.imds.protocol import REGION_PATH
from shim.simulator.knobs import SIMULATOR_OPTIONS
from shim.simulator.server import Simulator

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour


def test_help_lists_every_option_with_its_environment_twin() -> None:
    """--help shows each option, its IMDS_SHIM_* twin and the SDK variables it honours."""
    result = run_shim(["--help"])
    assert result.returncode == 0
    for option in OPTIONS:
        assert option.flags[0] in result.stdout
        assert option.help in result.stdout
        assert option.env in result.stdout
        for name in option.sdk_env:
            assert name in result.stdout


def test_help_is_made_from_the_definitions_of_formats_and_exit_statuses() -> None:
    """--help names every export and doctor format, and every exit status with its meaning."""
    lines = run_shim(["--help"]).stdout.splitlines()
    assert f"doctor [--format {'|'.join(DOCTOR_FORMATS)}]" in "\n".join(lines)
    format_help = next(line for line in lines if line.strip().startswith("export:"))
    assert all(name in format_help for name in (*EXPORT_FORMATS, *DOCTOR_FORMATS))
    for status, meaning in MEANINGS:
        assert f"  {status:<8}{meaning}" in lines


def test_simulate_help_lists_every_knob() -> None:
    """simulate --help shows every simulator knob."""
    result = run_shim(["simulate", "--help"])
    assert result.returncode == 0
    for option in SIMULATOR_OPTIONS:
        assert option.flags[0] in result.stdout
        assert option.help in result.stdout
        assert option.env in result.stdout
    assert "-v, -vv" in result.stdout
    assert "imds-shim simulate -- imds-shim -v -- env" in result.stdout


def test_simulate_runs_a_bare_imds_shim_without_it_on_path() -> None:
    """The help's own example works outside an activated venv: a bare imds-shim is this one."""
    env = clean_env(PATH="/usr/bin:/bin")
    result = run_shim(["simulate", "--", "imds-shim", "--", "sh", "-c", "echo $AWS_ACCESS_KEY_ID"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ASIASIMULATED")
    assert result.stderr == ""  # a successful run says nothing, the simulator's address included


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["no-such-command-xyz"], 127),
        pytest.param(
            ["/etc/passwd"], 126, marks=pytest.mark.skipif(EMULATED, reason=EMULATOR_LOSES_SPAWN_ERRORS)
        ),
        (["sh", "-c", "exit 7"], 7),
    ],
    ids=["not found", "not executable", "own status"],
)
def test_simulate_exits_like_the_entrypoint(command: list[str], status: int) -> None:
    """simulate -- COMMAND and imds-shim -- COMMAND give the same status for the same command."""
    with Simulator() as sim:
        direct = run_shim(["--", *command], endpoint=sim.url)
    simulated = run_shim(["simulate", "--", *command])
    assert simulated.returncode == direct.returncode == status


def test_version() -> None:
    """--version prints the version and the interpreter's (the frozen one, in the bundle)."""
    result = run_shim(["--version"])
    assert result.returncode == 0
    assert re.fullmatch(
        rf"imds-shim {re.escape(version_under_test())} \(CPython 3\.\d+\.\d+\)\n", result.stdout
    )


BAD_INPUT = [
    ([], "no command given"),
    (["--"], "no command after '--'"),
    (["--timeout", "abc", "--", "true"], "--timeout"),
    (["--timeout", "nan", "--", "true"], "--timeout"),
    (["--attempts", "0", "--", "true"], "--attempts"),
    (["--deadline", "-1", "--", "true"], "--deadline"),
    (["--endpoint", "ftp://x", "--", "true"], "--endpoint"),
    (["--endpoint-mode", "IPv5", "--", "true"], "--endpoint-mode"),
    (["--role", "bad role!", "--", "true"], "not a valid IAM role name"),
    (["--no-such-flag", "--", "true"], "unknown option '--no-such-flag'"),
    # An unknown flag's value is not taken for a verb (issue 43).
    (["--bogus-flag", "X", "--", "true"], "unknown option '--bogus-flag'"),
    (["simulate", "--bogus", "1"], "unknown option '--bogus'"),
    (["--role"], "--role needs a value"),
    (["--override=yes", "--", "true"], "--override takes no value"),
    (["python", "app.py"], "put it after '--'"),
    (["export", "--format", "yaml"], "--format for export"),
    (["--format", "json", "--", "true"], "unknown option '--format' with exec"),
    (["export", "--", "true"], "export runs no command"),
    (["--error-exit-code", "300", "--", "true"], "--error-exit-code"),
    (["simulate", "--port", "70000"], "--port"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_125(args: list[str], message: str) -> None:
    """Bad input: exit 125, one clear line on stderr, nothing on stdout, no traceback."""
    result = run_shim(args)
    assert result.returncode == 125
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("imds-shim: error: ")
    assert message in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IMDS_SHIM_TIMEOUT", "soon"),
        ("AWS_METADATA_SERVICE_TIMEOUT", "-3"),
        ("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "many"),
        ("IMDS_SHIM_OPTIONAL", "perhaps"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "not a url"),
    ],
)
def test_bad_variable_is_named(variable: str, value: str) -> None:
    """A bad environment value: exit 125 and the variable's name in the message."""
    result = run_shim(["--", "true"], env=clean_env(**{variable: value}))
    assert result.returncode == 125
    assert variable in result.stderr


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_error_exit_code_is_configurable(how: str) -> None:
    """--error-exit-code / IMDS_SHIM_ERROR_EXIT_CODE change the shim's failure status."""
    args = ["--error-exit-code", "3"] if how == "flag" else []
    env = clean_env() if how == "flag" else clean_env(IMDS_SHIM_ERROR_EXIT_CODE="3")
    assert run_shim([*args, "--", "true"], env=env).returncode == 3
    assert run_shim([*args, "--timeout", "x", "--", "true"], env=env).returncode == 3


def test_endpoint_precedence_flag_over_twin_over_sdk(sim: Simulator) -> None:
    """flag > IMDS_SHIM_ENDPOINT > AWS_EC2_METADATA_SERVICE_ENDPOINT, against real servers."""
    dead = f"http://127.0.0.1:{closed_port()}"
    assert run_shim(["--", "true"], env=clean_env(IMDS_SHIM_ENDPOINT=sim.url), endpoint=dead).returncode == 0
    assert (
        run_shim(
            ["--endpoint", sim.url, "--", "true"], env=clean_env(IMDS_SHIM_ENDPOINT=dead), endpoint=dead
        ).returncode
        == 0
    )
    assert (
        run_shim(["--", "true"], env=clean_env(IMDS_SHIM_ENDPOINT=dead), endpoint=sim.url).returncode == 125
    )


def config_for(argv: list[str], **environ: str) -> Config:
    return Config.from_settings(parse_command_line([*argv, "--", "true"], environ).settings, in_pod=False)


def test_precedence_order_for_every_source() -> None:
    """Each setting: flag, then IMDS_SHIM_*, then the SDK variable, then the default."""
    sdk = {"AWS_METADATA_SERVICE_TIMEOUT": "2", "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "4"}
    twin = {"IMDS_SHIM_TIMEOUT": "0.3", "IMDS_SHIM_ATTEMPTS": "6"}
    assert (config_for([]).timeout, config_for([]).attempts) == (1.0, 10)
    assert (config_for([], **sdk).timeout, config_for([], **sdk).attempts) == (2.0, 4)
    both = {**sdk, **twin}
    assert (config_for([], **both).timeout, config_for([], **both).attempts) == (0.3, 6)
    flagged = config_for(["--timeout", "0.25", "--attempts=2"], **both)
    assert (flagged.timeout, flagged.attempts) == (0.25, 2)


@pytest.mark.parametrize(
    ("environ", "endpoint"),
    [
        ({}, "http://169.254.169.254"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}, "http://[fd00:ec2::254]"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "ipv4"}, "http://169.254.169.254"),
        (
            {
                "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6",
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://[::1]:8080/",
            },
            "http://[::1]:8080",
        ),
    ],
)
def test_endpoint_mode_and_override(environ: dict[str, str], endpoint: str) -> None:
    """The endpoint variable overrides the mode; the mode picks IPv4 or IPv6."""
    assert config_for([], **environ).endpoint == endpoint


@pytest.mark.parametrize(
    ("value", "disabled"), [("true", True), ("TRUE", True), ("false", False), ("1", False), ("", False)]
)
def test_imdsv1_disabled_switch_follows_the_sdks(value: str, disabled: bool) -> None:
    """AWS_EC2_METADATA_V1_DISABLED counts only the word true."""
    assert config_for([], AWS_EC2_METADATA_V1_DISABLED=value).no_imds_v1 is disabled


def test_decimal_timeout_and_connect_timeout_cap() -> None:
    """Timeouts accept decimals; the connect timeout never exceeds 0.5 s."""
    assert config_for([], AWS_METADATA_SERVICE_TIMEOUT="0.2").connect_timeout == 0.2
    assert config_for([], AWS_METADATA_SERVICE_TIMEOUT="5").connect_timeout == 0.5


def test_nothing_after_double_dash_is_parsed() -> None:
    """Options after -- belong to the command, even ones the shim knows."""
    invocation = parse_command_line(["-v", "--", "cmd", "--role", "x", "--", "-vv", "--help"], {})
    assert invocation.command == ["cmd", "--role", "x", "--", "-vv", "--help"]
    assert invocation.settings["role"] is None
    assert not invocation.show_help


def test_simulate_without_a_command_prints_where_it_serves() -> None:
    """Serving on its own, the simulator's one line of stdout is its address, which answers."""
    server = subprocess.Popen([SHIM, "simulate"], env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = line.split()[4]
        assert line.startswith(f"IMDS simulator serving on {url}")
        with urllib.request.urlopen(url + REGION_PATH, timeout=5) as answer:
            assert answer.read() == b"eu-west-1"
    finally:
        server.terminate()
        server.wait(timeout=10)
