"""The fetch sequence: role, then its credentials, then (when needed) region and account.

Each answer is checked by :mod:`shim.imds.answers` inside the client's retry loop, so a garbled one
is fetched again like a 5xx.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from shim.command_line.config import Config
from shim.credentials import Credentials, Fetched, format_duration, format_time, seconds_left
from shim.errors import CredentialsUnavailable, ImdsUnreachable, NoRoleAttached, RoleNotFound, UnexpectedRole
from shim.imds.answers import Identity, parse_credentials, parse_identity_document, parse_region, parse_role
from shim.imds.client import ImdsClient
from shim.imds.deadline import Deadline
from shim.imds.protocol import IDENTITY_DOCUMENT_PATH, REGION_PATH, ROLE_PATH
from shim.log import log
from shim.variables import REGION_VARIABLES

# Seconds that region and account may take in all: a throttled retry or two, never the whole
# deadline (an identity document trickling a byte at a time once held the command for 30 s).
OPTIONAL_DATA_BUDGET = 5.0


def discover_role(client: ImdsClient) -> str:
    """The attached role's name, from ``security-credentials/`` (with the slash, as SDKs ask)."""
    discovered = client.get(ROLE_PATH, parse_role)
    if discovered is None:
        raise NoRoleAttached(
            "no IAM role is attached to this instance (IMDS answered 404 to role discovery): "
            "attach an instance profile, e.g. aws ec2 associate-iam-instance-profile"
        )
    return discovered


def role_credentials(client: ImdsClient, role: str) -> Credentials:
    """The role's current credentials; warns (and still returns them) when already expired."""
    credentials = client.get(ROLE_PATH + urllib.parse.quote(role, safe="+=,.@_-"), parse_credentials)
    if credentials is None:
        raise RoleNotFound(
            f"IMDS has no credentials for role {role!r}: check --role / IMDS_SHIM_ROLE / "
            "AWS_EC2_INSTANCE_PROFILE_NAME against the instance profile's role"
        )
    left = seconds_left(credentials)
    if left <= 0:
        log.warning(
            f"IMDS handed out credentials that expired {format_duration(-left)} ago "
            f"({format_time(credentials.expiration)}); using them anyway, as the AWS SDKs do: "
            "AWS may keep accepting them while IMDS recovers"
        )
    return credentials


def lookup_identity(client: ImdsClient, need_region: bool) -> Identity:
    """Region and account from the identity document, else the region from ``placement/region``.

    A busy IMDS is retried as usual, but a missing (404) or unreadable document is not worth a
    retry storm: it costs one request, then the single-value fallback. Neither value is worth
    failing the run for, nor holding the command back: both together get at most
    :data:`OPTIONAL_DATA_BUDGET` of what is left of the deadline.
    """
    identity = Identity(None, None)
    overall = client.deadline
    client.deadline = Deadline(min(OPTIONAL_DATA_BUDGET, overall.remaining()), overall.clock)
    try:
        identity = client.get(IDENTITY_DOCUMENT_PATH, parse_identity_document) or identity
        if need_region and identity.region is None:
            identity = Identity(client.get(REGION_PATH, parse_region), identity.account_id)
    except CredentialsUnavailable as error:
        log.warning(f"carrying on without region and account: {error}")
    finally:
        client.deadline = overall
    return identity


def check_expected_role(config: Config, role: str) -> None:
    """Refuse ``role`` (given or discovered) when it is not the one --expect-role names."""
    if config.expect_role is not None and role != config.expect_role:
        given = "--role names" if config.role else "this instance's role is"
        raise UnexpectedRole(
            f"--expect-role {config.expect_role}: {given} {role}; refusing to hand out its credentials"
        )


def current_credentials(client: ImdsClient, config: Config) -> tuple[str, Credentials]:
    """The role (given, or discovered anew: an instance profile can be swapped) and its credentials,
    refused before they are fetched if the role is not the one --expect-role names."""
    role = config.role or discover_role(client)
    check_expected_role(config, role)
    return role, role_credentials(client, role)


def fresh_credentials(config: Config) -> Fetched:
    """The role and its credentials alone, fetched anew under a deadline of their own (a renewal).

    IMDS out of reach at a renewal is an outage, not a sign of running off EC2: the error says
    what the network did, without the start-up advice.
    """
    client = ImdsClient(config, Deadline(config.deadline))
    try:
        role, credentials = current_credentials(client, config)
    except ImdsUnreachable as error:
        raise ImdsUnreachable(f"IMDS stopped answering: {error.detail}", error.detail) from None
    finally:
        client.close()
    return Fetched(credentials, role, None, None, client.version or 1, client.requests_sent)


def fetch(client: ImdsClient, config: Config, environ: Mapping[str, str]) -> Fetched:
    """Role, credentials, and (when not already known) region and account, from IMDS."""
    role, credentials = current_credentials(client, config)
    need_region = not any(environ.get(name) for name in REGION_VARIABLES)
    identity = Identity(None, None)
    if need_region or credentials.account_id is None:
        identity = lookup_identity(client, need_region)
    return Fetched(
        credentials=credentials,
        role=role,
        region=identity.region,
        account_id=credentials.account_id or identity.account_id,
        imds_version=client.version or 1,
        requests_sent=client.requests_sent,
    )
