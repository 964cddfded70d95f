"""``--refresh``: hand the command a profile whose credentials refresh, instead of static keys.

Static environment credentials die at their expiration; an SDK application that runs for hours
needs credentials it can renew. The command gets a private AWS config file whose default profile
runs ``imds-shim credential-process`` (with the options this shim was given), and every SDK calls
it again shortly before the credentials expire.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Mapping

from shim.config import Config
from shim.credentials import REGION_VARIABLES, Fetched, region_variables
from shim.log import log
from shim.runtime import this_program

STATIC_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
)


def write_config(config: Config, region: str | None) -> str:
    """Write the private config file (directory 0700, file 0600) and return its path."""
    command = [*this_program(), *config.as_flags(), "credential-process"]
    lines = ["[default]", f"credential_process = {shlex.join(command)}"]
    if region:
        lines.append(f"region = {region}")
    directory = tempfile.mkdtemp(prefix="imds-shim-")  # created 0700
    path = os.path.join(directory, "config")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as config_file:
        config_file.write("\n".join(lines) + "\n")
    return path


def refreshing_environment(
    config: Config, environ: Mapping[str, str], fetched: Fetched
) -> dict[str, str]:
    """Point the SDKs at the credential_process profile instead of static keys.

    ``fetched`` is the first fetch: it has already failed early if it had to, and it tells the
    region and account.
    """
    environment = {k: v for k, v in environ.items() if k not in STATIC_CREDENTIALS}
    regions = region_variables(environ, fetched.region)
    path = write_config(config, regions.get(REGION_VARIABLES[0]))
    environment.update(regions)
    if fetched.account_id:
        environment["AWS_ACCOUNT_ID"] = fetched.account_id
    environment["AWS_CONFIG_FILE"] = path
    # The Go SDK v1 reads the config file only when asked to.
    environment["AWS_SDK_LOAD_CONFIG"] = "1"
    log.info(f"--refresh: credentials come from credential_process in {path}")
    return environment
