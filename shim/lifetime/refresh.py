"""``--refresh``: hand the command a profile whose credentials refresh, instead of static keys.

Static environment credentials die at their expiration; an SDK application that runs for hours
needs credentials it can renew. The command gets a private AWS config file whose default profile
runs ``imds-shim credential-process`` (with the options this shim was given), and every SDK calls
it again shortly before the credentials expire.

The file lives in one private folder per user, ``$TMPDIR/imds-shim-UID`` (0700), reused by every
start: a folder that is a symlink, someone else's, or open to others is refused. The file's name
is a digest of its content and it is written by atomic rename, so concurrent starts with the same
options share one file and never see a half-written one, and starts do not pile up folders.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
from collections.abc import Mapping

from shim.command_line.config import CREDENTIAL_PROCESS, Config
from shim.command_line.values import shown
from shim.credentials import Fetched
from shim.errors import ShimError
from shim.imds.answers import is_region
from shim.log import log
from shim.runtime import this_program
from shim.variables import REGION_VARIABLES, identity_without_keys


def config_text(config: Config, region: str | None) -> str:
    """The config file: a default profile that runs this imds-shim, and the region if it is one.

    The region may come from the user's own ``AWS_REGION``: a value that is not a region name
    (a newline and a ``[profile]`` line, say) would add lines to the file, so it is left out.
    """
    command = shlex.join([*this_program(), *config.as_flags(), CREDENTIAL_PROCESS])
    if not command.isprintable():
        raise ShimError(
            "--refresh: the path of imds-shim has control characters, which an AWS config file cannot hold"
        )
    lines = ["[default]", f"credential_process = {command}"]
    if region and is_region(region):
        lines.append(f"region = {region}")
    elif region:
        log.warning("--refresh: the preset region is not a region name; the config file names none")
    return "\n".join(lines) + "\n"


def _unsafe_part(folder: str) -> str | None:
    """Why ``folder`` (absolute, no symlinks) could be changed under us by another user, or None.

    Every folder from / down must belong to root or to us; one that others may write to must have
    the sticky bit, so that they cannot rename or replace what is ours in it. A 1777 folder of
    another user fails: its owner may rename anything in it, our private folder included.
    """
    part = folder
    while True:
        info = os.stat(part)
        if info.st_uid not in (0, os.getuid()):
            return f"{part} belongs to another user"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return f"{part} is open to others for writing"
        if part == "/":
            return None
        part = os.path.dirname(part)


def private_folder(environ: Mapping[str, str]) -> tuple[str, int]:
    """This user's folder for config files, and a descriptor of it; created 0700 when missing."""
    # An absolute path without symlinks (a relative TMPDIR would be lost at the command's first
    # `cd`), checked to be in folders no other user can change.
    base = os.path.realpath(environ.get("TMPDIR") or "/tmp")  # noqa: S108
    try:
        unsafe = _unsafe_part(base)
    except OSError as error:
        raise ShimError(f"--refresh: cannot use TMPDIR {shown(base)}: {error.strerror}") from None
    if unsafe:
        raise ShimError(
            f"--refresh: TMPDIR {shown(base)} is not safe for the config file ({unsafe}): "
            "set TMPDIR to a folder only you or root can change"
        )
    # A known name on purpose: it is checked below (ours, 0700, no symlink), and reused.
    path = os.path.join(base, f"imds-shim-{os.getuid()}")
    just_made = True
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        just_made = False
    except OSError as error:
        raise ShimError(
            f"--refresh: cannot create {path}: {error.strerror} (set TMPDIR to a writable folder)"
        ) from None
    try:
        folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except PermissionError:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        raise ShimError(
            f"--refresh: {path} has mode {mode:04o}, which leaves it unusable: remove it"
        ) from None
    except OSError:
        raise ShimError(f"--refresh: {path} is not a folder (a symlink?): remove it") from None
    info = os.fstat(folder)
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.getuid() or mode & 0o077:
        os.close(folder)
        raise ShimError(
            f"--refresh: {path} belongs to someone else or is open to others: remove it, or set TMPDIR"
        )
    if mode != 0o700:
        # mkdir's mode passes through the umask: under 0177 or 0277 the folder came out without
        # the bits its owner needs (an earlier version left it so). Ours and closed to others: mended.
        try:
            os.fchmod(folder, 0o700)
        except OSError as error:
            os.close(folder)
            raise ShimError(
                f"--refresh: {path} has mode {mode:04o}, not 0700, and cannot be mended "
                f"({error.strerror}): remove it"
            ) from None
        if not just_made:
            log.warning(f"--refresh: {path} had mode {mode:04o}, which leaves it unusable; set it to 0700")
    return path, folder


def write_config(text: str, environ: Mapping[str, str]) -> str:
    """Write ``text`` (0600) into the private folder by atomic rename; return the file's path."""
    path, folder = private_folder(environ)
    name = "config-" + hashlib.sha256(text.encode()).hexdigest()[:16]
    temporary = f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=folder)
        with os.fdopen(descriptor, "w") as config_file:
            config_file.write(text)
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError as error:
        raise ShimError(f"--refresh: cannot write the config file in {path}: {error.strerror}") from None
    finally:
        os.close(folder)
    return os.path.join(path, name)


def refreshing_environment(config: Config, environ: Mapping[str, str], fetched: Fetched) -> dict[str, str]:
    """Point the SDKs at the credential_process profile instead of static keys.

    ``fetched`` is the first fetch: it has already failed early if it had to, and it tells the
    region and account.
    """
    environment = identity_without_keys(environ, fetched)
    path = write_config(config_text(config, environment.get(REGION_VARIABLES[0])), environ)
    environment["AWS_CONFIG_FILE"] = path
    # The Go SDK v1 reads the config file only when asked to.
    environment["AWS_SDK_LOAD_CONFIG"] = "1"
    log.info(f"--refresh: credentials come from credential_process in {path}", config_file=str(path))
    return environment
