"""The images users build, run by real engines (podman, and Docker with its own docker0 bridge).

Two images per engine, both built from debootstrapped Debian bullseye roots with ``--network none``:

- ``example``: Dockerfile.example, imds-shim pip-installed into a venv on a base that has Python;
- ``any-image``: examples/any-image/Dockerfile, the self-contained bundle copied onto a bare
  Debian that has no Python at all.

And the bundle alone in four bases (tests/roots.py): ``scratch``, a distroless/static-like root,
a musl-only root (the Alpine stand-in) and the bare bullseye root, each built by
tests/data/Dockerfile.bundle with a command that prints what it got (tests/data/envdump.c).

Everything goes through the image's real ENTRYPOINT, in the topology of conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from roots import NOBODY, make_root, parse_envdump, why_not

from .conftest import ROOT, Roots
from .engines import DOCKER_CLIENT, OFF_EC2, Docker, Engine, Podman
from .netns import StartImds, Topology, record

BUILDER_IMAGE = "localhost/imds-shim-builder:e2e"
BARE_IMAGE = "localhost/imds-shim-bare:e2e"
IMAGES = {"example": "localhost/imds-shim-example:e2e", "any-image": "localhost/imds-shim-any-image:e2e"}
OFFLINE = "--no-index --find-links /src/wheels"
DOCKER_HOP_LIMIT_BUDGET = 2.5  # the whole `docker run`, engine overhead included
DOCKER_OFF_EC2_BUDGET = 3.0
STOP_BUDGET = 5.0  # well under the 10 s grace period after which the engine kills


def _why_no_engine(name: str) -> str | None:
    if os.geteuid() != 0:
        return f"rootful {name} needs root (CI runs as root)"
    tools = {"podman": ("podman", "runc"), "docker": ("dockerd", "containerd", "nsenter")}[name]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if name == "docker" and DOCKER_CLIENT is None:
        missing.append("docker")
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages podman, runc, docker.io)"
    return None


def _context(roots: Roots, work: Path) -> Path:
    """The repository as a build context, plus the wheels for an offline build."""
    context = work / "context"
    shutil.copytree(
        ROOT,
        context,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis"
        ),
    )
    shutil.copytree(roots.wheels, context / "wheels")
    return context


MINIMAL = ("scratch", "distroless", "musl", "bullseye")


def minimal_image(kind: str) -> str:
    return f"localhost/imds-shim-bundle-{kind}:e2e"


def _build_minimal_images(engine: Engine, roots: Roots, work: Path) -> None:
    """The bundle, as a user unpacks it, into each base; skipped kinds are left out."""
    for kind in MINIMAL:
        if kind != "bullseye" and why_not(kind):
            continue
        context = work / f"minimal-{kind}"
        context.mkdir()
        with tarfile.open(roots.tarball) as tarball:
            tarball.extractall(context)  # our own tarball
        base = {"scratch": "scratch", "bullseye": BARE_IMAGE}.get(
            kind, f"localhost/imds-shim-base-{kind}:e2e"
        )
        command = make_root("scratch" if kind == "bullseye" else kind, context / "root")
        shutil.copy(context / "root" / command.relative_to("/"), context / "envdump")
        if kind in ("distroless", "musl"):
            engine.import_root(context / "root", base)
        shutil.copy(ROOT / "tests" / "data" / "Dockerfile.bundle", context / "Dockerfile")
        engine.build(context / "Dockerfile", context, minimal_image(kind), BASE=base)


@pytest.fixture(scope="module", params=["podman", "docker"])
def engine(
    request: pytest.FixtureRequest, topology: Topology, roots: Roots, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """An engine with both images built: podman, then Docker."""
    reason = _why_no_engine(request.param)
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp(request.param)
    started = time.monotonic()
    engine: Engine = Podman(work, topology) if request.param == "podman" else Docker(topology)
    try:
        engine.import_root(roots.builder, BUILDER_IMAGE)
        engine.import_root(roots.bare, BARE_IMAGE)
        context = _context(roots, work)
        engine.build(
            context / "Dockerfile.example",
            context,
            IMAGES["example"],
            BASE=BUILDER_IMAGE,
            IMDS_SHIM=f"{OFFLINE} imds-shim",
        )
        engine.build(
            context / "examples" / "any-image" / "Dockerfile",
            context,
            IMAGES["any-image"],
            BASE=BARE_IMAGE,
            BUILDER=BUILDER_IMAGE,
            IMDS_SHIM="imds-shim",
            PIP_ARGS=OFFLINE,
        )
        record(f"{engine.name}: start, import two roots, build both images", time.monotonic() - started)
        started = time.monotonic()
        _build_minimal_images(engine, roots, work)
        record(f"{engine.name}: build the bundle into four bases", time.monotonic() - started)
        yield engine
    finally:
        engine.stop()


@pytest.fixture(params=list(IMAGES))
def image(request: pytest.FixtureRequest, engine: Engine) -> str:
    """Each image in turn: the pip-installed example, then the bundle on a base without Python."""
    return IMAGES[str(request.param)]


def label(engine: Engine, image: str) -> str:
    return f"{engine.name}, {image.split('-', 2)[-1].split(':')[0]}"


def environment(output: str) -> dict[str, str]:
    """`env` output as a dict (both images have coreutils' env)."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def test_any_image_has_no_python(engine: Engine) -> None:
    """The bundle's image really has no Python: the shim carries its own runtime."""
    completed = engine(
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        IMAGES["any-image"],
        "-c",
        "command -v python3 python || ls /usr/bin/python* /usr/lib/python3* 2>/dev/null || echo none",
    )
    assert completed.stdout.strip() == "none"


def test_credentials_through_the_entrypoint(engine: Engine, image: str, imds: StartImds) -> None:
    """Hop limit 2, IMDSv2 required: credentials through the router hop, the command exec'd."""
    imds("--hop-limit", "2", "--imds-v2-required")
    seconds, completed = engine.run(image, "env")
    record(f"{label(engine, image)}: hop limit 2, IMDSv2 required, credentials", seconds)
    assert completed.returncode == 0, completed.stderr
    env = environment(completed.stdout)
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    assert env["AWS_SECURITY_TOKEN"] == env["AWS_SESSION_TOKEN"]
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert not [name for name in env if name.startswith(("_PYI", "LD_LIBRARY_PATH"))]
    # No process of the shim's is left between the init (or the engine) and the command.
    _, ids = engine.run(image, "sh", "-c", "echo $$ $PPID")
    pid, parent = ids.stdout.split()
    assert (parent if engine.init else pid) == "1"
    _, default_command = engine.run(image)
    assert default_command.returncode == 0, default_command.stderr
    assert "ASIA…" in default_command.stdout or "with a session token" in default_command.stdout


def test_hop_limit_1_imdsv2_required_is_diagnosed(engine: Engine, image: str, imds: StartImds) -> None:
    """Hop limit 1, IMDSv2 required: exit 125 with the diagnosis and the fix, quickly."""
    imds("--hop-limit", "1", "--imds-v2-required")
    seconds, completed = engine.run(image, "true")
    record(f"{label(engine, image)}: hop limit 1, IMDSv2 required, diagnosis (whole run)", seconds)
    assert completed.returncode == 125
    assert "hop limit is probably 1" in completed.stderr
    assert "--http-put-response-hop-limit 2" in completed.stderr
    if engine.name == "docker":
        assert seconds < DOCKER_HOP_LIMIT_BUDGET


def test_hop_limit_1_imdsv1_allowed_works_and_warns(engine: Engine, image: str, imds: StartImds) -> None:
    """Hop limit 1, IMDSv1 allowed: credentials by IMDSv1, and one warning naming the hop limit."""
    imds("--hop-limit", "1")
    seconds, completed = engine.run(image, "env")
    record(f"{label(engine, image)}: hop limit 1, IMDSv1 fallback", seconds)
    assert completed.returncode == 0, completed.stderr
    assert environment(completed.stdout)["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    assert "hop limit" in completed.stderr


@pytest.mark.parametrize("optional", [False, True], ids=["fails", "optional"])
def test_off_ec2(engine: Engine, image: str, optional: bool) -> None:
    """No IMDS at all: 125 "unreachable" quickly, or with IMDS_SHIM_OPTIONAL=1 the command runs."""
    env = {"IMDS_SHIM_OPTIONAL": "1"} if optional else {}
    seconds, completed = engine.run(image, "env", where=OFF_EC2, env=env)
    record(f"{label(engine, image)}: off EC2{', optional' if optional else ''} (whole run)", seconds)
    assert "unreachable" in completed.stderr
    if optional:
        assert completed.returncode == 0, completed.stderr
        assert "AWS_ACCESS_KEY_ID" not in environment(completed.stdout)
    else:
        assert completed.returncode == 125
    if engine.name == "docker":
        assert seconds < DOCKER_OFF_EC2_BUDGET


def _stop(engine: Engine, name: str) -> tuple[float, str]:
    started = time.monotonic()
    engine("stop", "--time", "10", name)
    stopped = time.monotonic() - started
    return stopped, engine("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()


def test_stop_while_imds_hangs_ends_promptly(engine: Engine, image: str, imds: StartImds) -> None:
    """A stop while the shim still waits on IMDS: exit 143 at once, not after the grace period."""
    server = imds("--latency", "60")
    name = f"imds-shim-hang-{os.getpid()}"
    engine.start_detached(name, image, "true")
    try:
        server.wait_for_request()
        stopped, status = _stop(engine, name)
        record(f"{label(engine, image)}: stop while IMDS hangs", stopped)
        assert status == "143"
        assert stopped < STOP_BUDGET
    finally:
        engine("rm", "--force", name, check=False)


def test_stop_reaches_the_command(engine: Engine, image: str, imds: StartImds) -> None:
    """A stop once the command runs: SIGTERM reaches the command itself, which exits by it."""
    imds("--hop-limit", "2")
    name = f"imds-shim-stop-{os.getpid()}"
    engine.start_detached(
        name, image, "sh", "-c", 'trap "echo got-TERM; exit 42" TERM; echo ready; while :; do sleep 0.1; done'
    )
    try:
        deadline = time.monotonic() + 30
        while "ready" not in engine("logs", name).stdout:
            assert time.monotonic() < deadline, engine("logs", name).stderr
            time.sleep(0.05)
        stopped, status = _stop(engine, name)
        record(f"{label(engine, image)}: stop -> SIGTERM handled by the command", stopped)
        assert "got-TERM" in engine("logs", name).stdout
        assert status == "42"
        assert stopped < STOP_BUDGET
    finally:
        engine("rm", "--force", name, check=False)


def test_profile_steps_aside_without_a_request(engine: Engine, image: str, imds: StartImds) -> None:
    """-e AWS_PROFILE=...: the shim steps aside, and IMDS sees no request at all."""
    server = imds("--hop-limit", "2")
    _, completed = engine.run(image, "env", env={"AWS_PROFILE": "prod"})
    assert completed.returncode == 0, completed.stderr
    env = environment(completed.stdout)
    assert env["AWS_PROFILE"] == "prod"
    assert "AWS_ACCESS_KEY_ID" not in env
    assert server.settled_requests() == []


@pytest.mark.parametrize("status", [0, 7, 143])
def test_command_exit_status_comes_back(engine: Engine, image: str, imds: StartImds, status: int) -> None:
    """The command's own exit status is the container's."""
    imds("--hop-limit", "2")
    _, completed = engine.run(image, "sh", "-c", f"exit {status}")
    assert completed.returncode == status, completed.stderr


def test_imds_shim_doctor_as_the_command(engine: Engine, image: str, imds: StartImds) -> None:
    """`run IMAGE imds-shim doctor`: doctor does its own walk, not behind exported keys."""
    server = imds("--hop-limit", "2", "--imds-v2-required")
    _, completed = engine.run(image, "imds-shim", "doctor")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "would step aside" not in completed.stdout
    assert "ASIA…" in completed.stdout
    requests = server.settled_requests()
    assert requests[0] == "PUT /latest/api/token"
    credentials = [r for r in requests if r.endswith("security-credentials/imds-shim-simulated-role")]
    assert len(credentials) == 1


def test_what_the_entrypoint_adds_to_docker_run(engine: Engine, imds: StartImds) -> None:
    """Measured, not asserted: `run --rm --init IMAGE true` with and without the entrypoint."""
    if engine.name != "docker":
        pytest.skip("the figure is for docker run")
    imds("--hop-limit", "2", "--imds-v2-required")
    for name, image in IMAGES.items():
        times: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(8):  # interleaved, so that drift hits both alike
            for kind, flags in (("with", ()), ("without", ("--entrypoint", "true"))):
                seconds, completed = engine.run(image, *(() if flags else ("true",)), flags=flags)
                assert completed.returncode == 0, completed.stderr
                times[kind].append(seconds)
        with_shim, without = statistics.median(times["with"]), statistics.median(times["without"])
        record(f"docker, {name}: docker run --rm --init IMAGE true, median of 8", with_shim)
        record(f"docker, {name}: same with --entrypoint true (no shim), median of 8", without)
        record(f"docker, {name}: what the shim adds", with_shim - without)


@pytest.fixture(params=MINIMAL)
def minimal(request: pytest.FixtureRequest, engine: Engine) -> str:
    """Each base the bundle goes into: scratch, distroless/static-like, musl-only, bullseye."""
    kind = str(request.param)
    reason = None if kind == "bullseye" else why_not(kind)
    if reason:
        pytest.skip(reason)
    return kind


def test_bundle_alone_gets_credentials(engine: Engine, minimal: str, imds: StartImds) -> None:
    """Hop limit 2: credentials through the real ENTRYPOINT, with the image's own C library (or
    none), no loader or bundle variable, and the command in the shim's place."""
    imds("--hop-limit", "2", "--imds-v2-required")
    seconds, completed = engine.run(minimal_image(minimal))
    record(f"{engine.name}, bundle in {minimal}: hop limit 2, credentials", seconds)
    assert completed.returncode == 0, completed.stderr
    pid, parent, env = parse_envdump(completed.stdout)
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    assert env["AWS_SECURITY_TOKEN"] == env["AWS_SESSION_TOKEN"]
    assert not [name for name in env if name.startswith(("_PYI", "LD_"))]
    assert (parent if engine.init else pid) == 1


def test_bundle_alone_off_ec2(engine: Engine, minimal: str) -> None:
    """No IMDS: 125 "unreachable" within 3 s, in every base."""
    seconds, completed = engine.run(minimal_image(minimal), where=OFF_EC2)
    record(f"{engine.name}, bundle in {minimal}: off EC2 (whole run)", seconds)
    assert completed.returncode == 125
    assert "unreachable" in completed.stderr
    assert seconds < DOCKER_OFF_EC2_BUDGET


def test_bundle_alone_export_json(engine: Engine, minimal: str, imds: StartImds) -> None:
    """`imds-shim export --format json` as the command: the bundle's own path, no PATH needed."""
    imds("--hop-limit", "2")
    _, completed = engine.run(
        minimal_image(minimal), "/opt/imds-shim/imds-shim", "export", "--format", "json"
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")


def test_bundle_alone_non_root_read_only(engine: Engine, minimal: str, imds: StartImds) -> None:
    """As nobody, with a read-only root file system and no capabilities: credentials all the same."""
    imds("--hop-limit", "2")
    flags = ("--user", f"{NOBODY}:{NOBODY}", "--read-only", "--cap-drop", "ALL")
    _, completed = engine.run(minimal_image(minimal), flags=flags)
    assert completed.returncode == 0, completed.stderr
    assert parse_envdump(completed.stdout)[2]["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
