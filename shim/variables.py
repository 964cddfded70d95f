"""The environment variables a fetch becomes, and which of them belong to one identity.

Step-aside path: imports nothing but the shim's cheap modules (no ``requests``, no ``typing``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at run time: this is the step-aside path
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

    from shim.credentials import Fetched

ACCESS_KEY = "AWS_ACCESS_KEY_ID"
SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ACCOUNT_ID = "AWS_ACCOUNT_ID"
# What static credentials consist of; --refresh removes them, an export replaces them all.
STATIC_CREDENTIALS = (
    ACCESS_KEY,
    SECRET_KEY,
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
)
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
# Where --serve's endpoint listens: every SDK accepts 127.0.0.1 over plain http (some refuse other
# hosts), and a path of its own tells it from an ECS or EKS Pod Identity endpoint, for ``doctor``
# and for an imds-shim started under it.
SERVE_ADDRESS = "127.0.0.1"
SERVE_PATH = "/imds-shim/credentials"


def exported_variables(fetched: Fetched, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a fetch sets: credentials, expiry, region and account."""
    from shim.credentials import format_time

    credentials = fetched.credentials
    variables = {
        ACCESS_KEY: credentials.access_key_id,
        SECRET_KEY: credentials.secret_access_key,
        "AWS_SESSION_TOKEN": credentials.session_token,
        # botocore reads AWS_SECURITY_TOKEN *first*: a stale inherited value would win.
        "AWS_SECURITY_TOKEN": credentials.session_token,
        "AWS_CREDENTIAL_EXPIRATION": format_time(credentials.expiration),
    }
    variables.update(region_variables(environ, fetched.region))
    if fetched.account_id:
        variables[ACCOUNT_ID] = fetched.account_id
    return variables


def export_into(environ: MutableMapping[str, str], variables: Mapping[str, str]) -> None:
    """Put ``variables`` into ``environ``, dropping an inherited account the new keys may not share.

    An ``AWS_ACCOUNT_ID`` left over from another identity next to the instance's keys would mix
    two identities, so it goes whenever IMDS did not tell the account.
    """
    if ACCOUNT_ID not in variables:
        environ.pop(ACCOUNT_ID, None)
    environ.update(variables)


def identity_without_keys(environ: Mapping[str, str], fetched: Fetched | None) -> dict[str, str]:
    """``environ`` without static keys, plus region and account: for the modes whose credentials
    come from elsewhere (--refresh's profile, --serve's endpoint), which static keys would outrank.
    ``fetched`` None: nothing known from IMDS yet, so only a preset region."""
    environment = {
        name: value for name, value in environ.items() if name not in (*STATIC_CREDENTIALS, ACCOUNT_ID)
    }
    environment.update(region_variables(environ, fetched.region if fetched else None))
    if fetched and fetched.account_id:
        environment[ACCOUNT_ID] = fetched.account_id
    return environment


def region_variables(environ: Mapping[str, str], region: str | None) -> dict[str, str]:
    """Both region variables: a preset one is copied to the other, else IMDS's region is used.

    The SDKs disagree on which they read (JS and Java only ``AWS_REGION``, botocore only
    ``AWS_DEFAULT_REGION``), so both are always set together.
    """
    preset = [environ[name] for name in REGION_VARIABLES if environ.get(name)]
    chosen = preset[0] if preset else region
    if not chosen:
        return {}
    return {name: environ.get(name) or chosen for name in REGION_VARIABLES}
