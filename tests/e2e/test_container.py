"""The images users build, run by real engines (podman, and Docker with its own docker0 bridge).

Every recipe is built as a user builds it: from a folder of the user's own, never from this
repository. Per engine, after ``make image`` has made ``imds-shim:VERSION``:

- ``example``: Dockerfile.example built from a tiny Python app's folder (which has a pyproject.toml
  of its own, that must not be installed), with a wheelhouse that ``make wheelhouse`` put in it,
  as the README prints both commands; and once more from an index on loopback, the folder holding
  only the wheelhouse's requirements.txt;
- ``any-image``: examples/any-image (the ``COPY --from=imds-shim:VERSION`` recipe and its app) on
  a bare Debian bullseye that has no Python at all.

And the same recipe into three more bases (tests/roots.py): ``scratch``, a distroless/static-like
root and a musl-only root (the Alpine stand-in), with a command that prints what it got
(tests/data/envdump.c) in the app's folder. With an arm64 bundle in dist/, ``--platform
linux/arm64`` builds of the recipe run under qemu-user too.

Everything goes through the image's real ENTRYPOINT, in the topology of conftest.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import BOTOCORE_LOOP, build_image_tag, build_version, doc_block, missing
from roots import NATIVE, NOBODY, elf_machine, make_root, parse_envdump, why_not

from shim.imds.protocol import ROLE_PATH, TOKEN_PATH

from .conftest import ROOT, Roots
from .engines import DOCKER_CLIENT, OFF_EC2, ON_EC2, Docker, Engine, Podman
from .netns import StartImds, Topology, record

BUILDER_IMAGE = "localhost/imds-shim-builder:e2e"
BARE_IMAGE = "localhost/imds-shim-bare:e2e"
EXAMPLE_INDEX_IMAGE = "localhost/imds-shim-example-index:e2e"
WHEELHOUSE = "imds-shim-wheelhouse"
IMAGES = {"example": "localhost/imds-shim-example:e2e", "any-image": "localhost/imds-shim-any-image:e2e"}
ANY_IMAGE = ROOT / "examples" / "any-image"
ARM64_TARBALL = ROOT / "dist" / f"imds-shim-{build_version()}-linux-aarch64.tar.gz"
# What examples/any-image copies from: the published image, which the tests replace with the one
# make image made from this checkout (imds-shim:TAG).
PUBLISHED_IMAGE = re.compile(r"COPY --from=ghcr\.io/imds-shim/imds-shim:\d+\.\d+\.\d+ ")
DOCKER_HOP_LIMIT_BUDGET = 7.0  # the whole `docker run`: the 6 s promise, engine overhead included
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


@contextmanager
def wheel_index(topology: Topology, wheels: Path) -> Iterator[str]:
    """The wheels, served over HTTP on loopback in the EC2-host namespace: a find-links URL."""
    server = subprocess.Popen(
        [
            *("ip", "netns", "exec", topology.host, sys.executable, "-u", "-m", "http.server"),
            *("--bind", "127.0.0.1", "--directory", str(wheels), "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = re.search(r" port (\d+) ", server.stdout.readline())
        assert port, "http.server did not say its port"
        yield f"http://127.0.0.1:{port.group(1)}/"
    finally:
        server.terminate()
        server.wait(timeout=10)


def python_app(work: Path, name: str = "python-app") -> Path:
    """A Python application's folder, as a user would have it. Its own pyproject.toml is a trap:
    a recipe that pip-installs the build context installs my-app."""
    context = work / name
    context.mkdir()
    (context / "app.py").write_text("print('my app')\n")
    (context / "pyproject.toml").write_text('[project]\nname = "my-app"\nversion = "9.9.9"\n')
    return context


def make_wheelhouse(folder: Path) -> None:
    """The README's first command: make wheelhouse for the image's Python, into the app's folder."""
    subprocess.run(
        [
            *("make", "-s", "-C", str(ROOT), "wheelhouse", f"WHEELHOUSE={folder}"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )


def simple_index(wheelhouse: Path, index: Path) -> None:
    """The wheelhouse's wheels as a PEP 503 index: a folder a project (http.server lists them)."""
    for wheel in wheelhouse.glob("*.whl"):
        project = index / wheel.name.split("-")[0].replace("_", "-").lower()
        project.mkdir(parents=True, exist_ok=True)
        shutil.copy(wheel, project)


def _build_example(engine: Engine, topology: Topology, work: Path) -> None:
    """Dockerfile.example from a Python app's folder with a wheelhouse in it, as the README says;
    then with IMDS_SHIM_INDEX naming an index on loopback, from a folder with only the
    wheelhouse's requirements.txt (EXAMPLE_INDEX_IMAGE)."""
    context = python_app(work)
    make_wheelhouse(context / WHEELHOUSE)
    engine.build(
        ROOT / "Dockerfile.example",
        context,
        IMAGES["example"],
        BASE=BUILDER_IMAGE,
        IMDS_SHIM_WHEELHOUSE=WHEELHOUSE,
    )
    index = work / "index"
    simple_index(context / WHEELHOUSE, index)
    from_index = python_app(work, "python-app-index")
    (from_index / WHEELHOUSE).mkdir()
    shutil.copy(context / WHEELHOUSE / "requirements.txt", from_index / WHEELHOUSE)
    with wheel_index(topology, index) as url:
        engine.build(
            ROOT / "Dockerfile.example",
            from_index,
            EXAMPLE_INDEX_IMAGE,
            network=engine.build_network,
            BASE=BUILDER_IMAGE,
            IMDS_SHIM_WHEELHOUSE=WHEELHOUSE,
            IMDS_SHIM_INDEX=url,
        )


def any_image_app(work: Path, name: str, kind: str, machine: str = NATIVE) -> tuple[Path, Path]:
    """examples/any-image copied out of the repository to ``name``, with envdump for a ``kind``
    root of ``machine`` in its app/: (context, the root without the command, to import as a base)."""
    context = work / name
    shutil.copytree(ANY_IMAGE, context)
    dockerfile = context / "Dockerfile"
    recipe, count = PUBLISHED_IMAGE.subn(
        f"COPY --from=imds-shim:{build_image_tag()} ", dockerfile.read_text()
    )
    assert count == 1, "examples/any-image/Dockerfile copies from ghcr.io/imds-shim/imds-shim:X.Y.Z"
    dockerfile.write_text(recipe)
    root = work / f"{name}-root"
    command = root / make_root(kind, root, machine=machine).relative_to("/")
    shutil.move(command, context / "app" / "envdump")
    return context, root


MINIMAL = ("scratch", "distroless", "musl", "bullseye")
ENVDUMP = "/app/envdump"


def minimal_image(kind: str) -> str:
    return IMAGES["any-image"] if kind == "bullseye" else f"localhost/imds-shim-any-image-{kind}:e2e"


def _build_any_image(engine: Engine, work: Path) -> None:
    """The COPY --from recipe into each base: bare bullseye, scratch, distroless-like, musl-only."""
    for kind in MINIMAL:
        if kind != "bullseye" and why_not(kind):
            continue
        context, root = any_image_app(work, f"any-image-{kind}", "scratch" if kind == "bullseye" else kind)
        base = {"scratch": "scratch", "bullseye": BARE_IMAGE}.get(
            kind, f"localhost/imds-shim-base-{kind}:e2e"
        )
        if kind in ("distroless", "musl"):
            engine.import_root(root, base)
        engine.build(context / "Dockerfile", context, minimal_image(kind), BASE=base)


ARM64_IMAGE = "localhost/imds-shim-any-image-arm64:e2e"


def why_no_arm64() -> str | None:
    """Why no arm64 image can be built and run here, or None."""
    if not ARM64_TARBALL.exists():
        return f"no {ARM64_TARBALL.name}: make bundle ARCH=arm64 first (CI does)"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "qemu-user cannot run arm64 programs here (qemu-user-static, binfmt-support)"
    return why_not("scratch", "aarch64")


def _build_arm64(engine: Engine, work: Path) -> None:
    """The recipe into scratch with --platform linux/arm64. podman takes the arm64 image from the
    imds-shim:VERSION manifest list; Docker keeps no list locally, so there the recipe names the
    architecture's own tag, as the README says."""
    context, _ = any_image_app(work, "any-image-arm64", "scratch", "aarch64")
    if engine.name == "docker":
        dockerfile = context / "Dockerfile"
        recipe = dockerfile.read_text()
        tag = build_image_tag()
        dockerfile.write_text(recipe.replace(f"imds-shim:{tag} ", f"imds-shim:{tag}-arm64 "))
    engine.build(context / "Dockerfile", context, ARM64_IMAGE, platform="linux/arm64", BASE="scratch")


@pytest.fixture(scope="module", params=["podman", "docker"])
def engine(
    request: pytest.FixtureRequest, topology: Topology, roots: Roots, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """An engine with imds-shim:VERSION made by make image, and every recipe built from a folder
    that is not this repository: podman, then Docker."""
    reason = _why_no_engine(request.param)
    if reason:
        missing(reason)
    work = tmp_path_factory.mktemp(request.param)
    started = time.monotonic()
    engine: Engine = Podman(work, topology) if request.param == "podman" else Docker(topology)
    try:
        engine.import_root(roots.builder, BUILDER_IMAGE)
        engine.import_root(roots.bare, BARE_IMAGE)
        engine.tags = engine.make_image()
        record(f"{engine.name}: start, import two roots, make image", time.monotonic() - started)
        started = time.monotonic()
        _build_example(engine, topology, work)
        record(
            f"{engine.name}: make wheelhouse, build Dockerfile.example from an app folder, twice",
            time.monotonic() - started,
        )
        started = time.monotonic()
        _build_any_image(engine, work)
        record(f"{engine.name}: build the COPY --from recipe into four bases", time.monotonic() - started)
        if why_no_arm64() is None:
            started = time.monotonic()
            _build_arm64(engine, work)
            record(f"{engine.name}: build the recipe for arm64 (qemu-user)", time.monotonic() - started)
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


@pytest.mark.parametrize("example", [IMAGES["example"], EXAMPLE_INDEX_IMAGE], ids=["wheelhouse", "index"])
def test_example_installs_the_wheelhouse_not_the_build_context(engine: Engine, example: str) -> None:
    """Dockerfile.example installs the wheelhouse's imds-shim==VERSION and exactly the versions its
    requirements.txt pins, never the app: from the folder, and from an index."""
    completed = engine(
        "run", "--rm", "--entrypoint", "/opt/imds-shim/bin/pip", example, "list", "--format", "json"
    )
    installed = {package["name"].lower(): package["version"] for package in json.loads(completed.stdout)}
    assert installed["imds-shim"] == build_version()
    assert "my-app" not in installed
    assert {"requests", "tenacity"} <= set(installed)


def test_example_without_a_wheelhouse_stops_with_one_line(engine: Engine, tmp_path: Path) -> None:
    """With no IMDS_SHIM_WHEELHOUSE the build stops before installing anything, and says in one
    line what to pass: it never falls back to a public index."""
    context = python_app(tmp_path)
    completed = engine(
        *("build", "--network", "none", "-f", str(ROOT / "Dockerfile.example")),
        *("--build-arg", f"BASE={BUILDER_IMAGE}", "-t", "localhost/imds-shim-example-none:e2e", str(context)),
        timeout=300,
        check=False,
    )
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    # The engine prints the RUN line, with the echo in it, before the line the build said.
    said = [line for line in output.splitlines() if "Dockerfile.example: pass" in line and "echo" not in line]
    assert len(said) == 1, output
    assert said[0].endswith(
        "Dockerfile.example: pass --build-arg IMDS_SHIM_WHEELHOUSE=DIR, a folder of the build "
        "context made by make wheelhouse (see its first lines)"
    )


def exported_files(engine: Engine, image: str, *paths: str) -> dict[str, bytes]:
    """The file system of a container of ``image``, as `export` gives it: {path: content}."""
    name = f"imds-shim-export-{os.getpid()}"
    engine("create", "--name", name, image)
    try:
        tar = subprocess.run(
            [*engine.command, "export", name], env=engine.env, capture_output=True, check=True
        )
    finally:
        engine("rm", "--force", name, check=False)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        members = [member for member in archive.getmembers() if member.isfile()]
        return {
            member.name: (archive.extractfile(member).read() if member.name in paths else b"")  # type: ignore[union-attr]
            for member in members
        }


def test_make_image_holds_the_bundle_and_nothing_else(engine: Engine) -> None:
    """make image: imds-shim:VERSION and one image per architecture, FROM scratch with only
    /opt/imds-shim, whose launcher is that architecture's; --version runs in it as it is."""
    assert engine.tags[0] == f"imds-shim:{build_image_tag()}"
    machines = {"amd64": "x86_64", "arm64": "aarch64"}
    for tag in engine.tags[1:]:
        arch = tag.rsplit("-", 1)[1]
        assert engine("image", "inspect", "--format", "{{.Architecture}}", tag).stdout.strip() == arch
        files = exported_files(engine, tag, "opt/imds-shim/imds-shim")
        engine_made = {".dockerenv", "dev/console", "etc/hostname", "etc/hosts", "etc/resolv.conf"}
        assert {path for path in files if not path.startswith("opt/imds-shim/")} <= engine_made
        assert elf_machine(files["opt/imds-shim/imds-shim"]) == machines[arch]
        if arch == "arm64" and why_no_arm64():
            continue
        completed = engine("run", "--rm", "--network", "none", tag, "--version")
        assert completed.stdout.startswith(f"imds-shim {build_version()} (CPython 3.")


def test_make_image_labels_version_revision_and_source(engine: Engine) -> None:
    """Each image made by make image carries the OCI labels version, revision (this commit) and
    source, and names the release's signature file."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True)
    revision = head.stdout.strip()
    for tag in engine.tags[1:]:
        labels = json.loads(engine("image", "inspect", "--format", "{{json .Config.Labels}}", tag).stdout)
        assert labels["org.opencontainers.image.version"] == build_version()
        assert labels["org.opencontainers.image.revision"].startswith(revision)
        assert labels["org.opencontainers.image.source"] not in ("", "unknown")
        assert labels["io.github.imds-shim.signature"] == "SHA256SUMS.minisig"


def test_arm64_recipe_gets_credentials_under_emulation(engine: Engine, imds: StartImds) -> None:
    """--platform linux/arm64: the recipe copies the arm64 imds-shim into scratch, and it fetches
    credentials through the real ENTRYPOINT (qemu-user runs it here; a Graviton host natively)."""
    reason = why_no_arm64()
    if reason:
        missing(reason)
    files = exported_files(engine, ARM64_IMAGE, "opt/imds-shim/imds-shim")
    assert elf_machine(files["opt/imds-shim/imds-shim"]) == "aarch64"
    imds("--hop-limit", "2", "--imds-v2-required")
    seconds, completed = engine.run(ARM64_IMAGE, ENVDUMP)
    record(f"{engine.name}, arm64 recipe in scratch (emulated): hop limit 2, credentials", seconds)
    assert completed.returncode == 0, completed.stderr
    env = parse_envdump(completed.stdout)[2]
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    assert env["AWS_SECURITY_TOKEN"] == env["AWS_SESSION_TOKEN"]


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


def _wait_for_ready(engine: Engine, name: str) -> None:
    """Until the container's command has printed "ready"."""
    deadline = time.monotonic() + 30
    while "ready" not in engine("logs", name).stdout:
        assert time.monotonic() < deadline, engine("logs", name).stderr
        time.sleep(0.05)


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
        _wait_for_ready(engine, name)
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
    assert requests[0] == f"PUT {TOKEN_PATH}"
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
        missing(reason)
    return kind


def test_bundle_alone_gets_credentials(engine: Engine, minimal: str, imds: StartImds) -> None:
    """Hop limit 2: credentials through the real ENTRYPOINT, with the image's own C library (or
    none), no loader or bundle variable, and the command in the shim's place."""
    imds("--hop-limit", "2", "--imds-v2-required")
    seconds, completed = engine.run(minimal_image(minimal), ENVDUMP)
    record(f"{engine.name}, bundle in {minimal}: hop limit 2, credentials", seconds)
    assert completed.returncode == 0, completed.stderr
    pid, parent, env = parse_envdump(completed.stdout)
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    assert env["AWS_SECURITY_TOKEN"] == env["AWS_SESSION_TOKEN"]
    assert not [name for name in env if name.startswith(("_PYI", "LD_"))]
    assert (parent if engine.init else pid) == 1


def test_bundle_alone_off_ec2(engine: Engine, minimal: str) -> None:
    """No IMDS: 125 "unreachable" within 3 s, in every base."""
    seconds, completed = engine.run(minimal_image(minimal), ENVDUMP, where=OFF_EC2)
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
    _, completed = engine.run(minimal_image(minimal), ENVDUMP, flags=flags)
    assert completed.returncode == 0, completed.stderr
    assert parse_envdump(completed.stdout)[2]["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")


SDK_IMAGE = "localhost/imds-shim-sdk:e2e"
PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:")


@pytest.fixture(scope="module")
def sdk_image(
    engine: Engine, topology: Topology, roots: Roots, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The pip-installed example with botocore beside it (the newest release for the image's
    Python 3.13, from PyPI, served to the build on loopback): a service that uses an SDK."""
    wheels = tmp_path_factory.mktemp(f"{engine.name}-sdk-wheels")
    download = subprocess.run(
        [*PIP_DOWNLOAD, "--python-version", "3.13", "-d", str(wheels), "botocore"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if download.returncode != 0:
        missing(f"cannot download botocore for the image's Python: {download.stderr[-300:]}")
    for pip_wheel in roots.wheels.glob("pip-*.whl"):  # the venv's own pip lags behind their metadata
        shutil.copy(pip_wheel, wheels)
    context = tmp_path_factory.mktemp(f"{engine.name}-sdk")
    with wheel_index(topology, wheels) as index:
        pip = f"PIP_CONFIG_FILE=/dev/null /opt/sdk/bin/pip install --quiet --no-index --find-links {index}"
        (context / "Dockerfile").write_text(
            f"FROM {IMAGES['example']}\nUSER root\n"
            f"RUN python3 -m venv /opt/sdk && {pip} --upgrade pip && {pip} botocore\nUSER app\n"
        )
        engine.build(context / "Dockerfile", context, SDK_IMAGE, network=engine.build_network)
    return SDK_IMAGE


def test_serve_keeps_a_long_running_sdk_loop_renewed(engine: Engine, sdk_image: str, imds: StartImds) -> None:
    """IMDS_SHIM_SERVE=1 through the real ENTRYPOINT: botocore in a service that outlives its
    credentials (4 s each) follows at least three renewals and never holds an expired set. A new
    set every second, so that each renewal finds one at its first try, well before the old expires."""
    server = imds("--hop-limit", "2", "--imds-v2-required", "--expires-in", "4", "--rotate-every", "1")
    seconds, completed = engine.run(
        sdk_image, "/opt/sdk/bin/python", "-c", BOTOCORE_LOOP, "10", env={"IMDS_SHIM_SERVE": "1"}
    )
    record(f"{engine.name}: --serve, a botocore loop for 10 s (whole run)", seconds)
    assert completed.returncode == 0, completed.stderr
    readings = [json.loads(line) for line in completed.stdout.splitlines()]
    assert {reading["method"] for reading in readings} == {"container-role"}
    keys = {reading["key"] for reading in readings}
    assert len(keys) >= 4, "fewer than three renewals"
    assert all(reading["now"] < reading["expires"] for reading in readings)
    fetches = [r for r in server.requests if r.startswith(f"GET {ROLE_PATH}")]
    assert len(fetches) < len(readings) / 2  # the endpoint renewed; botocore did not reach IMDS


# The command under IMDS_SHIM_SERVE=1, as PID 1's child: it leaves an orphan that ends at once
# (PID 1 must reap it), says it is up, and waits; SIGTERM ends it by default.
ORPHAN_THEN_WAIT = "sh -c 'sleep 0.2 &'; echo ready; while :; do sleep 0.1; done"
COUNT_ZOMBIES = (
    'n=0; for f in /proc/[0-9]*/stat; do read -r l < "$f"; case "$l" in *") Z "*) n=$((n+1));; esac; done; '
    'echo "$n"'
)


# Whether the orphan (`sleep 0.2`) still runs: a running process has its command line; a zombie
# has none, so once this says 0 the orphan has exited, reaped or not.
ORPHAN_RUNNING = (
    'n=0; for f in /proc/[0-9]*/cmdline; do read -r l < "$f" 2>/dev/null; '
    'case "$l" in sleep*0.2) n=$((n+1));; esac; done; echo "$n"'
)


def _wait_until_the_orphan_has_exited(engine: Engine, name: str) -> None:
    deadline = time.monotonic() + 30
    while engine("exec", name, "sh", "-c", ORPHAN_RUNNING).stdout.strip() != "0":
        assert time.monotonic() < deadline, "the orphan never exited"
        time.sleep(0.1)


def status_command(image: str) -> str:
    """How a HEALTHCHECK or `exec` runs status in this image."""
    return "/opt/imds-shim/imds-shim status" if image == IMAGES["any-image"] else "imds-shim status"


def _health(engine: Engine, name: str) -> str:
    """The engine's own verdict from the HEALTHCHECK (podman's run now, Docker's from its timer)."""
    if engine.name == "podman":
        completed = engine("healthcheck", "run", name, check=False)
        return "healthy" if completed.returncode == 0 else "unhealthy"
    return engine("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()


def _wait_for_health(engine: Engine, name: str, wanted: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (health := _health(engine, name)) != wanted:
        assert time.monotonic() < deadline, (health, engine("logs", name, check=False).stderr[-2000:])
        time.sleep(0.5)


def test_serve_as_pid_1_reaps_reports_health_and_stops(engine: Engine, image: str, imds: StartImds) -> None:
    """IMDS_SHIM_SERVE=1, no --init: the shim is PID 1 and reaps; HEALTHCHECK `imds-shim status` is
    healthy, unhealthy once IMDS is gone and the set has expired, healthy once IMDS is back; then
    `stop` ends the command in under 5 s with 143."""
    server = imds("--hop-limit", "2", "--imds-v2-required", "--expires-in", "8", "--rotate-every", "60")
    name = f"imds-shim-pid1-{os.getpid()}"
    health = ("--health-cmd", status_command(image), "--health-interval", "1s", "--health-retries", "1")
    engine(
        "run",
        "-d",
        "--name",
        name,
        *engine.network(ON_EC2),
        "-e",
        "IMDS_SHIM_SERVE=1",
        *health,
        image,
        "sh",
        "-c",
        ORPHAN_THEN_WAIT,
    )
    try:
        _wait_for_ready(engine, name)
        _wait_until_the_orphan_has_exited(engine, name)
        assert engine("exec", name, "cat", "/proc/1/comm").stdout.strip() == "imds-shim"
        assert engine("exec", name, "sh", "-c", COUNT_ZOMBIES).stdout.strip() == "0"
        _wait_for_health(engine, name, "healthy", 20)
        line = engine("exec", name, *status_command(image).split()).stdout
        assert line.startswith("imds-shim status: ok: mode --serve, role imds-shim-simulated-role, key ASIA…")
        server.process.terminate()
        server.process.wait(timeout=10)
        _wait_for_health(engine, name, "unhealthy", 30)
        imds("--hop-limit", "2", "--imds-v2-required", "--expires-in", "600")
        _wait_for_health(engine, name, "healthy", 60)
        stopped, status = _stop(engine, name)
        record(f"{label(engine, image)}: --serve as PID 1, stop", stopped)
        assert status == "143"
        assert stopped < STOP_BUDGET
    finally:
        engine("rm", "--force", name, check=False)


def test_a_docker_exec_shell_gets_credentials_only_through_imds_shim(
    engine: Engine, image: str, imds: StartImds
) -> None:
    """The README's first screen: `exec C env` has none of the entrypoint command's variables;
    `exec C imds-shim -- env` fetches them for that one command."""
    imds("--hop-limit", "2", "--imds-v2-required")
    name = f"imds-shim-exec-{os.getpid()}"
    engine("run", "-d", "--name", name, *engine.network(ON_EC2), image, "sh", "-c", ORPHAN_THEN_WAIT)
    try:
        _wait_for_ready(engine, name)
        assert "AWS_ACCESS_KEY_ID" not in environment(engine("exec", name, "env").stdout)
        shim = status_command(image).split()[0]
        fetched = environment(engine("exec", name, shim, "--", "env").stdout)
        assert fetched["AWS_ACCESS_KEY_ID"].startswith("ASIA")
        assert fetched["AWS_SESSION_TOKEN"] == fetched["AWS_SECURITY_TOKEN"]
    finally:
        engine("rm", "--force", name, check=False)


# -- the operator pages (docs/compose.md, docs/ecs.md, docs/kubernetes.md), run as written ------

# Their image is "my-app": the pip-installed example, tagged so. Their commands are replaced by one
# that waits (the example's app prints a line and ends, which would end the container).
MY_APP = "my-app"
COMPOSE = shutil.which("docker-compose")  # Debian's docker-compose (1.29): `docker compose` elsewhere


def _as_my_app(engine: Engine) -> None:
    engine("tag", IMAGES["example"], MY_APP)


@pytest.mark.parametrize("engine", ["docker"], indirect=True)
def test_the_compose_page_runs_under_docker_compose(engine: Engine, imds: StartImds, tmp_path: Path) -> None:
    """docs/compose.md's file and commands, with Docker Compose against the suite's dockerd: the
    service turns healthy once its credentials are held, `ps` says so, and `exec ... status` prints
    the supervisor's line. An override file (a Compose feature) shortens the health interval and
    gives the service a command that waits; the commands run as `docker-compose`, and `exec` with
    -T, as there is no terminal."""
    if COMPOSE is None:
        pytest.fail("docker-compose is not installed (Debian package docker-compose)")
    imds("--hop-limit", "2", "--imds-v2-required")
    name = "test_the_compose_page_runs_under_docker_compose"
    (tmp_path / "compose.yaml").write_text(doc_block("compose.md", name, "yaml"))
    (tmp_path / "compose.override.yaml").write_text(
        "services:\n  app:\n"
        f"    command: {json.dumps(['sh', '-c', ORPHAN_THEN_WAIT])}\n"
        "    healthcheck:\n      interval: 1s\n      start_period: 0s\n"
    )
    _as_my_app(engine)
    env = dict(engine.env, COMPOSE_PROJECT_NAME=f"imsh{os.getpid()}")

    def compose(line: str) -> subprocess.CompletedProcess[str]:
        words = line.split()
        assert words[:2] == ["docker", "compose"], line
        if words[2] == "exec":
            words.insert(3, "-T")
        return subprocess.run(
            [COMPOSE, *words[2:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    up, ps, status = doc_block("compose.md", name, "sh").splitlines()
    try:
        started = compose(up)
        assert started.returncode == 0, started.stderr
        container = compose("docker compose ps -q app").stdout.strip()
        _wait_for_health(engine, container, "healthy", 30)
        listed = compose(ps)
        assert "(healthy)" in listed.stdout, listed.stdout
        answered = compose(status)
        assert answered.returncode == 0, answered.stdout + answered.stderr
        assert answered.stdout.startswith(
            "imds-shim status: ok: mode --serve, role imds-shim-simulated-role, key ASIA…"
        ), answered.stdout
    finally:
        compose("docker compose down --timeout 5")


def _run_with_health_check(engine: Engine, name: str, env: dict[str, str]) -> None:
    variables = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
    engine("run", "-d", "--name", name, *variables, MY_APP, "sh", "-c", ORPHAN_THEN_WAIT)
    _wait_for_ready(engine, name)


@pytest.mark.parametrize("engine", ["docker"], indirect=True)
def test_the_ecs_task_definition_runs_as_ecs_would_run_it(engine: Engine, imds: StartImds) -> None:
    """docs/ecs.md's container definition on a bridge network with its environment, the health
    check run in the container: without a task role the shim serves the instance role and the check
    passes; with the variable ECS sets for a task role it steps aside without a request to IMDS,
    and the check passes too."""
    document = json.loads(
        doc_block("ecs.md", "test_the_ecs_task_definition_runs_as_ecs_would_run_it", "json")
    )
    assert document["networkMode"] == "bridge"  # Docker's default bridge, docker0: one hop
    (container,) = document["containerDefinitions"]
    assert container["image"] == MY_APP
    check = container["healthCheck"]["command"]
    assert check[0] == "CMD"
    environment = {item["name"]: item["value"] for item in container["environment"]}
    server = imds("--hop-limit", "2", "--imds-v2-required")
    _as_my_app(engine)
    for task_role in (False, True):
        name = f"imds-shim-ecs-{os.getpid()}-{task_role}"
        extra = {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/e2e"} if task_role else {}
        before = len(server.settled_requests())
        try:
            _run_with_health_check(engine, name, {**environment, **extra})
            answered = engine("exec", name, *check[1:], check=False)
            assert answered.returncode == 0, answered.stdout + answered.stderr
            if task_role:
                assert "stepped aside: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is set" in answered.stdout
                assert server.settled_requests()[before:] == []
            else:
                assert answered.stdout.startswith(
                    "imds-shim status: ok: mode --serve, role imds-shim-simulated-role"
                )
        finally:
            engine("rm", "--force", name, check=False)


@pytest.mark.parametrize("engine", ["docker"], indirect=True)
def test_the_kubernetes_pod_runs_as_the_kubelet_would_run_it(engine: Engine, imds: StartImds) -> None:
    """docs/kubernetes.md's container with its env, the liveness probe run in the container, in a
    pod (KUBERNETES_SERVICE_HOST set): with the variables EKS Pod Identity injects the shim steps
    aside without asking IMDS and the probe passes; without them it serves the node's role, says so,
    and the probe passes."""
    import yaml

    pod = yaml.safe_load(
        doc_block("kubernetes.md", "test_the_kubernetes_pod_runs_as_the_kubelet_would_run_it", "yaml")
    )
    (container,) = pod["spec"]["containers"]
    assert "command" not in container  # args only: the image's ENTRYPOINT, the shim, stays
    assert container["image"] == MY_APP
    probe = container["livenessProbe"]["exec"]["command"]
    environment = {item["name"]: item["value"] for item in container["env"]}
    in_pod = {"KUBERNETES_SERVICE_HOST": "10.100.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    pod_identity = {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/"
        "eks-pod-identity-token",
    }
    server = imds("--hop-limit", "2", "--imds-v2-required")
    _as_my_app(engine)
    for identity in (pod_identity, {}):
        name = f"imds-shim-pod-{os.getpid()}-{len(identity)}"
        before = len(server.settled_requests())
        try:
            _run_with_health_check(engine, name, {**environment, **in_pod, **identity})
            answered = engine("exec", name, *probe, check=False)
            assert answered.returncode == 0, answered.stdout + answered.stderr
            if identity:
                assert "stepped aside: AWS_CONTAINER_CREDENTIALS_FULL_URI is set" in answered.stdout
                assert server.settled_requests()[before:] == []
            else:
                assert answered.stdout.startswith(
                    "imds-shim status: ok: mode --serve, role imds-shim-simulated-role"
                )
                assert "node" in engine("logs", name).stderr  # the warning: the pod gets the node's role
        finally:
            engine("rm", "--force", name, check=False)


FINISHES_ON_TERM = (
    'trap "echo finishing; sleep 0.5; echo finished; exit 42" TERM; echo ready; while :; do sleep 0.1; done'
)


def test_a_spot_notice_reaches_the_app_which_finishes_and_exits(
    engine: Engine, image: str, imds: StartImds
) -> None:
    """IMDS_SHIM_ON_INTERRUPTION=SIGTERM in the image's environment, a Spot notice 3 s in: the app
    inside gets SIGTERM, finishes its work, and the container exits with the app's status (42)
    long before the notice's time (two minutes on)."""
    imds("--hop-limit", "2", "--spot-interruption-in", "3")
    name = f"imds-shim-spot-{os.getpid()}"
    started = time.monotonic()
    engine(
        "run",
        "-d",
        "--name",
        name,
        *engine.network(ON_EC2),
        "-e",
        "IMDS_SHIM_ON_INTERRUPTION=SIGTERM",
        "-e",
        "IMDS_SHIM_INTERRUPTION_POLL=1",
        image,
        "sh",
        "-c",
        FINISHES_ON_TERM,
    )
    try:
        waited = engine("wait", name, timeout=60)
        took = time.monotonic() - started
        record(f"{label(engine, image)}: Spot notice at 3 s -> the app's own exit", took)
        assert waited.stdout.strip() == "42", engine("logs", name).stderr
        logs = engine("logs", name)
        assert "finishing\nfinished\n" in logs.stdout
        assert "the instance's end is announced: spot terminate at " in logs.stderr
        assert took < 3 + 1 + 1 + 10  # the notice, a period, a second, a container's start
    finally:
        engine("rm", "--force", name, check=False)


@pytest.mark.parametrize("engine", ["docker"], indirect=True)
def test_under_compose_the_service_turns_unhealthy_while_draining(
    engine: Engine, imds: StartImds, tmp_path: Path
) -> None:
    """Docker Compose, a healthcheck on `imds-shim status --ready`: healthy, then unhealthy once a
    Spot notice has come (draining, 6 s), then the app gets SIGTERM and the container exits 42."""
    if COMPOSE is None:
        pytest.fail("docker-compose is not installed (Debian package docker-compose)")
    imds("--hop-limit", "2", "--spot-interruption-in", "12")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  app:\n    image: my-app\n"
        f"    command: {json.dumps(['sh', '-c', FINISHES_ON_TERM])}\n"
        "    environment:\n      IMDS_SHIM_ON_INTERRUPTION: SIGTERM\n"
        '      IMDS_SHIM_INTERRUPTION_POLL: "1"\n      IMDS_SHIM_DRAIN_DELAY: "6"\n'
        '    healthcheck:\n      test: ["CMD", "imds-shim", "status", "--ready"]\n'
        "      interval: 1s\n      retries: 1\n      start_period: 0s\n"
    )
    _as_my_app(engine)
    env = dict(engine.env, COMPOSE_PROJECT_NAME=f"imshdrain{os.getpid()}")

    def compose(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [COMPOSE, *words], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    try:
        started = compose("up", "-d")
        assert started.returncode == 0, started.stderr
        container = compose("ps", "-q", "app").stdout.strip()
        _wait_for_health(engine, container, "healthy", 12)
        _wait_for_health(engine, container, "unhealthy", 20)
        assert "draining for 6s" in engine("logs", container).stderr
        waited = engine("wait", container, timeout=60)
        assert waited.stdout.strip() == "42"
        assert "finished" in engine("logs", container).stdout
    finally:
        compose("down", "--timeout", "5")
