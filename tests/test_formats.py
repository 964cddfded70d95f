"""Export formats, proven by round trip: whatever the values, each format's output gives them back
byte for byte in the real interpreter, or the format refuses (exit 125, nothing on stdout).

Values come from hypothesis: any text, and a set of hostile ones (quotes of every kind, ``$(...)``,
backticks, newlines, PowerShell's four other single quotes). The shell formats are evaluated by
sh, dash, bash and fish themselves. PowerShell and cmd are not installable here, so their output
is read back by their documented quoting rules; dotenv by the rules of ``docker run --env-file``.
The values bypass the IMDS boundary on purpose (region and preset values also reach the formats,
and a format must be safe on its own).
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from typing import Callable

import pytest
from helpers import missing
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from shim.credentials import Credentials, Fetched
from shim.errors import ShimError
from shim.formats import POWERSHELL_QUOTES, render

HOSTILE = [
    "x'y",
    'x"y',
    "x\u2019;Start-Process calc;\u2019x",
    "\u2018\u201a\u201b",
    "$(touch /tmp/pwned)",
    "`id`",
    "a\\'b",
    "a\\",
    "%PATH%",
    "!x!",
    "^",
    "a\nb",
    "a\rb",
    "\u2028",
    "\u0085",
    "\x1b[31m",
    " lead",
    "trail ",
    "#comment",
    "a=b",
    "\t",
    "\U0001f600",
    "é",
]
# Any text but NUL (no environment variable can hold one) and lone surrogates (no encoding can);
# half of the examples printable only, so that most of them get past the formats' refusal.
ANY = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=30)
PRINTABLE = st.text(
    st.characters(exclude_categories=["Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"]) | st.just(" "),
    min_size=1,
    max_size=30,
)
VALUE_SETS = st.lists(PRINTABLE, min_size=5, max_size=5) | st.lists(ANY, min_size=5, max_size=5)
NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ACCOUNT_ID")


def hostile_examples(test: Callable[..., None]) -> Callable[..., None]:
    """Every HOSTILE value, five at a time, as explicit examples besides the generated ones."""
    for start in range(0, len(HOSTILE), 5):
        chunk = HOSTILE[start : start + 5]
        test = example(values=chunk + HOSTILE[: 5 - len(chunk)]).via("hostile")(test)
    return test


def fetched_with(values: list[str]) -> Fetched:
    key, secret, token, region, account = values
    credentials = Credentials(key, secret, token, datetime(2099, 1, 1, tzinfo=timezone.utc))
    return Fetched(credentials, "role", region, account, 2, 4)


def expected(values: list[str]) -> dict[str, str]:
    key, secret, token, region, account = values
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_SESSION_TOKEN": token,
        "AWS_SECURITY_TOKEN": token,
        "AWS_CREDENTIAL_EXPIRATION": "2099-01-01T00:00:00Z",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCOUNT_ID": account,
    }


def rendered(format_name: str, values: list[str]) -> str | None:
    """The format's output, or None where it refuses."""
    try:
        return render("export", format_name, fetched_with(values), {})
    except ShimError:
        return None


SHELLS = {
    "sh": ("sh", "env"),
    "dash": ("dash", "env"),
    "bash": ("bash", "env"),
    "bash, no export": ("bash", "env-no-export"),
    "fish": ("fish", "fish"),
}


@pytest.mark.parametrize(("shell", "format_name"), SHELLS.values(), ids=SHELLS.keys())
@settings(max_examples=40, deadline=None)
@given(values=VALUE_SETS)
@hostile_examples
def test_shell_formats_round_trip_in_the_real_shell(shell: str, format_name: str, values: list[str]) -> None:
    """eval'd by the shell itself, every variable comes back byte for byte, or the format refuses."""
    if shutil.which(shell) is None:
        missing(f"{shell} is not installed (Debian package {shell})")
    output = rendered(format_name, values)
    event("refused" if output is None else "round trip")
    if output is None:
        return
    variables = expected(values)
    printer = "printf '%s\\0'" + "".join(f' "${name}"' for name in variables)
    if shell == "fish":
        printer = "printf '%s\\0'" + "".join(f" ${name}" for name in variables)
    completed = subprocess.run([shell, "-c", output + printer], capture_output=True, timeout=30)
    assert completed.returncode == 0, completed.stderr
    got = completed.stdout.split(b"\0")[:-1]
    assert got == [value.encode() for value in variables.values()]


