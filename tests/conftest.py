"""Shared fixtures: the installed ``imds-shim``, a clean environment, simulators, network guards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import helpers
import pytest
from helpers import METADATA_ADDRESSES, Running, clean_env
from scripted_imds import Reply, ScriptedImds, healthy

from shim.simulator.knobs import Knobs
from shim.simulator.server import Simulator


def pytest_configure(config: pytest.Config) -> None:
    """What this run tests (the installed shim, or $SHIM_UNDER_TEST), decided before any test
    module is imported: they read it as ``from helpers import SHIM``. And the process state every
    test's processes start from, whatever started the suite (helpers.choose_process_state)."""
    helpers.configure()
    helpers.choose_process_state()


_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember why each skipped test skipped (see pytest_sessionfinish)."""
    if report.skipped and isinstance(report.longrepr, tuple):
        _SKIPPED.append(f"{report.nodeid}: {report.longrepr[2].removeprefix('Skipped: ')}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skip is a failure unless its reason is in helpers.CI_ALLOWED_SKIPS: CI
    installs everything, so any other skip means a test that did not run where it must."""
    if not helpers.in_ci() or hasattr(session.config, "workerinput"):  # xdist: the controller judges
        return
    refused = [line for line in _SKIPPED if not line.split(": ", 1)[1].startswith(helpers.CI_ALLOWED_SKIPS)]
    if refused:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nCI=true: these skips are failures (a missing piece of the machine):", *refused, sep="\n  ")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that measure the machine (namespaces, engines, the herd) run apart: `make test`
    runs the rest in parallel (-m "not serial"), then these one at a time (-m serial)."""
    for item in items:
        if "e2e" in item.path.parts or item.path.name == "test_load.py":
            item.add_marker(pytest.mark.serial)


def _children() -> set[int]:
    """This process's child processes (of every thread: xdist runs tests in the main one)."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            found |= {int(pid) for pid in (task / "children").read_text().split()}
    return found


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """Whatever a test started and left running (a supervisor whose test failed before its
    cleanup, say) is killed when the test ends, with its session when it leads one: no later test,
    and no `status` that scans for supervisors, ever meets it."""
    import signal

    before = _children()
    yield
    for pid in _children() - before:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.fixture(autouse=True)
def _never_the_real_metadata_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forgotten endpoint fails fast on loopback instead of reaching the real IMDS.

    Subprocesses inherit the fail-fast endpoint; in-process code additionally cannot connect to a
    metadata address at all.
    """
    for name in list(os.environ):
        if name.startswith(("IMDS_SHIM_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", helpers.FAIL_FAST_ENDPOINT)
    real_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[0] in METADATA_ADDRESSES:
            raise ConnectionRefusedError(f"test guard: {address[0]} is off limits")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture
def simulator() -> Iterator[Callable[..., Simulator]]:
    """Start simulators on loopback with the given knobs; all are stopped after the test."""
    started: list[Simulator] = []

    def start(**knobs: Any) -> Simulator:
        sim = Simulator(Knobs(**knobs)).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    """Start imds-shim with ``args`` (a clean environment plus ``env``) as a :class:`Running`;
    each one's process group is killed after the test, whatever happened."""
    started: list[Running] = []

    def start(args: list[str], **env: str) -> Running:
        shim = Running(args, clean_env(**env))
        started.append(shim)
        return shim

    yield start
    for shim in started:
        shim.kill()


@pytest.fixture
def sim(simulator: Callable[..., Simulator]) -> Simulator:
    """A healthy simulator with default knobs."""
    return simulator()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's server mode on loopback: a second, independent IMDS implementation."""
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def unanswered_endpoint() -> Iterator[str]:
    """A loopback endpoint whose SYNs are silently dropped, like IMDS seen from off EC2.

    A listening socket whose accept queue is full: Linux drops further SYNs instead of refusing.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the queue until a connection attempt goes unanswered
        filler = socket.socket()
        filler.settimeout(0.2)
        fillers.append(filler)
        try:
            filler.connect(("127.0.0.1", port))
        except socket.timeout:
            break
    else:
        pytest.fail("could not make a loopback port drop SYNs")
    yield f"http://127.0.0.1:{port}"
    for filler in fillers:
        filler.close()
    server.close()


@pytest.fixture
def scripted_imds() -> Iterator[Callable[..., ScriptedImds]]:
    """scripted_imds({path: Reply(...)}) starts a scripted IMDS (tests/scripted_imds.py), healthy where
    the script says nothing."""
    servers: list[ScriptedImds] = []

    def start(script: dict[str, Reply] | None = None) -> ScriptedImds:
        server = ScriptedImds({**healthy(), **(script or {})})
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.closing.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheelhouse (pure wheels, for every supported Python), made once per run by the script
    that make wheelhouse runs."""

    def make(folder: Path) -> None:
        completed = subprocess.run(
            [str(helpers.HERE.parent / "scripts" / "make-wheelhouse")],
            env=dict(os.environ, PYTHON=sys.executable, WHEELHOUSE=str(folder)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 0, completed.stderr

    return helpers.made_once(tmp_path_factory, "wheelhouse", make)
