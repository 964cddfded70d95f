"""In a pod: the advice that fits a pod, the node-role warning in every verb, and the shim's own
``--serve`` endpoint told apart from EKS Pod Identity."""

from __future__ import annotations

import json
from typing import Callable

import pytest
from helpers import SHIM, clean_env, run_shim
from scripted_imds import ScriptedImds

from shim.simulator.server import Simulator

pytestmark = pytest.mark.behaviour

POD = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
# The token answer never comes: a short --timeout makes the verdict quick.
HOP_LIMIT_ARGS = ["--timeout", "0.3"]


def _hop_limit_advice(sim: Simulator, verb: list[str], extra: dict[str, str]) -> str:
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **extra)
    result = run_shim([*HOP_LIMIT_ARGS, *verb], env=env)
    assert result.returncode == 125, result.stderr
    return result.stdout + result.stderr


@pytest.mark.parametrize("verb", [["--", "true"], ["doctor"]], ids=["entrypoint", "doctor"])
def test_hop_limit_advice_in_a_pod_leads_with_a_role_of_the_pods_own(
    simulator: Callable[..., Simulator], verb: list[str]
) -> None:
    """IMDSv2 required and the hop-limit symptom in a pod: Pod Identity and IRSA first; hop limit 2
    only with its cost. Outside a pod: hop limit 2, host networking or an ECS task role."""
    sim = simulator(token_hang=True, imds_v2_required=True)
    in_pod = _hop_limit_advice(sim, verb, POD)
    fix = in_pod[in_pod.index("Fix: ") :]
    assert fix.index("EKS Pod Identity or IRSA") < fix.index("--http-put-response-hop-limit 2")
    assert "every pod on the node the node's role" in fix
    assert "host networking" not in fix
    outside = _hop_limit_advice(sim, verb, {})
    assert "--http-put-response-hop-limit 2 (or use host networking, or an ECS task role)" in outside
    assert "Pod Identity" not in outside


def test_hop_limit_warning_in_a_pod_where_imdsv1_answers(simulator: Callable[..., Simulator]) -> None:
    """The IMDSv1 fallback's warning in a pod gives the pod's advice too."""
    sim = simulator(token_hang=True)
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **POD)
    result = run_shim([*HOP_LIMIT_ARGS, "export"], env=env)
    assert result.returncode == 0, result.stderr
    assert "fell back to IMDSv1. Fix: give the pod a role of its own with EKS Pod Identity" in result.stderr


NODE_ROLE_CASES = {
    "no pod identity": ({}, True),
    "IRSA": ({"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/app"}, False),
    "Pod Identity": ({"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/var/run/token"}, False),
}


@pytest.mark.parametrize(("preset", "warns"), NODE_ROLE_CASES.values(), ids=NODE_ROLE_CASES.keys())
def test_kubernetes_without_a_pod_identity_warns_once(
    scripted_imds: Callable[..., ScriptedImds], preset: dict[str, str], warns: bool
) -> None:
    """In a pod with no IRSA or Pod Identity variable, handing out the node's role is said, once."""
    server = scripted_imds()
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=server.url, **POD, **preset)
    result = run_shim(["export"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("--expect-role") == (1 if warns else 0)
    assert ("the node's instance role" in result.stderr) is warns


@pytest.mark.parametrize(("preset", "warns"), NODE_ROLE_CASES.values(), ids=NODE_ROLE_CASES.keys())
def test_doctor_gives_the_entrypoints_node_role_warning(
    sim: Simulator, preset: dict[str, str], warns: bool
) -> None:
    """doctor in a pod warns about the node role in the very words the entrypoint uses."""
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **POD, **preset)
    entrypoint = run_shim(["export"], env=env)
    assert entrypoint.returncode == 0, entrypoint.stderr
    report = run_shim(["doctor", "--format", "json"], env=env)
    assert report.returncode == 0, report.stdout
    kubernetes = [step for step in json.loads(report.stdout)["steps"] if step["name"] == "kubernetes"]
    if not warns:
        assert kubernetes == []
        assert "node's instance role" not in entrypoint.stderr
        return
    assert [step["status"] for step in kubernetes] == ["warn"]
    assert entrypoint.stderr == f"imds-shim: warning: {kubernetes[0]['detail']}\n"


def test_doctor_under_serve_names_the_shims_own_endpoint(sim: Simulator) -> None:
    """doctor run by a command under --serve: the endpoint is the shim's, never "Pod Identity";
    an imds-shim started there steps aside saying why."""
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    inner = f"{SHIM} doctor --format json; {SHIM} -v -- true"
    result = run_shim(["--serve", "--", "sh", "-c", inner], env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["credentials"] is True
    environment = [step for step in report["steps"] if step["name"] == "environment"]
    assert [step["status"] for step in environment] == ["info"]
    assert "the endpoint of the imds-shim --serve this runs under" in environment[0]["detail"]
    assert "Pod Identity" not in result.stdout + result.stderr
    assert (
        "AWS_CONTAINER_CREDENTIALS_FULL_URI is set (the endpoint of the imds-shim --serve this runs under)"
        in result.stderr
    )


def test_an_ecs_or_pod_identity_endpoint_is_still_called_so(sim: Simulator) -> None:
    """Only the shim's own URL is recognised: another endpoint on 127.0.0.1 keeps its name."""
    env = clean_env(
        AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url,
        AWS_CONTAINER_CREDENTIALS_FULL_URI="http://127.0.0.1:8080/credentials",
    )
    result = run_shim(["doctor"], env=env)
    assert "a container credentials endpoint (EKS Pod Identity)" in result.stdout
