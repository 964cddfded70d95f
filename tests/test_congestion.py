"""Evidence before verdicts: "not on EC2" from the machine's facts and what the network did, and
the hop limit only when every token answer is lost while IMDS answers everything else (issue 41).

The machine's DMI facts come from a folder of the test's own (``IMDS_SHIM_DMI_DIR``); the storm
itself, through a real packet allowance, is tests/e2e/test_storm.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from helpers import (
    HOP_LIMIT_SECONDS,
    OFF_EC2_SECONDS,
    budget,
    clean_env,
    closed_port,
    probe_command,
    run_shim,
)

from shim.imds.machine import ANOTHER, EC2, UNKNOWN, Machine
from shim.imds.protocol import ROLE_PATH, TOKEN_HEADER, TOKEN_PATH
from shim.simulator.server import Simulator

pytestmark = pytest.mark.behaviour

StartSimulator = Callable[..., Simulator]
NOT_EC2 = "does not look like an EC2 instance"


def facts(folder: Path, **files: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name, value in files.items():
        (folder / name).write_text(value + "\n")
    return folder


MACHINES = {
    "nitro": ({"sys_vendor": "Amazon EC2", "bios_version": "1.0"}, EC2),
    "xen": ({"sys_vendor": "Xen", "bios_version": "4.11.amazon"}, EC2),
    "xen, uuid only": ({"sys_vendor": "Xen", "product_uuid": "EC2E1916-9099-7CAF-FD21-012345678901"}, EC2),
    "qemu": ({"sys_vendor": "QEMU", "bios_version": "1.16.2-debian"}, ANOTHER),
    "plain xen": ({"sys_vendor": "Xen", "bios_version": "4.2"}, ANOTHER),
    "no dmi": ({}, UNKNOWN),
}


@pytest.mark.parametrize("name", MACHINES)
def test_the_machine_says_what_it_is(tmp_path: Path, name: str) -> None:
    """As cloud-init's ds-identify reads DMI: Amazon EC2 (Nitro), amazon in the Xen BIOS, an ec2 UUID."""
    files, says = MACHINES[name]
    assert Machine(str(facts(tmp_path / "dmi", **files))).says == says


def env_on(machine: Path, endpoint: str) -> dict[str, str]:
    return clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=endpoint, IMDS_SHIM_DMI_DIR=str(machine))


@pytest.mark.timed  # a verdict budget: measured apart from the parallel suites
@pytest.mark.parametrize("name", ["qemu", "no dmi"])
def test_off_ec2_the_verdict_stays_fast(tmp_path: Path, unanswered_endpoint: str, name: str) -> None:
    """Another vendor's DMI, or none, and no TCP answer: the one-line verdict (125) in <= 1.5 s."""
    machine = facts(tmp_path / "dmi", **MACHINES[name][0])
    result = run_shim(["--", "true"], env=env_on(machine, unanswered_endpoint))
    assert result.returncode == 125
    assert result.seconds <= budget(OFF_EC2_SECONDS)
    assert NOT_EC2 in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.timed  # the deadline is the promise here
def test_on_ec2_a_silent_imds_is_congestion_tried_until_the_deadline(
    tmp_path: Path, unanswered_endpoint: str
) -> None:
    """DMI says EC2, SYNs go unanswered: not "not EC2" but congestion, tried until --deadline."""
    machine = facts(tmp_path / "dmi", sys_vendor="Amazon EC2")
    result = run_shim(["--deadline", "3", "--", "true"], env=env_on(machine, unanswered_endpoint))
    assert result.returncode == 125
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "IMDS did not answer" in line
    assert "throttled or overloaded?" in line
    assert "this machine says it is an EC2 instance" in line
    assert NOT_EC2 not in line
    assert "hop limit" not in line
    tries = int(line.split("IMDS did not answer: ")[1].split()[0])
    # Off EC2 the verdict takes two tries of 0.5 s; here the tries go on, each waiting longer once
    # congestion is seen (the kernel sends the SYN again within a try), until the deadline.
    assert tries >= 2
    assert 2.0 <= result.seconds <= budget(3.5)  # no sleep is begun that would end past it


def test_on_ec2_a_refused_connection_is_a_block_not_another_machine(tmp_path: Path) -> None:
    """DMI says EC2 and the connection is refused: something here blocks IMDS; said at once."""
    machine = facts(tmp_path / "dmi", sys_vendor="Amazon EC2")
    result = run_shim(["--", "true"], env=env_on(machine, f"http://127.0.0.1:{closed_port()}"))
    assert result.returncode == 125
    assert "something here blocks the metadata address" in result.stderr
    assert NOT_EC2 not in result.stderr


@pytest.mark.parametrize("lost", [1, 2])
@pytest.mark.parametrize("name", ["nitro", "no dmi"])
def test_a_lost_token_answer_or_two_is_asked_again_never_blamed(
    simulator: StartSimulator, tmp_path: Path, lost: int, name: str
) -> None:
    """One or two token answers lost (a storm does that): IMDSv2 all the same, nothing said of the
    hop limit, no fallback to IMDSv1."""
    sim = simulator(token_hang_first=lost)
    machine = facts(tmp_path / "dmi", **MACHINES[name][0])
    result = run_shim(["--", *probe_command()], env=env_on(machine, sim.url))
    assert result.returncode == 0, result.stderr
    assert result.probe()["env"]["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert "hop limit" not in result.stderr
    assert "IMDSv1" not in result.stderr
    asked = [(r.method, r.path) for r in sim.requests]
    assert asked.count(("PUT", TOKEN_PATH)) == lost + 1
    credentials = [r for r in sim.requests if r.path == ROLE_PATH + sim.state.settings.role_name]
    assert [TOKEN_HEADER in r.headers for r in credentials] == [True]


@pytest.mark.timed  # a verdict budget: measured apart from the parallel suites
@pytest.mark.parametrize("v1", ["allowed", "refused"])
def test_on_ec2_the_hop_limit_is_still_diagnosed_in_one_line(
    simulator: StartSimulator, tmp_path: Path, v1: str
) -> None:
    """Every token answer lost, everything else answered: the hop limit, named in <= 6 s."""
    sim = simulator(token_hang=True, imds_v2_required=v1 == "refused")
    machine = facts(tmp_path / "dmi", sys_vendor="Amazon EC2")
    result = run_shim(["--", "true"], env=env_on(machine, sim.url))
    assert result.seconds <= budget(HOP_LIMIT_SECONDS)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "hop limit is probably 1" in result.stderr
    assert result.returncode == (0 if v1 == "allowed" else 125)
