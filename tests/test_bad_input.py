"""Odd but legal input, and plainly bad input, never ends in a traceback or an "internal error".

One table: options and their ``IMDS_SHIM_*`` / SDK twins with empty, huge, non-ASCII, negative and
malformed values; the exec path's argv, environment and standard streams; and IMDS answers with odd
types and encodings (from a real HTTP server on loopback). Every row asserts the same contract:
the documented exit status, at most one line on stderr, nothing on stdout on failure, no secret.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Callable

import pytest
from helpers import SHIM, clean_env, probe_command
from scripted_imds import (
    CREDENTIALS,
    GOOD_CREDENTIALS,
    IMDS_TOKEN,
    ROLE_NAME,
    SECRET,
    SESSION_TOKEN,
    Reply,
    ScriptedImds,
    as_body,
)

from shim.command_line.exit_codes import COMMAND_NOT_EXECUTABLE as NOT_EXECUTABLE
from shim.command_line.exit_codes import COMMAND_NOT_FOUND as NOT_FOUND
from shim.command_line.exit_codes import SHIM_FAILED as FAILED
from shim.imds.protocol import IDENTITY_DOCUMENT_PATH as IDENTITY
from shim.imds.protocol import ROLE_PATH as ROLE
from shim.simulator.server import Simulator

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour

Script = dict[str, Reply]


def imds_answers(
    role: bytes = ROLE_NAME.encode(),
    credentials: Any = GOOD_CREDENTIALS,
    identity: bytes = b'{"region": "eu-west-1", "accountId": "123456789012"}',
) -> Script:
    """A scripted IMDS, healthy but for the role, credentials or identity document given."""
    return {
        ROLE: Reply(body=role),
        CREDENTIALS: Reply(body=as_body(credentials)),
        IDENTITY: Reply(body=identity),
    }


class Row:
    """One case: arguments, extra environment, IMDS answers, how streams are wired, and the verdict."""

    def __init__(
        self,
        args: list[str],
        status: int,
        says: str = "",
        env: dict[str, str] | None = None,
        imds: Script | None = None,
        shell: str = "",
    ) -> None:
        self.args, self.status, self.says, self.env = args, status, says, env or {}
        self.imds, self.shell = imds, shell


ROWS: dict[str, Row] = {
    # Options and their twins: empty, huge, non-ASCII, negative, malformed.
    "empty timeout": Row(["--timeout", "", "--", "true"], FAILED, "--timeout"),
    "empty attempts": Row(["--attempts=", "--", "true"], FAILED, "--attempts"),
    "empty role": Row(["--role", "", "--", "true"], FAILED, "not a valid IAM role name"),
    "empty endpoint": Row(["--endpoint", "", "--", "true"], FAILED, "--endpoint"),
    "empty log level": Row(["--log-level", "", "--", "true"], FAILED, "--log-level"),
    "empty format": Row(["export", "--format", ""], FAILED, "--format for export"),
    "empty error exit code": Row(["--error-exit-code", "", "--", "true"], FAILED, "--error-exit-code"),
    "huge attempts": Row(["--attempts", "1" * 5000, "--", "true"], FAILED, "--attempts"),
    "huge timeout": Row(["--timeout", "9" * 400, "--", "true"], FAILED, "--timeout"),
    "huge role": Row(["--role", "r" * 5000, "--", "true"], FAILED, "not a valid IAM role name"),
    "huge endpoint host": Row(["--endpoint", "http://" + "a" * 300, "--", "true"], FAILED, "--endpoint"),
    "superscript attempts": Row(["--attempts", "²", "--", "true"], FAILED, "--attempts"),
    "arabic-indic timeout": Row(["--timeout", "٣", "--", "true"], FAILED, "--timeout"),
    "superscript exit code": Row(["--error-exit-code", "²", "--", "true"], FAILED, "--error-exit-code"),
    "non-ascii role": Row(["--role", "rôle", "--", "true"], FAILED, "not a valid IAM role name"),
    "non-ascii endpoint": Row(["--endpoint", "http://ünï.example", "--", "true"], FAILED, "--endpoint"),
    "non-ascii log level": Row(["--log-level", "ünï", "--", "true"], FAILED, "--log-level"),
    "negative timeout": Row(["--timeout", "-1", "--", "true"], FAILED, "--timeout"),
    "negative attempts": Row(["--attempts", "-3", "--", "true"], FAILED, "--attempts"),
    "negative exit code": Row(["--error-exit-code=-1", "--", "true"], FAILED, "--error-exit-code"),
    "infinite timeout": Row(["--timeout", "1e309", "--", "true"], FAILED, "--timeout"),
    "unclosed ipv6 endpoint": Row(["--endpoint", "http://[::1", "--", "true"], FAILED, "--endpoint"),
    "port out of range": Row(["--endpoint", "http://127.0.0.1:99999", "--", "true"], FAILED, "--endpoint"),
    "port not a number": Row(["--endpoint", "http://a:b", "--", "true"], FAILED, "--endpoint"),
    "ipv6 endpoint of colons": Row(["--endpoint", "http://[:]", "--", "true"], FAILED, "not a usable URL"),
    "endpoint with user": Row(["--endpoint", "http://user@127.0.0.1", "--", "true"], FAILED, "--endpoint"),
    "https endpoint": Row(["--endpoint", "https://127.0.0.1", "--", "true"], FAILED, "plain HTTP, not HTTPS"),
    "https endpoint twin": Row(
        ["--optional", "--", "true"],
        FAILED,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT: IMDS speaks plain HTTP, not HTTPS",
        {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "HTTPS://127.0.0.1:9"},
    ),
    "twin superscript": Row(["--", "true"], FAILED, "IMDS_SHIM_ATTEMPTS", {"IMDS_SHIM_ATTEMPTS": "²"}),
    "twin bad exit code": Row(
        ["--", "true"], FAILED, "IMDS_SHIM_ERROR_EXIT_CODE", {"IMDS_SHIM_ERROR_EXIT_CODE": "²"}
    ),
    "sdk huge attempts": Row(
        ["--", "true"],
        FAILED,
        "AWS_METADATA_SERVICE_NUM_ATTEMPTS",
        {"AWS_METADATA_SERVICE_NUM_ATTEMPTS": "1" * 5000},
    ),
    "sdk non-ascii mode": Row(
        ["--", "true"],
        FAILED,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
        {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "ünï"},
    ),
    "sdk role with slash": Row(
        ["--", "true"], FAILED, "AWS_EC2_INSTANCE_PROFILE_NAME", {"AWS_EC2_INSTANCE_PROFILE_NAME": "a/b"}
    ),
    "twin boolean word": Row(["--", "true"], FAILED, "IMDS_SHIM_OPTIONAL", {"IMDS_SHIM_OPTIONAL": "perhaps"}),
    "simulator port": Row(["simulate", "--port", "²", "--", "true"], FAILED, "--port"),
    "simulator empty host": Row(["simulate", "--host", "", "--", "true"], FAILED, "--host"),
    # The exec path: argv, environment and standard streams.
    "empty command": Row(["--", ""], FAILED, "empty string"),
    "command like an option": Row(["--", "--help"], NOT_FOUND, "command not found"),
    "command name too long": Row(["--", "x" * 300], NOT_EXECUTABLE, "File name too long"),
    "directory as command": Row(["--", "/"], NOT_EXECUTABLE, "permission denied"),
    "long argv": Row(["--", "true", *["a" * 100] * 3000], 0),
    "stdin closed": Row(["--", "true"], 0, shell="<&-"),
    "stdout closed, exec": Row(["--", "true"], 0, shell=">&-"),
    "stdout closed, export": Row(["export"], FAILED, "cannot write the result to stdout", shell=">&-"),
    "stdout closed, credential-process": Row(["credential-process"], FAILED, "cannot write", shell=">&-"),
    "stdout closed, doctor": Row(["doctor"], FAILED, "cannot write the result to stdout", shell=">&-"),
    "stdout closed, help": Row(["--help"], FAILED, "cannot write the result to stdout", shell=">&-"),
    "stderr closed, bad option": Row(["--attempts", "²", "--", "true"], FAILED, shell="2>&-"),
    "stderr closed, unreachable": Row(
        ["--", "true"], FAILED, shell="2>&-", env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}
    ),
    # IMDS answers with odd types and encodings (retries cut to 2 to keep the table fast).
    "role not utf-8": Row(
        ["--attempts", "2", "--", "true"], FAILED, "not a role name", imds=imds_answers(role=b"\xff\xfe-role")
    ),
    "role non-ascii": Row(
        ["--attempts", "2", "--", "true"], FAILED, "not a role name", imds=imds_answers(role="rôle".encode())
    ),
    "credentials nested deep": Row(
        ["--attempts", "2", "--", "true"],
        FAILED,
        "not valid JSON",
        imds=imds_answers(credentials=b"[" * 60000),
    ),
    "credentials not utf-8": Row(
        ["--attempts", "2", "--", "true"],
        FAILED,
        "not valid JSON",
        imds=imds_answers(credentials=b'{"Code": "\xff"}'),
    ),
    "credentials a list": Row(
        ["--attempts", "2", "--", "true"],
        FAILED,
        "not a JSON object",
        imds=imds_answers(credentials=[GOOD_CREDENTIALS]),
    ),
    "key id a number": Row(
        ["--attempts", "2", "--", "true"],
        FAILED,
        "has no AccessKeyId",
        imds=imds_answers(credentials={**GOOD_CREDENTIALS, "AccessKeyId": 42}),
    ),
    "token with a nul": Row(
        ["--attempts", "2", "--", "true"],
        FAILED,
        "Token is not well-formed",
        imds=imds_answers(credentials={**GOOD_CREDENTIALS, "Token": SESSION_TOKEN + "\0x"}),
    ),
    "secret with a newline": Row(
        ["--attempts", "2", "export"],
        FAILED,
        "SecretAccessKey is not well-formed",
        imds=imds_answers(credentials={**GOOD_CREDENTIALS, "SecretAccessKey": SECRET + "\nX=1"}),
    ),
    "expiration year 99999": Row(
        ["--attempts", "2", "--", "true"],
        FAILED,
        "Expiration is not well-formed",
        imds=imds_answers(credentials={**GOOD_CREDENTIALS, "Expiration": "99999-01-01T00:00:00Z"}),
    ),
    "expiration a number": Row(
        ["--attempts", "2", "--", "true"],
        FAILED,
        "has no Expiration",
        imds=imds_answers(credentials={**GOOD_CREDENTIALS, "Expiration": 1e308}),
    ),
    "identity document nested deep": Row(["--", "true"], 0, imds=imds_answers(identity=b"[" * 60000)),
    "identity document region a list": Row(
        ["--", "true"], 0, "not a region name", imds=imds_answers(identity=b'{"region": ["x"]}')
    ),
}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_odd_input_gets_one_line_and_a_documented_status(
    row: Row, scripted_imds: Callable[[Script], ScriptedImds]
) -> None:
    """Documented exit status, at most one line on stderr, no traceback, no secret, no stray stdout."""
    env = clean_env(**row.env)
    if row.imds is not None:
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = scripted_imds(row.imds).url
    elif "AWS_EC2_METADATA_SERVICE_ENDPOINT" not in row.env:
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = scripted_imds(imds_answers()).url
    # The shell only rewires descriptors, then execs the shim with the arguments untouched.
    command = ["sh", "-c", f'exec "$@" {row.shell}', "sh", SHIM, *row.args]
    completed = subprocess.run(command, env=env, capture_output=True, timeout=60)
    stderr = completed.stderr.decode("utf-8", "replace")
    assert completed.returncode == row.status, stderr
    lines = stderr.splitlines()
    if "2>&-" in row.shell or (row.status == 0 and not row.says):
        assert lines == []
    elif row.status == 0:  # an optional value IMDS garbled: one warning, and the command ran
        (line,) = lines
        assert line.startswith("imds-shim: warning: ")
        assert row.says in line
    else:
        (line,) = lines
        assert line.startswith("imds-shim: error: ")
        assert row.says in line
        assert completed.stdout == b""
    assert "internal error" not in stderr
    assert "Traceback" not in stderr
    for secret in (SECRET, SESSION_TOKEN, IMDS_TOKEN):
        assert secret not in stderr


def test_non_utf8_argv_and_environment_reach_the_command_as_bytes(sim: Simulator) -> None:
    """Bytes that are not UTF-8, in argv and in an environment value, arrive unchanged."""
    odd = b"caf\xe9-\xff"
    env: dict[bytes, bytes] = {k.encode(): v.encode() for k, v in clean_env().items()}
    env[b"AWS_EC2_METADATA_SERVICE_ENDPOINT"] = sim.url.encode()
    env[b"ODD_VALUE"] = odd
    command = [SHIM.encode(), b"--", *(part.encode() for part in probe_command()), odd]
    completed = subprocess.run(command, env=env, capture_output=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert os.fsencode(report["argv"][-1]) == odd
    assert os.fsencode(report["env"]["ODD_VALUE"]) == odd


def test_non_blocking_stdout_still_gets_the_whole_export(sim: Simulator) -> None:
    """export writes all of its output even when stdout is a non-blocking pipe."""
    completed = subprocess.run(
        [SHIM, "export"],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.set_blocking(1, False),
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("export AWS_") == 8
