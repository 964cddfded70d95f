"""--log-format json: every line the shim writes to stderr is one JSON object, at every level and
in every mode, and says what the text line says, with the text's facts as fields."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
from helpers import Running, clean_env, closed_port, run_shim

from shim.simulator.server import Simulator

pytestmark = pytest.mark.behaviour

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
MASKED = re.compile(r"ASIA…[A-Z0-9]{4}")
TEXT_LINE = re.compile(r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ )?imds-shim: (debug|info|warning|error): (.*)")
LEVELS = ("debug", "info", "warning", "error")


def records(stderr: str) -> list[dict[str, Any]]:
    """Each stderr line as the JSON object it must be, with the fields every line has."""
    found = []
    for line in stderr.splitlines():
        assert line.isascii(), line  # no byte of a value can end or forge a line
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert TIME.fullmatch(record["time"]), line
        moment = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert abs((datetime.now(timezone.utc) - moment).total_seconds()) < 120, line
        assert record["level"] in LEVELS, line
        assert isinstance(record["message"], str), line
        assert record["program"] == "imds-shim", line
        found.append(record)
    return found


def gist(message: str) -> str:
    """A message with what differs from run to run (numbers, key IDs, ports) taken out."""
    return re.sub(r"\d+", "N", MASKED.sub("KEY", re.sub(r"/tmp/\S+", "PATH", message)))


def text_lines(stderr: str) -> list[tuple[str, str]]:
    matches = [TEXT_LINE.fullmatch(line) for line in stderr.splitlines()]
    assert all(matches), stderr
    return [(m.group(1), gist(m.group(2))) for m in matches if m]


# (name, simulator knobs, arguments, exit status). Each runs at every level.
SCENARIOS: list[tuple[str, dict[str, Any], list[str], int]] = [
    ("exec", {}, ["--", "true"], 0),
    ("imdsv1 fallback", {"token_hang": True}, ["--", "true"], 0),
    ("busy then fine", {"fail_first": 2, "fail_status": 503}, ["--", "true"], 0),
    ("no role", {"no_role": True}, ["--", "true"], 125),
    ("no role, optional", {"no_role": True}, ["--optional", "--", "true"], 0),
    ("command not found", {}, ["--", "no-such-command-xyz"], 127),
    ("refresh", {}, ["--refresh", "--", "true"], 0),
    ("serve", {}, ["--serve", "--", "true"], 0),
    ("init", {}, ["--init", "--", "sh", "-c", "exit 3"], 3),
    ("expiry-signal", {}, ["--expiry-signal", "USR1", "--", "true"], 0),
    ("export", {}, ["export"], 0),
    ("usage error", {}, ["--no-such-option", "--", "true"], 125),
    ("simulate", {}, ["simulate", "--", "true"], 0),
]
MODES = {"serve": "serve", "init": "init", "expiry-signal": "expiry-signal", "refresh": "refresh"}


# Every scenario at debug (every line there is) and at the default, warning; info and error,
# whose filtering is the same code, on the scenarios that have lines at those levels.
CASES = [
    pytest.param(level, *scenario, id=f"{scenario[0]}-{level}")
    for scenario in SCENARIOS
    for level in LEVELS
    if level in ("debug", "warning") or scenario[0] in ("exec", "serve", "no role", "usage error")
]


@pytest.mark.parametrize(("level", "name", "knobs", "args", "status"), CASES)
def test_each_line_is_the_text_lines_json_twin(
    simulator: Callable[..., Simulator],
    level: str,
    name: str,
    knobs: dict[str, Any],
    args: list[str],
    status: int,
) -> None:
    """Run twice, as text and as JSON: the same lines, level for level and message for message,
    and each JSON line an object with its time, level, message and mode."""
    runs = {}
    for log_format in ("text", "json"):
        sim = simulator(**knobs)
        env = clean_env(
            AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url,
            IMDS_SHIM_LOG_LEVEL=level,
            IMDS_SHIM_LOG_FORMAT=log_format,
        )
        result = run_shim(args, env=env)
        assert result.returncode == status, result.stderr
        runs[log_format] = result.stderr
    json_records = records(runs["json"])
    assert [(r["level"], gist(r["message"])) for r in json_records] == text_lines(runs["text"])
    assert all(LEVELS.index(r["level"]) >= LEVELS.index(level) for r in json_records)
    if name == "usage error":
        assert [r["exit_code"] for r in json_records] == [125]
        return
    verb = args[0] if args[0] in ("export", "simulate") else MODES.get(args[0].lstrip("-"), "exec")
    if name != "simulate":  # simulate's command is `true`, not a shim: only the simulator's lines
        assert {r["mode"] for r in json_records} <= {verb}, json_records
    if level in ("debug", "info") and status == 0 and name not in ("simulate", "no role, optional"):
        (fetched,) = [r for r in json_records if r["message"].startswith("role ")]
        assert fetched["role"] == "imds-shim-simulated-role"
        assert MASKED.fullmatch(fetched["key_id"]), fetched
        assert RFC3339.fullmatch(fetched["expires"]), fetched
        assert (fetched["region"], fetched["account"]) == ("eu-west-1", "123456789012")
        assert fetched["imds_version"] == (1 if knobs.get("token_hang") else 2)
        assert isinstance(fetched["requests"], int)
    if status and name != "init":
        assert json_records[-1]["level"] == "error"
        assert json_records[-1]["exit_code"] == status


def test_a_bad_log_format_is_a_usage_error() -> None:
    result = run_shim(["--log-format", "xml", "--", "true"])
    assert result.returncode == 125
    assert result.stderr == "imds-shim: error: --log-format: expected one of text, json, got 'xml'\n"


WAIT_FOR_A_NEW_KEY = """
import json, os, sys, time, urllib.request
request = urllib.request.Request(
    os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
    headers={"Authorization": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]},
)
def key():
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())["AccessKeyId"]
first, ends = key(), time.monotonic() + 60
while key() == first and time.monotonic() < ends:
    time.sleep(0.1)
