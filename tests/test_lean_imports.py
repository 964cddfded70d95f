"""What the fetch path imports: requests without the parts imds-shim never uses (shim/imds/lean_requests.py).

Every import is paid at every container start. Each test runs a fresh interpreter, so that nothing
this test process imported hides a cost.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import clean_env

from shim.simulator.server import Simulator

SOURCE = str(Path(__file__).resolve().parents[1])


def python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args, "-c", code],
        env=clean_env(PYTHONPATH=SOURCE, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


# Stands in for os.execve: writes the modules loaded at the moment of exec, one a line, and leaves.
# Read from sys.modules, not from -X importtime, whose lines also list a blocked import, at a time
# that a busy machine can stretch past any threshold (CI on Python 3.9 saw one at over 50 us).
LOADED_AT_EXEC = (
    "import os, sys\n"
    "def loaded(*exec_args):\n"
    "    names = [name for name, module in sys.modules.items() if module is not None]\n"
    "    os.write(1, '\\n'.join(names).encode())\n"
    "    os._exit(0)\n"
    "os.execve = loaded\n"
    "from shim.cli import run; sys.argv[1:] = ['--', 'true']; run()\n"
)


def test_a_fetch_imports_no_detector_and_no_importlib_metadata(sim: Simulator) -> None:
    """A whole fetch, up to its exec, never loads charset_normalizer, chardet, importlib.metadata,
    certifi or inspect."""
    completed = python(LOADED_AT_EXEC, AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    assert completed.returncode == 0, completed.stderr
    loaded = set(completed.stdout.splitlines())
    assert {"requests", "urllib3", "shim.imds.fetch"} <= loaded  # the fetch ran, up to the exec
    kept_out = {"charset_normalizer", "chardet", "importlib.metadata", "certifi", "inspect"}
    assert loaded & kept_out == set()


def test_the_metadata_stand_in_forwards_and_leaves() -> None:
    """After the lean import, importlib.metadata is the real module again, and urllib3's version()
    (taken from the stand-in) answers as the real one does."""
    if importlib.util.find_spec("urllib3.http2") is None:  # urllib3 1.26 (chosen on Python 3.9, say)
        pytest.skip("this urllib3 has no HTTP/2 module, the one that imports importlib.metadata")
    completed = python(
        "import sys, shim.imds.lean_requests, urllib3.http2 as h2\n"
        "assert 'importlib.metadata' not in sys.modules\n"
        "import importlib.metadata as real\n"
        "assert real.version('requests') == h2.version('requests'), h2.version\n"
        "print(h2.version('urllib3'))"
    )
    assert completed.returncode == 0, completed.stderr
    from importlib.metadata import version

    assert completed.stdout.strip() == version("urllib3")


def test_without_certifi_requests_still_loads_and_fetches(sim: Simulator) -> None:
    """As in the bundle (no ssl, no certifi): requests loads through the stand-in, and a fetch works."""
    completed = python(
        "import sys\n"
        "for name in ('ssl', '_ssl', '_hashlib', 'certifi'): sys.modules[name] = None\n"
        "from shim.cli import run; sys.argv[1:] = ['export', '--format', 'env']; run()",
        AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url,
    )
    assert completed.returncode == 0, completed.stderr
    assert "AWS_ACCESS_KEY_ID=ASIA" in completed.stdout
