"""No secret ever reaches a log line, an error message or doctor's report, at any verbosity."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
from helpers import clean_env, run_shim

from shim.simulator.server import Simulator

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour

SCENARIOS: list[tuple[str, dict[str, Any], list[str], dict[str, str]]] = [
    ("healthy", {}, ["--", "true"], {}),
    ("imdsv1 fallback", {"token_status": 403}, ["--", "true"], {}),
    ("hop limit fallback", {"token_hang": True}, ["--", "true"], {}),
    ("hop limit fatal", {"token_hang": True, "imds_v2_required": True}, ["--", "true"], {}),
    ("busy then fine", {"fail_first": 2, "fail_status": 503}, ["--", "true"], {}),
    ("revoked token", {"revoke_first_token": True}, ["--", "true"], {}),
    ("expired", {"expires_in": -60}, ["--", "true"], {}),
    ("malformed once", {"credentials_fault": "malformed", "fault_times": 1}, ["--", "true"], {}),
    ("missing token", {"credentials_fault": "missing-token"}, ["--attempts", "2", "--", "true"], {}),
    ("error code", {"credentials_fault": "error-code"}, ["--attempts", "2", "--", "true"], {}),
    ("oversized", {"credentials_fault": "oversized"}, ["--attempts", "2", "--", "true"], {}),
    ("no role", {"no_role": True}, ["--optional", "--", "true"], {}),
    (
        "override",
        {},
        ["--override", "--", "true"],
        {"AWS_ACCESS_KEY_ID": "AKIAOLD", "AWS_SECRET_ACCESS_KEY": "old-secret-value"},
    ),
    ("refresh", {}, ["--refresh", "--", "true"], {}),
    ("export", {}, ["export"], {}),
    ("export json", {}, ["export", "--format", "json"], {}),
    ("credential-process", {}, ["credential-process"], {}),
    ("doctor", {}, ["doctor"], {}),
    ("doctor json", {"token_hang": True}, ["doctor", "--format", "json"], {}),
    ("command not found", {}, ["--", "no-such-command-xyz"], {}),
    (
        "interruption watch",
        {"spot_interruption_in": 0, "rebalance_in": 0, "imds_v2_required": True},
        ["--on-interruption", "TERM", "--interruption-poll", "1", "--", "sleep", "3"],
        {},
    ),
    ("doctor, instance end", {"spot_interruption_in": 0, "scheduled_event": "system-reboot"}, ["doctor"], {}),
]
PRINTS_CREDENTIALS = {"export", "export json", "credential-process"}


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize(("name", "knobs", "args", "extra_env"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_no_secret_in_any_output_at_debug_level(
    simulator: Callable[..., Simulator],
    log_format: str,
    name: str,
    knobs: dict[str, Any],
    args: list[str],
    extra_env: dict[str, str],
) -> None:
    """Secret keys, session tokens and IMDS tokens never appear; key IDs only masked. In the JSON
    form, neither in a line nor in what a line decodes to."""
    sim = simulator(**knobs)
    env = clean_env(
        IMDS_SHIM_LOG_LEVEL="debug",
        IMDS_SHIM_LOG_FORMAT=log_format,
        AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url,
        **extra_env,
    )
    result = run_shim(["-vv", *args], env=env)
    assert sim.requests, "the scenario never reached the simulator"
    secrets = [*sim.state.tokens]
    for issued in sim.state.issued.values():
        secrets += [issued.secret_access_key, issued.token, issued.access_key_id]
    secrets += [value for key, value in extra_env.items() if "SECRET" in key]
    logged = result.stderr + ("" if name in PRINTS_CREDENTIALS else result.stdout)
    if log_format == "json":
        decoded = [json.loads(line) for line in result.stderr.splitlines()]
        logged += "\n".join(str(value) for record in decoded for value in record.values())
    for secret in secrets:
        assert secret not in logged, f"{name}: a secret leaked"
        assert secret[4:-4] not in logged, f"{name}: part of a secret leaked"
    assert "Traceback" not in result.stderr
