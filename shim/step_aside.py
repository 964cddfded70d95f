"""Step-aside rules: never shadow an identity more specific than the instance role.

The SDKs read environment credentials *before* web identity (IRSA), the container provider (ECS task
roles, EKS Pod Identity) and profiles, so exporting instance credentials over any of those would
silently swap the identity the operator chose. This module decides without touching the network
and without importing ``requests``.
"""

from __future__ import annotations

from shim.errors import UsageError
from shim.variables import (
    ACCESS_KEY,
    ACCOUNT_ID,
    FULL_URI,
    SECRET_KEY,
    SERVE_ADDRESS,
    SERVE_PATH,
    STATIC_CREDENTIALS,
)

TYPE_CHECKING = False  # no typing import at run time: this is the step-aside path
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping

# (variable, what it means) in the order the SDKs consult them after the environment keys.
MORE_SPECIFIC = (
    ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "an ECS task role"),
    (FULL_URI, "a container credentials endpoint (EKS Pod Identity)"),
    ("AWS_WEB_IDENTITY_TOKEN_FILE", "a web identity (EKS IRSA)"),
    ("AWS_PROFILE", "a named profile"),
    ("AWS_DEFAULT_PROFILE", "a named profile (botocore's older name for AWS_PROFILE)"),
)

# Everything that selects or carries an identity. --override clears all of it before exporting,
# so the command never sees a mix of two identities.
IDENTITY_FAMILY = (
    *STATIC_CREDENTIALS,
    ACCOUNT_ID,
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    FULL_URI,
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
)


KUBERNETES = "KUBERNETES_SERVICE_HOST"
# What EKS injects into a pod that has an identity of its own (IRSA; EKS Pod Identity).
POD_IDENTITY_VARIABLES = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    FULL_URI,
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)
SERVE_URL_PREFIX = f"http://{SERVE_ADDRESS}:"
OWN_ENDPOINT = "the endpoint of the imds-shim --serve this runs under"


def _is_set(environ: Mapping[str, str], name: str) -> bool:
    # docker run -e NAME= sets an empty value; the SDKs treat that as unset, and so do we.
    return environ.get(name, "") != ""


def more_specific_identities(environ: Mapping[str, str]) -> list[str]:
    """The variables of :data:`MORE_SPECIFIC` that are set, in the order the SDKs consult them."""
    return [name for name, _ in MORE_SPECIFIC if _is_set(environ, name)]


def in_pod(environ: Mapping[str, str]) -> bool:
    """Whether this runs in a Kubernetes pod (every pod gets the API server's address)."""
    return _is_set(environ, KUBERNETES)


def node_role_warning(environ: Mapping[str, str], expect_role: str | None) -> str | None:
    """The warning for a pod about to get the node's role, which every pod on the node shares."""
    if expect_role is not None or not in_pod(environ):
        return None
    if any(_is_set(environ, name) for name in POD_IDENTITY_VARIABLES):
        return None
    return (
        "in Kubernetes with no IRSA or EKS Pod Identity variable: handing out the node's instance "
        "role, which every pod on the node shares (an injection race can leave them out); "
        "pass --expect-role NAME (IMDS_SHIM_EXPECT_ROLE) to fail instead"
    )


def is_own_endpoint(environ: Mapping[str, str]) -> bool:
    """Whether the container credentials endpoint is an outer imds-shim's ``--serve`` endpoint."""
    url = environ.get(FULL_URI, "")
    if not url.startswith(SERVE_URL_PREFIX):
        return False
    port, slash, path = url[len(SERVE_URL_PREFIX) :].partition("/")
    return port.isdigit() and slash + path == SERVE_PATH


def meaning(environ: Mapping[str, str], name: str) -> str:
    """What a variable of :data:`MORE_SPECIFIC` that is set stands for, here."""
    if name == FULL_URI and is_own_endpoint(environ):
        return OWN_ENDPOINT
    return dict(MORE_SPECIFIC)[name]


def step_aside_cause(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The variable that makes the shim leave the environment alone, and why; None to fetch.

    Raises :class:`UsageError` for a half-set key pair: exporting over it would hide a mistake, and
    stepping aside would hand the command credentials that cannot work.
    """
    has_key, has_secret = _is_set(environ, ACCESS_KEY), _is_set(environ, SECRET_KEY)
    if has_key and has_secret:
        return ACCESS_KEY, f"{ACCESS_KEY} and {SECRET_KEY} are already set"
    if has_key != has_secret:
        present, missing = (ACCESS_KEY, SECRET_KEY) if has_key else (SECRET_KEY, ACCESS_KEY)
        raise UsageError(f"{present} is set but {missing} is not: set both, unset both, or pass --override")
    named = more_specific_identities(environ)
    if named:
        return named[0], f"{named[0]} is set ({meaning(environ, named[0])})"
    if environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true":
        return "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_DISABLED=true"
    return None


def reason_to_step_aside(environ: Mapping[str, str]) -> str | None:
    """Why the shim must leave the environment alone (see :func:`step_aside_cause`), or None."""
    cause = step_aside_cause(environ)
    return None if cause is None else cause[1]


def clear_identity(environ: MutableMapping[str, str]) -> list[str]:
    """Remove every identity variable (``--override``); return the names that were set."""
    cleared = [name for name in IDENTITY_FAMILY if name in environ]
    for name in cleared:
        del environ[name]
    return cleared
