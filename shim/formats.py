"""Output formats for ``export`` and ``credential-process``.

The shell formats quote every value for their shell, so ``eval "$(imds-shim export)"`` can never
run anything a value contains; values with control characters are refused outright, since no
format (least of all ``--env-file``) can carry a newline safely.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Callable

from shim.command_line.config import CREDENTIAL_PROCESS
from shim.credentials import Fetched, format_time
from shim.errors import ShimError
from shim.variables import ACCOUNT_ID, exported_variables


def _fish(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# PowerShell takes all of these as the single quote; inside '...' each is escaped by doubling it.
POWERSHELL_QUOTES = "'\u2018\u2019\u201a\u201b"


def _powershell(value: str) -> str:
    return "'" + "".join(char * 2 if char in POWERSHELL_QUOTES else char for char in value) + "'"


def _windows_cmd(name: str, value: str) -> str:
    if any(char in value for char in '"%!^'):
        raise ShimError(f"{name} has a character that windows-cmd cannot quote; use another format")
    return f'set "{name}={value}"'


LINE_FORMATS: dict[str, Callable[[str, str], str]] = {
    "env": lambda name, value: f"export {name}={shlex.quote(value)}",
    "env-no-export": lambda name, value: f"{name}={shlex.quote(value)}",
    "fish": lambda name, value: f"set -gx {name} {_fish(value)}",
    "powershell": lambda name, value: f"$Env:{name}={_powershell(value)}",
    "windows-cmd": _windows_cmd,
    # docker run --env-file takes everything after the first '=' literally: no quotes, no export.
    "dotenv": lambda name, value: f"{name}={value}",
}


# How each format that can removes a variable. IMDS did not tell the account: an AWS_ACCOUNT_ID left
# in the shell from another identity would sit next to the instance's keys (docker's --env-file
# and JSON cannot say "unset"). First, so that the status of what evaluates it is the exports'.
UNSET_FORMATS: dict[str, str] = {
    "env": "unset {}",
    "env-no-export": "unset {}",
    "fish": "set -e {}",
    "powershell": "Remove-Item Env:{} -ErrorAction SilentlyContinue",
    "windows-cmd": 'set "{}="',
}


def credential_process_document(fetched: Fetched) -> dict[str, object]:
    """The JSON an AWS config ``credential_process`` must print (Version 1)."""
    credentials = fetched.credentials
    document: dict[str, object] = {
        "Version": 1,
        "AccessKeyId": credentials.access_key_id,
        "SecretAccessKey": credentials.secret_access_key,
        "SessionToken": credentials.session_token,
        "Expiration": format_time(credentials.expiration),
    }
    if fetched.account_id:
        document["AccountId"] = fetched.account_id
    return document


def render(verb: str, format_name: str | None, fetched: Fetched, environ: Mapping[str, str]) -> str:
    """The whole output for ``export --format FORMAT`` or ``credential-process``."""
    if verb == CREDENTIAL_PROCESS or format_name == "process":
        return json.dumps(credential_process_document(fetched), indent=2) + "\n"
    variables = exported_variables(fetched, environ)
    for name, value in variables.items():
        if not value.isprintable():
            raise ShimError(f"{name} from IMDS contains control characters; refusing to print it")
    if format_name == "json":
        return json.dumps(variables, indent=2) + "\n"
    format_name = format_name or "env"
    line = LINE_FORMATS[format_name]
    unset = UNSET_FORMATS.get(format_name) if ACCOUNT_ID not in variables else None
    removed = unset.format(ACCOUNT_ID) + "\n" if unset else ""
    return removed + "".join(line(name, value) + "\n" for name, value in variables.items())
