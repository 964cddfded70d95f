"""--on-interruption: the instance's end, announced by IMDS, told to the command once and in time.

Against the simulator (its --spot-interruption-in, --rebalance-in, --asg-terminate-in and
--scheduled-event knobs) and, for bytes the simulator would never send, the scripted IMDS; the
command is a real program that takes its signals race-free, and the figures are the moments it
reports against the moment the server first answered the notice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from helpers import SHIM, Running, budget, closed_port
from scripted_imds import Reply, ScriptedImds

from shim.imds.protocol import LIFECYCLE_STATE_PATH, REBALANCE_PATH, SPOT_ACTION_PATH, TOKEN_PATH
from shim.simulator.server import Simulator

pytestmark = pytest.mark.behaviour

PROGRAMS = Path(__file__).parent / "programs"
FINISHER = [sys.executable, str(PROGRAMS / "finish_on_term.py")]
ECHOER = [sys.executable, str(PROGRAMS / "signal_echo.py")]
PERIOD = 1.0
WATCH = ["--on-interruption", "TERM", "--interruption-poll", str(PERIOD)]


def first_answer(sim: Simulator, path: str, status: int = 200) -> float:
    """time.monotonic() of the simulator's first answer with ``status`` to ``path``."""
    return next(r.at for r in list(sim.server.state.requests) if r.path == path and r.status == status)


def requests_to(sim: Simulator, path: str) -> int:
    return sum(1 for r in list(sim.server.state.requests) if r.path == path)


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Until ``condition`` holds (an event on the server's side), or fail."""
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, "the condition never held"
        time.sleep(0.02)


def status_of(shim: Running, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHIM, "status", "--pid", str(shim.pid), *flags], capture_output=True, text=True, timeout=30
    )


