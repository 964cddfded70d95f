"""make publish REGISTRY=…, judged by a real registry and real engines: Debian's docker-registry
(the distribution registry) on loopback in the topology's EC2-host namespace, where the suite's
dockerd runs, and podman joining that namespace.

One publish pushes one image index naming linux/amd64 and linux/arm64; a second publish of the
same bundles gives the same digest. Docker and podman pull it by digest, and a user's
``FROM scratch`` + ``COPY --from=REGISTRY/NAME:TAG`` recipe builds for each architecture and runs
``--version`` (arm64 under qemu-user). The index half of make publish (PYPI_URL) needs no root:
tests/test_publish_index.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import build_image_tag, build_version, missing
from roots import elf_machine

from .conftest import ROOT, Roots
from .engines import Docker, Engine, Podman
from .netns import Topology, record
from .test_container import _why_no_engine, exported_files, why_no_arm64

REGISTRY_ADDRESS = "127.0.0.1:5000"  # loopback of the EC2-host namespace, which the suite made
NAME = "imds-shim"
ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64"}


class Published(NamedTuple):
    reference: str  # REGISTRY/NAME:TAG
    digest: str  # sha256:… of the index
    second_digest: str  # the same bundles published again
    served: dict[str, object]  # the index as the registry serves it
    topology: Topology


def in_host_namespace(topology: Topology) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{topology.host}"]


@pytest.fixture(scope="module")
def registry(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """docker-registry serving REGISTRY_ADDRESS on plain HTTP, stopped by PID afterwards."""
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        missing("docker-registry or skopeo not installed (Debian packages docker-registry, skopeo)")
    work = tmp_path_factory.mktemp("registry")
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'storage'}\n"
        f"http:\n  addr: {REGISTRY_ADDRESS}\n"
    )
    log = (work / "registry.log").open("w")
    server = subprocess.Popen(
        [*in_host_namespace(topology), "docker-registry", "serve", str(config)], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while _status(topology, f"http://{REGISTRY_ADDRESS}/v2/") != "200":
            assert server.poll() is None, (work / "registry.log").read_text()
            assert time.monotonic() < deadline, "docker-registry did not answer within 30 s"
            time.sleep(0.1)
        yield REGISTRY_ADDRESS
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _status(topology: Topology, url: str) -> str:
    completed = subprocess.run(
        [*in_host_namespace(topology), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return completed.stdout


def publish(topology: Topology, registry: str) -> subprocess.CompletedProcess[str]:
    """make publish REGISTRY=… as a maintainer types it, from the EC2-host namespace."""
    return subprocess.run(
        [
            *in_host_namespace(topology),
            *("make", "-s", "-C", str(ROOT), "publish", f"REGISTRY={registry}/{NAME}"),
            "REGISTRY_TLS_VERIFY=false",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="module")
def published(topology: Topology, roots: Roots, registry: str) -> Published:
    """Published twice: the bundles are this machine's (the roots fixture made it) and the arm64
    one from make release."""
    reason = why_no_arm64()
    if reason:
        missing(reason)
    started = time.monotonic()
    first = publish(topology, registry)
    assert first.returncode == 0, first.stderr[-3000:]
    record(f"make publish: one index, two architectures: {first.stdout.strip()}", time.monotonic() - started)
    started = time.monotonic()
    second = publish(topology, registry)
    assert second.returncode == 0, second.stderr[-3000:]
    record(f"make publish again: {second.stdout.strip()}", time.monotonic() - started)
    reference, _, digest = first.stdout.strip().partition("@")
    inspected = subprocess.run(
        [
            *in_host_namespace(topology),
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{reference}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return Published(
        reference, digest, second.stdout.strip().partition("@")[2], json.loads(inspected.stdout), topology
    )


def test_publish_prints_the_reference_and_its_digest(published: Published) -> None:
    """Its one line: REGISTRY/NAME:TAG@sha256:…, the tag being the build's version."""
    assert published.reference == f"{REGISTRY_ADDRESS}/{NAME}:{build_image_tag()}"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", published.digest)


def test_the_same_bundles_publish_the_same_digest(published: Published) -> None:
    assert published.second_digest == published.digest


def test_one_index_names_both_architectures(published: Published) -> None:
    index = published.served
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    manifests = index["manifests"]
    assert isinstance(manifests, list)
    platforms = sorted((entry["platform"]["os"], entry["platform"]["architecture"]) for entry in manifests)
    assert platforms == [("linux", "amd64"), ("linux", "arm64")]
    annotations = index["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["org.opencontainers.image.version"] == build_version()


class Puller(NamedTuple):
    engine: Engine
    insecure: list[str]  # the flags that let it pull over plain HTTP


@pytest.fixture(scope="module", params=["docker", "podman"])
def puller(request: pytest.FixtureRequest, published: Published) -> Iterator[Puller]:
    """Each engine, able to reach the registry: Docker's daemon runs in the EC2-host namespace;
    podman joins it. Each pulls the index by digest first."""
    reason = _why_no_engine(request.param)
    if reason:
        missing(reason)
    topology = published.topology
    engine: Engine
    if request.param == "docker":
        engine = Docker(topology)
        insecure: list[str] = []  # Docker takes a registry on 127.0.0.0/8 as plain HTTP by itself
    else:
        # A short path: podman refuses a runroot of more than 50 characters.
        work = Path(tempfile.mkdtemp(prefix="imsh-pp-", dir="/tmp"))
        engine = Podman(work, topology)
        engine.command = [*in_host_namespace(topology), *engine.command]
        insecure = ["--tls-verify=false"]
    try:
        repository = published.reference.rsplit(":", 1)[0]
        engine("pull", *insecure, f"{repository}@{published.digest}", timeout=300)
        yield Puller(engine, insecure)
    finally:
        engine.stop()
        if request.param == "podman":
            shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_copy_from_the_published_image_runs_on_each_architecture(
    puller: Puller, published: Published, arch: str, tmp_path: Path
) -> None:
    """A user's recipe, FROM scratch + COPY --from=REGISTRY/NAME:TAG, built for the architecture:
    the launcher is that architecture's, and --version runs (arm64 under qemu-user)."""
    context = tmp_path / "app"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM scratch\n"
        f"COPY --from={published.reference} /opt/imds-shim /opt/imds-shim\n"
        'ENTRYPOINT ["/opt/imds-shim/imds-shim"]\n'
    )
    image = f"localhost/imds-shim-published-{arch}:e2e"
    engine = puller.engine
    started = time.monotonic()
    engine(
        "build",
        "--pull",
        *puller.insecure,
        "--platform",
        f"linux/{arch}",
        "-t",
        image,
        str(context),
        timeout=900,
    )
    record(f"{engine.name}: COPY --from the published index, {arch}", time.monotonic() - started)
    files = exported_files(engine, image, "opt/imds-shim/imds-shim")
    assert elf_machine(files["opt/imds-shim/imds-shim"]) == ARCHITECTURES[arch]
    completed = engine("run", "--rm", "--network", "none", image, "--version", timeout=120)
    assert completed.stdout.startswith(f"imds-shim {build_version()} (CPython 3.")
