"""The docs say what the shim does: every snippet on the operator pages is run, the options page is
what the option tables make, and every flag --help lists is documented."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import DOCS, OPERATOR_PAGES, SHIM, clean_env, doc_block, doc_blocks, own_pid_namespace

ROOT = DOCS.parent


def _defined_tests() -> set[str]:
    """The names of every test function in tests/."""
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        names |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    return {name for name in names if name.startswith("test_")}


@pytest.mark.parametrize("page", OPERATOR_PAGES)
def test_every_snippet_on_the_page_is_run_by_a_test(page: str) -> None:
    """A block is a console session (run below) or names the test that runs it, which exists."""
    blocks = doc_blocks(page)
    assert blocks, page
    defined = _defined_tests()
    for block in blocks:
        if block.language == "console":
            assert block.test is None, block
            continue
        assert block.test is not None, f"{page}: a {block.language} block no test runs:\n{block.text}"
        assert block.test in defined, f"{page}: no test named {block.test}"


SESSIONS = [
    (block.page, number, block.text)
    for page in OPERATOR_PAGES
    for number, block in enumerate(doc_blocks(page))
    if block.language == "console"
]


def _commands(session: str) -> list[tuple[str, str]]:
    """A console session as (command, what it prints) pairs: ``$ `` starts a command."""
    pairs: list[tuple[str, list[str]]] = []
    for line in session.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            assert pairs, f"output before the first command: {line}"
            pairs[-1][1].append(line)
    return [(command, "".join(f"{line}\n" for line in output)) for command, output in pairs]


def _pattern(expected: str) -> re.Pattern[str]:
    """``...`` in an expected output stands for any text (as in doctest); the rest is literal."""
    return re.compile(".*?".join(re.escape(part) for part in expected.split("...")), re.DOTALL)


@pytest.mark.behaviour
@pytest.mark.parametrize(("page", "number", "session"), SESSIONS, ids=[f"{p}-{n}" for p, n, _ in SESSIONS])
def test_each_console_session_prints_what_the_page_says(
    page: str, number: int, session: str, tmp_path: Path
) -> None:
    """Each command, run by sh as written (stderr with stdout, in a clean environment whose PATH
    starts with the imds-shim under test, as PID 1 of a PID namespace of its own, as in a
    container: `status` sees no other test's supervisor), prints what the page shows."""
    env = clean_env(HOME=str(tmp_path))
    env["PATH"] = f"{os.path.dirname(SHIM)}:{env['PATH']}"
    for command, expected in _commands(session):
        completed = subprocess.run(
            [*own_pid_namespace(), "sh", "-c", command],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        )
        assert _pattern(expected).fullmatch(completed.stdout), (
            f"{page}: $ {command}\nexpected:\n{expected}\ngot:\n{completed.stdout}"
        )


AWS_CLI = "/usr/bin/aws"  # Debian's awscli is v2


def test_the_hop_limit_fix_is_a_real_aws_command(moto_endpoint: str, tmp_path: Path) -> None:
    """troubleshooting.md's fix, run as written by the AWS CLI against moto's EC2 (only the
    instance ID is moto's, and --endpoint-url is added): the instance's hop limit becomes 2."""
    import boto3

    if not os.access(AWS_CLI, os.X_OK):
        pytest.fail(f"no AWS CLI at {AWS_CLI} (Debian package awscli)")
    credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_endpoint, **credentials)
    instance_id = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    command = doc_block("troubleshooting.md", "test_the_hop_limit_fix_is_a_real_aws_command", "sh")
    words = command.replace("\\\n", " ").split()
    assert words[:3] == ["aws", "ec2", "modify-instance-metadata-options"]
    words = [instance_id if word == "i-0123456789abcdef0" else word for word in words]
    env: dict[str, Any] = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    completed = subprocess.run(
        [AWS_CLI, *words[1:], "--endpoint-url", moto_endpoint],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    assert described["MetadataOptions"]["HttpEndpoint"] == "enabled"


def test_the_options_page_is_what_the_option_tables_make() -> None:
    """docs/options.md and the README's copies (the modes, the exit statuses) are
    scripts/reference-docs.py's output (make docs), so they cannot drift."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reference-docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr


def test_every_flag_of_help_is_in_the_readme_or_the_docs() -> None:
    """Each --flag that `imds-shim --help` or `simulate --help` names appears in README or docs/."""
    helps = [
        subprocess.run([SHIM, *verb, "--help"], capture_output=True, text=True).stdout
        for verb in ([], ["simulate"])
    ]
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", "".join(helps)))
    assert "--log-format" in flags
    written = (ROOT / "README.md").read_text() + "".join(page.read_text() for page in DOCS.glob("*.md"))
    assert sorted(flag for flag in flags if f"`{flag}" not in written) == []


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]
    return [row for row in rows if row[0].startswith(first_cell)]


def test_the_exit_code_page_lists_the_shims_own() -> None:
    """docs/exit-codes.md's table lists every status of the shim's own, with no other number."""
    from shim.command_line.exit_codes import MEANINGS

    numbers = [row[0] for row in _table_rows((DOCS / "exit-codes.md").read_text(), "1")]
    assert numbers == [status for status, _ in MEANINGS]


def test_the_readme_fits_on_a_readers_screen() -> None:
    """The README stays a README: at most 350 lines; the reference lives in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 350