def test_a_spot_notice_is_told_once_within_a_period_and_a_second(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """A Spot notice 1.5 s in: the command gets SIGTERM within the period plus 1 s of IMDS's first
    answer with it, finishes its work, and the shim exits with the command's status; the lines
    at the default level say what was announced and what was sent."""
    sim = simulator(spot_interruption_in=1.5)
    shim = running([*WATCH, "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    shim.wait_for(lambda line: line == "ready\n", stream="stdout")
    got = float(shim.wait_for(lambda line: line.startswith("got SIGTERM"), stream="stdout").split()[2])
    assert got - first_answer(sim, SPOT_ACTION_PATH) <= PERIOD + 1.0
    returncode, stdout, stderr = shim.finish()
    assert returncode == 7, stderr
    assert stdout.count("got SIGTERM") == 1
    assert "the instance's end is announced: spot terminate at " in stderr
    assert "sent SIGTERM to the command (spot terminate), 1m" in stderr


def test_the_story_in_json_log_lines(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """--log-format json: the announcement and the signal are each one object at warning level,
    with the facts as fields (the event, the signal, the seconds it leaves)."""
    sim = simulator(spot_interruption_in=0)
    shim = running(
        ["--log-format", "json", *WATCH, "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url
    )
    shim.wait_for(lambda line: line.startswith("got SIGTERM"), stream="stdout")
    returncode, _, stderr = shim.finish()
    assert returncode == 7
    records = [json.loads(line) for line in stderr.splitlines()]
    announced = [r for r in records if "the instance's end is announced" in r["message"]]
    sent = [r for r in records if r["message"].startswith("--on-interruption: sent SIGTERM")]
    assert [(r["level"], r["event"], r["signal"]) for r in announced] == [("warning", "spot", 15)]
    assert [(r["level"], r["signal"]) for r in sent] == [("warning", 15)]
    assert 100 < sent[0]["left"] <= 120


def test_the_signal_goes_once_and_the_watch_then_rests(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """Once the signal has gone the watch asks IMDS nothing more, and the command, which carries on,
    gets no second SIGTERM, though the notice stays."""
    sim = simulator(spot_interruption_in=0)
    shim = running([*WATCH, "--", *ECHOER, "SIGTERM", "SIGUSR1"], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    shim.wait_for(lambda line: line.startswith("ready "), stream="stdout")
    shim.wait_for(lambda line: line == "SIGTERM\n", stream="stdout")
    asked = requests_to(sim, SPOT_ACTION_PATH)
    for _ in range(3):  # three periods of forwarding: the loop is alive, the watch is not
        os.kill(shim.pid, signal.SIGUSR1)
        shim.wait_for(lambda line: line == "SIGUSR1\n", stream="stdout")
        time.sleep(PERIOD)  # the watch's period is what is tested: time must pass for it
    returncode, stdout, _ = shim.finish()
    assert returncode == 0
    assert stdout.count("SIGTERM") == 1
    assert requests_to(sim, SPOT_ACTION_PATH) == asked


def test_a_drain_delay_shows_in_status_and_fails_status_ready(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """With --drain-delay the container is draining first: status says so and exits 0 (a liveness
    probe leaves it alone), status --ready exits 1 (a load balancer takes it out), and the
    signal comes no sooner than the delay after the announcement."""
    sim = simulator(spot_interruption_in=0)
    shim = running([*WATCH, "--drain-delay", "3", "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    shim.wait_for(lambda line: "draining for 3s, then sending SIGTERM" in line)
    live, ready = status_of(shim), status_of(shim, "--ready")
    assert live.returncode == 0, live.stdout
    assert "draining: spot terminate at " in live.stdout
    assert "SIGTERM not sent yet (drain delay)" in live.stdout
    assert ready.returncode == 1, ready.stdout
    assert ready.stdout.startswith("imds-shim status: unhealthy: mode --init, ")
    got = float(shim.wait_for(lambda line: line.startswith("got SIGTERM"), stream="stdout").split()[2])
    assert got - first_answer(sim, SPOT_ACTION_PATH) >= 3.0  # the announcement came after that answer
    assert shim.finish()[0] == 7


def test_without_a_notice_status_ready_is_ok(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """Watching, nothing announced: status --ready exits 0, with nothing said of draining."""
    sim = simulator()
    shim = running([*WATCH, "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    shim.wait_for(lambda line: line == "ready\n", stream="stdout")
    wait_until(lambda: requests_to(sim, SPOT_ACTION_PATH) >= 2)
    ready = status_of(shim, "--ready")
    assert ready.returncode == 0, ready.stdout
    assert "draining" not in ready.stdout
    os.kill(shim.pid, signal.SIGTERM)
    assert shim.finish()[0] == 7


@pytest.mark.parametrize("listed", [False, True], ids=["by default", "when listed"])
def test_a_rebalance_recommendation_is_acted_on_only_when_listed(
    simulator: Callable[..., Simulator], running: Callable[..., Running], listed: bool
) -> None:
    """A rebalance recommendation is logged and shown by default, and sends the signal only with
    --interruption-events listing rebalance."""
    sim = simulator(rebalance_in=0)
    events = ["--interruption-events", "spot,rebalance"] if listed else []
    shim = running([*WATCH, *events, "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    shim.wait_for(lambda line: line == "ready\n", stream="stdout")
    if listed:
        shim.wait_for(lambda line: line.startswith("got SIGTERM"), stream="stdout")
        assert shim.finish()[0] == 7
        return
    said = shim.wait_for(lambda line: "rebalance recommended" in line)
    assert "not acted on (--interruption-events spot,asg)" in said
    wait_until(lambda: requests_to(sim, REBALANCE_PATH) >= 3)  # two more periods, nothing sent
    assert "announced: rebalance recommended at " in status_of(shim).stdout
    os.kill(shim.pid, signal.SIGTERM)  # the test's own SIGTERM: the only one the command gets
    returncode, stdout, stderr = shim.finish()
    assert (returncode, stdout.count("got SIGTERM")) == (7, 1)
    assert stderr.count("rebalance recommended") == 1  # said once, not every period


def test_auto_scaling_terminated_is_acted_on(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """The Auto Scaling target state turning Terminated sends the signal; InService before does not."""
    sim = simulator(asg_terminate_in=2)
    shim = running([*WATCH, "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    got = float(shim.wait_for(lambda line: line.startswith("got SIGTERM"), stream="stdout").split()[2])
    asked = [r.at for r in sim.server.state.requests if r.path == LIFECYCLE_STATE_PATH]
    terminated = sim_start(sim) + 2
    assert any(at < terminated for at in asked)  # asked while InService, and not acted on
    assert got >= terminated
    returncode, _, stderr = shim.finish()
    assert returncode == 7
    assert "the instance's end is announced: auto scaling terminate; sending SIGTERM" in stderr


def sim_start(sim: Simulator) -> float:
    """The simulator's start on the monotonic clock (its knobs count from it)."""
    state = sim.server.state
    return time.monotonic() - (time.time() - state.started)


def test_imdsv2_only_one_token_for_every_poll(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """With IMDSv2 required the watch asks for one token and uses it for every poll, on one
    kept-alive connection, and the notice still comes through."""
    sim = simulator(imds_v2_required=True, spot_interruption_in=3.5)
    shim = running([*WATCH, "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    shim.wait_for(lambda line: line.startswith("got SIGTERM"), stream="stdout")
    assert shim.finish()[0] == 7
    watched = [r for r in sim.server.state.requests if r.path == SPOT_ACTION_PATH]
    assert len(watched) >= 3
    assert all(r.status in (200, 404) for r in watched)
    puts = [r for r in sim.server.state.requests if r.path == TOKEN_PATH]
    assert len(puts) == 2  # the fetch's, and the watch's one for all its polls


def test_imds_gone_then_back_warns_once_and_recovers(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """IMDS stops answering while watched: one warning for the outage, no signal, status counts
    the failed checks; IMDS back, the watch goes on by itself and acts on the notice."""
    port = closed_port()
    first = simulator(port=port)
    shim = running(
        ["-v", *WATCH, "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=f"http://127.0.0.1:{port}"
    )
    shim.wait_for(lambda line: line == "ready\n", stream="stdout")
    wait_until(lambda: requests_to(first, SPOT_ACTION_PATH) >= 1)
    first.stop()
    shim.wait_for(lambda line: "--on-interruption: IMDS " in line and "still watching" in line)
    wait_until(lambda: "checks in a row unanswered" in status_of(shim).stdout, timeout=10)
    second = simulator(port=port, spot_interruption_in=0)
    shim.wait_for(lambda line: "IMDS answers again, after " in line)
    shim.wait_for(lambda line: line.startswith("got SIGTERM"), stream="stdout")
    returncode, _, stderr = shim.finish()
    assert returncode == 7
    assert stderr.count("still watching") == 1
    assert requests_to(second, SPOT_ACTION_PATH) >= 1


def test_a_notice_already_there_at_the_start(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """A container restarted during the two minutes: the notice is there at its start, so its
    command is told within the first period (plus a second), once, with no loop and no traceback."""
    sim = simulator(spot_interruption_in=0)
    started = time.monotonic()
    shim = running([*WATCH, "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    got = float(shim.wait_for(lambda line: line.startswith("got SIGTERM"), stream="stdout").split()[2])
    assert got - started <= budget(PERIOD + 1.0 + 1.0)  # plus the start itself, on this machine
    returncode, _, stderr = shim.finish()
    assert returncode == 7
    assert stderr.count("the instance's end is announced") == 1
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("reply", "acted"),
    [
        (Reply(body=b"this is not JSON"), True),
        (Reply(body=b'{"action": "explode", "time": "2026-12-07T16:15:30Z"}'), True),
        (Reply(body=b"x", repeat=100_000), True),
        (Reply(status=500, body=b"busy"), False),
        (Reply(body=b"{}", drip=0.2, drip_headers=True), False),
    ],
    ids=["unreadable", "unknown action", "oversized", "a 500", "trickling"],
)
def test_hostile_notices_while_signals_are_forwarded(
    scripted_imds: Callable[..., ScriptedImds], running: Callable[..., Running], reply: Reply, acted: bool
) -> None:
    """A 200 on instance-action whatever its body is a notice (unreadable, unknown action, too
    large: acted on, the safe side for the command's work); a 500 or a trickle is a failed check.
    Meanwhile every signal sent to the shim reaches the command at once: the loop never waits."""
    imds = scripted_imds({SPOT_ACTION_PATH: reply})
    shim = running([*WATCH, "--", *ECHOER, "SIGTERM", "SIGUSR1"], AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    shim.wait_for(lambda line: line.startswith("ready "), stream="stdout")
    for _ in range(8):  # through the first polls (a trickle takes its 2 s), every half period
        sent = time.monotonic()
        os.kill(shim.pid, signal.SIGUSR1)
        shim.wait_for(lambda line: line == "SIGUSR1\n", stream="stdout", timeout=5)
        assert time.monotonic() - sent < 0.5
        time.sleep(PERIOD / 2)  # spread over the polls
    if acted:
        if "SIGTERM\n" not in shim.seen["stdout"]:  # it may have come among the SIGUSR1s
            shim.wait_for(lambda line: line == "SIGTERM\n", stream="stdout", timeout=5)
        assert "an unreadable Spot notice" in shim.wait_for(lambda line: "sent SIGTERM" in line)
    else:
        shim.wait_for(lambda line: "still watching" in line)
    returncode, stdout, stderr = shim.finish()
    assert returncode == 0, stderr
    assert stdout.count("SIGTERM") == (1 if acted else 0)
    assert "Traceback" not in stderr
    assert stderr.count("still watching") == (0 if acted else 1)


def test_an_unknown_auto_scaling_state_is_not_acted_on(
    scripted_imds: Callable[..., ScriptedImds], running: Callable[..., Running]
) -> None:
    """A lifecycle state nobody knows (or bytes that are none) announces nothing: no signal."""
    imds = scripted_imds({LIFECYCLE_STATE_PATH: Reply(body=b"Exploding\x1b[31m")})
    shim = running([*WATCH, "--", *ECHOER, "SIGTERM"], AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    shim.wait_for(lambda line: line.startswith("ready "), stream="stdout")
    said = shim.wait_for(lambda line: "an unknown Auto Scaling state" in line)
    assert "not acted on (it announces no end)" in said
    assert "\x1b" not in said
    wait_until(lambda: imds.paths.count(LIFECYCLE_STATE_PATH) >= 3)
    returncode, stdout, _ = shim.finish()
    assert (returncode, stdout.count("SIGTERM")) == (0, 0)


def test_without_the_watch_nothing_asks_for_the_instances_end(
    simulator: Callable[..., Simulator], running: Callable[..., Running]
) -> None:
    """--init alone never asks IMDS anything after the start."""
    sim = simulator(spot_interruption_in=0)
    shim = running(["--init", "--", *ECHOER, "SIGTERM"], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    shim.wait_for(lambda line: line.startswith("ready "), stream="stdout")
    asked = len(sim.server.state.requests)
    time.sleep(2 * PERIOD)  # what is tested is that time passes without a request
    assert len(sim.server.state.requests) == asked
    assert shim.finish()[0] == 0


def test_doctor_shows_what_is_announced(simulator: Callable[..., Simulator]) -> None:
    """doctor shows each watched path's answer and the scheduled events, and says what
    --on-interruption would act on."""
    sim = simulator(rebalance_in=0, scheduled_event="system-reboot")
    completed = subprocess.run(
        [SHIM, "--on-interruption", "INT", "doctor"],
        env={"PATH": os.environ["PATH"], "AWS_EC2_METADATA_SERVICE_ENDPOINT": sim.url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stdout
    end = next(line for line in completed.stdout.splitlines() if "instance end" in line)
    assert "rebalance recommended at " in end
    assert "--on-interruption SIGINT acts on spot, asg" in end
    maintenance = next(line for line in completed.stdout.splitlines() if "maintenance" in line)
    assert "system-reboot (active) from " in maintenance


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--interruption-events", "spot,meteor"], "--interruption-events: expected a comma-separated list"),
        (["--interruption-events", ","], "--interruption-events: expected a comma-separated list"),
        (["--interruption-poll", "0.1"], "--interruption-poll: expected a number from 0.5 to 3600"),
        (["--drain-delay", "-1"], "--drain-delay: expected a number from 0 to 3600"),
        (["--on-interruption", "STOP"], "--on-interruption: 'STOP' does not end a process"),
    ],
    ids=["unknown event", "no event", "poll too short", "negative drain", "a signal that ends nothing"],
)
def test_bad_watch_options_are_one_line_and_125(args: list[str], said: str) -> None:
    """Each of the watch's options refuses a bad value in one line on stderr, exit 125, nothing run."""
    completed = subprocess.run(
        [SHIM, "--on-interruption", "TERM", *args, "--", "true"],
        env={
            "PATH": os.environ["PATH"],
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert completed.returncode == 125
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert said in completed.stderr


@pytest.mark.parametrize(
    ("mode", "shown"),
    [
        (["--serve"], "--serve"),
        (["--expiry-signal", "USR1"], "--expiry-signal"),
        (["--refresh"], "--init --refresh"),
    ],
    ids=["serve", "expiry-signal", "refresh"],
)
def test_the_watch_works_in_every_mode(
    simulator: Callable[..., Simulator], running: Callable[..., Running], mode: list[str], shown: str
) -> None:
    """The watch is a service any mode takes: beside --serve and --expiry-signal, and with
    --refresh, which then supervises as under --init."""
    sim = simulator(spot_interruption_in=2)  # after status has answered
    shim = running([*mode, *WATCH, "--", *FINISHER], AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url)
    shim.wait_for(lambda line: line == "ready\n", stream="stdout")
    assert status_of(shim).stdout.startswith(f"imds-shim status: ok: mode {shown}, ")
    shim.wait_for(lambda line: line.startswith("got SIGTERM"), stream="stdout")
    assert shim.finish()[0] == 7
