"""Against implementations nobody on this team wrote: moto's IMDS, and botocore as the consumer."""

from __future__ import annotations

import json
import sys
from typing import Callable

import pytest
from helpers import clean_env, probe_command, run_shim

from shim.simulator.server import Simulator

# Run again against the self-contained bundle (make test-bundle): it behaves like the pip-installed shim.
pytestmark = pytest.mark.behaviour

BOTOCORE_REPORT = (
    "import json, botocore.session\n"
    "session = botocore.session.get_session()\n"
    "first = session.get_credentials()\n"
    "frozen = first.get_frozen_credentials()\n"
    "again = first.get_frozen_credentials()\n"
    "print(json.dumps({'method': first.method, 'key': frozen.access_key,\n"
    "                  'key_after_refresh': again.access_key,\n"
    "                  'region': session.get_config_variable('region')}))\n"
)


def moto_serves_region() -> bool:
    """moto answers placement/region from 5.2 on."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("moto").split(".")[:2])
    return (major, minor) >= (5, 2)


def test_works_against_moto_unchanged(moto_endpoint: str) -> None:
    """moto (no Code field, no identity document): credentials exported, region from placement."""
    result = run_shim(["-v", "--", *probe_command()], endpoint=moto_endpoint)
    assert result.returncode == 0, result.stderr
    child = result.probe()["env"]
    assert child["AWS_ACCESS_KEY_ID"] == "test-key"
    assert child["AWS_SECRET_ACCESS_KEY"] == "test-secret-key"
    assert child["AWS_SESSION_TOKEN"] == child["AWS_SECURITY_TOKEN"] == "test-session-token"
    if moto_serves_region():
        assert child["AWS_REGION"] == child["AWS_DEFAULT_REGION"] == "us-east-1"
    else:  # moto 5.1 (the last for Python 3.9) has no placement/region: no region, no failure
        assert "AWS_REGION" not in child
    assert "AWS_ACCOUNT_ID" not in child
    assert "test-secret-key" not in result.stderr


def test_botocore_in_the_command_uses_the_exported_credentials(sim: Simulator) -> None:
    """A botocore child resolves credentials by method env, with the region from IMDS."""
    pytest.importorskip("botocore")
    result = run_shim(["--", sys.executable, "-c", BOTOCORE_REPORT], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["method"] == "env"
    assert report["key"].startswith("ASIASIMULATED")
    assert report["region"] == "eu-west-1"


def test_botocore_refreshes_through_refresh_mode(simulator: Callable[..., Simulator]) -> None:
    """--refresh: botocore's method is custom-process and a refresh brings new keys."""
    pytest.importorskip("botocore")
    # Ten minutes left is inside botocore's refresh window: every access refreshes.
    sim = simulator(expires_in=600, rotate_every=0)
    result = run_shim(
        ["--refresh", "--", sys.executable, "-c", BOTOCORE_REPORT],
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["method"] == "custom-process"
    assert report["key"] != report["key_after_refresh"]
    assert report["region"] == "eu-west-1"