def read_powershell(line: str) -> tuple[str, str]:
    """``$Env:NAME='value'`` read as PowerShell reads a single-quoted string (about_Quoting_Rules:
    any of ' U+2018 U+2019 U+201A U+201B is a single quote; two in a row stand for one)."""
    assert line.startswith("$Env:")
    name, _, rest = line[5:].partition("=")
    assert rest[0] == "'"
    value, index = [], 1
    while True:
        char = rest[index]
        if char in POWERSHELL_QUOTES:
            if index + 1 < len(rest) and rest[index + 1] in POWERSHELL_QUOTES:
                value.append(char)
                index += 2
                continue
            assert index == len(rest) - 1, f"code after the string: {rest[index + 1 :]!r}"
            return name, "".join(value)
        value.append(char)
        index += 1


def read_windows_cmd(line: str) -> tuple[str, str]:
    """``set "NAME=value"``: cmd still expands ``%`` (and ``!`` with delayed expansion) and treats
    ``^`` and ``"`` specially inside the quotes, so the value must have none of them."""
    assert line.startswith('set "')
    assert line.endswith('"')
    name, _, value = line[5:-1].partition("=")
    assert not set(value) & set('"%!^'), value
    return name, value


def read_dotenv(line: str) -> tuple[str, str]:
    """docker run --env-file: the line up to the first ``=`` is the name, the rest the value."""
    name, _, value = line.partition("=")
    return name, value


READERS = {"powershell": read_powershell, "windows-cmd": read_windows_cmd, "dotenv": read_dotenv}


@pytest.mark.parametrize("format_name", READERS)
@settings(max_examples=200, deadline=None)
@given(values=VALUE_SETS)
@hostile_examples
def test_documented_formats_round_trip_by_their_rules(format_name: str, values: list[str]) -> None:
    """PowerShell, cmd and dotenv output read back by their documented rules gives the values."""
    output = rendered(format_name, values)
    event("refused" if output is None else "round trip")
    if output is None:
        return
    lines = output.split("\n")
    assert lines[-1] == ""
    assert dict(READERS[format_name](line) for line in lines[:-1]) == expected(values)


def test_powershell_doubles_every_single_quote() -> None:
    """The finding: a U+2019 once ended the string, and the rest ran as code."""
    line = rendered("powershell", ["k", "x\u2019;Start-Process calc;\u2019x", "t", "r", "a"])
    assert line is not None
    assert "$Env:AWS_SECRET_ACCESS_KEY='x\u2019\u2019;Start-Process calc;\u2019\u2019x'" in line


def without_account() -> Fetched:
    credentials = Credentials("ASIAKEY", "secret", "token", datetime(2099, 1, 1, tzinfo=timezone.utc))
    return Fetched(credentials, "role", "eu-west-1", None, 2, 4)


@pytest.mark.parametrize(("shell", "format_name"), SHELLS.values(), ids=SHELLS.keys())
def test_a_stale_account_is_removed_when_imds_tells_none(shell: str, format_name: str) -> None:
    """eval'd over a shell holding another identity's AWS_ACCOUNT_ID: the account is gone."""
    if shutil.which(shell) is None:
        missing(f"{shell} is not installed (Debian package {shell})")
    output = render("export", format_name, without_account(), {"AWS_ACCOUNT_ID": "111111111111"})
    show = (
        "set -q AWS_ACCOUNT_ID; and echo $AWS_ACCOUNT_ID; or echo unset"
        if shell == "fish"
        else ('echo "${AWS_ACCOUNT_ID-unset}"')
    )
    completed = subprocess.run(
        [shell, "-c", output + show],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "AWS_ACCOUNT_ID": "111111111111"},
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "unset\n"


WINDOWS_REMOVALS = {
    "powershell": "Remove-Item Env:AWS_ACCOUNT_ID -ErrorAction SilentlyContinue",
    "windows-cmd": 'set "AWS_ACCOUNT_ID="',
}


@pytest.mark.parametrize(("format_name", "removal"), WINDOWS_REMOVALS.items(), ids=WINDOWS_REMOVALS.keys())
def test_windows_formats_remove_a_stale_account_too(format_name: str, removal: str) -> None:
    """PowerShell and cmd remove the variable by their documented commands, only when IMDS told none."""
    assert render("export", format_name, without_account(), {}).splitlines()[0] == removal
    told = render("export", format_name, fetched_with(["k", "s", "t", "r", "123456789012"]), {})
    assert removal not in told