print(key(), flush=True)
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_renewal_is_logged_with_its_facts(simulator: Callable[..., Simulator], log_format: str) -> None:
    """Under --serve -v a renewal is one info line: in JSON with the role, the new masked key,
    its expiry and no failures, in the serve mode."""
    import sys

    # A new set every second, so the renewal due halfway through a set's life finds one at its
    # first try, about 2 s before the old set expires (the simulator's default rotation, half the
    # lifetime, can leave a renewal 0.5 s or less, and then the command meets a 503).
    sim = simulator(expires_in=5, rotate_every=1)
    env = clean_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, IMDS_SHIM_LOG_FORMAT=log_format)
    result = run_shim(["-v", "--serve", "--", sys.executable, "-c", WAIT_FOR_A_NEW_KEY], env=env)
    assert result.returncode == 0, result.stderr
    new_key = result.stdout.strip()
    if log_format == "text":
        assert re.search(
            rf"imds-shim: info: --serve: renewed: {new_key[:4]}…{new_key[-4:]} expires at ", result.stderr
        )
        return
    renewals = [r for r in records(result.stderr) if r["message"].startswith("--serve: renewed: ")]
    assert renewals, result.stderr
    renewal = next(r for r in renewals if r["key_id"] == f"{new_key[:4]}…{new_key[-4:]}")
    assert (renewal["level"], renewal["mode"], renewal["failures"]) == ("info", "serve", 0)
    assert renewal["role"] == "imds-shim-simulated-role"
    assert RFC3339.fullmatch(renewal["expires"])


def test_failed_renewals_and_the_recovery_are_warnings_with_their_count(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """IMDS goes away after the start, then comes back: each failed renewal is a JSON warning with
    the failures in a row and the current set's expiry; the recovery a warning that counts them."""
    port = closed_port()
    first = simulator(port=port, expires_in=4, rotate_every=2)
    shim = running(
        ["-v", "--serve", "--log-format", "json", "--", "sh", "-c", "read line"],
        AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{port}",
    )
    started = json.loads(shim.wait_for(lambda line: "--serve: credentials at" in line))
    first.stop()
    failed = json.loads(shim.wait_for(lambda line: "renewal failed" in line))
    assert (failed["level"], failed["mode"], failed["failures"]) == ("warning", "serve", 1)
    assert failed["expires"] == started["expires"]
    assert failed["role"] == "imds-shim-simulated-role"
    simulator(port=port)
    recovered = json.loads(shim.wait_for(lambda line: "renewed again after" in line, timeout=60))
    assert recovered["level"] == "warning"
    assert recovered["failures"] >= 1
    assert MASKED.fullmatch(recovered["key_id"])
    status, _, stderr = shim.finish("\n")
    assert status == 0, stderr
    records(stderr)
