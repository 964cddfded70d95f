"""A local IMDS look-alike with knobs for what the real one does on a bad day.

It speaks the subset of IMDS the AWS SDKs use: the IMDSv2 token (with the PUT-response hop limit
applied as the IP TTL of the answer, as IMDS does), role discovery, role credentials, the instance
identity document and ``placement/region``. Its credentials are obviously fake and rotate. Every
request is recorded, so tests can count what reached "IMDS".

Knobs: IMDSv2 required, hop limit, a token PUT that never answers, a fixed token status (IMDSv1
only), the first N answers failing, throttling above a rate, latency, no role attached, credentials
expiring in N seconds (or already expired), a missing identity document, and faulty credentials
bodies (malformed, oversized, redirect, error code).
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from shim.command_line.exit_codes import COMMAND_NOT_EXECUTABLE, COMMAND_NOT_FOUND, SIGNAL_BASE
from shim.command_line.parse import option_lines
from shim.errors import UsageError
from shim.execute import command_error, locate
from shim.imds.protocol import (
    IDENTITY_DOCUMENT_PATH,
    LIFECYCLE_STATE_PATH,
    REBALANCE_PATH,
    REGION_PATH,
    ROLE_PATH,
    SCHEDULED_EVENTS_PATH,
    SPOT_ACTION_PATH,
    TOKEN_HEADER,
    TOKEN_PATH,
    TOKEN_TTL_HEADER,
)
from shim.log import log, write_stdout
from shim.runtime import as_this_program
from shim.simulator.knobs import SIMULATOR_OPTIONS, Knobs

if TYPE_CHECKING:
    from shim.command_line.values import Value

INSTANCE_ID = "i-0123456789abcdef0"
SPOT_WARNING = 120  # seconds between a Spot notice and its action, as EC2 gives
REDIRECT_TARGET = "/latest/meta-data/redirected"  # a client that follows redirects asks for it


@dataclass(frozen=True)
class Recorded:
    """One request as the simulator saw it."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    at: float  # time.monotonic() when the answer was decided


@dataclass
class IssuedCredentials:
    access_key_id: str
    secret_access_key: str
    token: str
    expiration: datetime


@dataclass
class State:
    """Everything the request handlers share; guarded by ``lock``."""

    settings: Knobs
    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[Recorded] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)
    issued: dict[int, IssuedCredentials] = field(default_factory=dict)
    bucket: float = 0.0
    bucket_time: float = field(default_factory=time.monotonic)
    credentials_answers: int = 0
    token_puts: int = 0
    connections: int = 0  # accepted: what a client's keep-alive saves shows here
    closing: threading.Event = field(default_factory=threading.Event)

    def rotation_period(self) -> float:
        """Seconds between credential sets; 0 means a new set for every answer."""
        if self.settings.rotate_every is not None:
            return self.settings.rotate_every
        # Like IMDS: a new set well before the old one expires (five minutes for long-lived sets).
        expires_in = self.settings.expires_in
        return expires_in - 300 if expires_in > 600 else max(expires_in / 2, 1.0)

    def credentials(self) -> IssuedCredentials:
        period = self.rotation_period()
        if period:
            generation = int((time.time() - self.started) // period)
            issued_at = self.started + generation * period
        else:
            generation, issued_at = self.credentials_answers, time.time()
        if generation not in self.issued:
            self.issued[generation] = IssuedCredentials(
                access_key_id=f"ASIASIMULATED{generation % 1000:03d}{secrets.token_hex(2).upper()}",
                secret_access_key=f"simulated-secret-{generation}-{secrets.token_hex(12)}",
                token=f"simulated-session-token-{generation}-{secrets.token_hex(24)}",
                expiration=datetime.fromtimestamp(int(issued_at + self.settings.expires_in), timezone.utc),
            )
        return self.issued[generation]

    def throttled(self) -> bool:
        """A token bucket refilled at ``throttle`` per second, holding one second's worth."""
        rate = self.settings.throttle
        if rate is None:
            return False
        now = time.monotonic()
        if not self.requests:
            self.bucket = rate
        self.bucket = min(rate, self.bucket + (now - self.bucket_time) * rate)
        self.bucket_time = now
        if self.bucket < 1:
            return True
        self.bucket -= 1
        return False


class Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests from the shared :class:`State`."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms of delayed ACK between answers on one connection
    # Buffered, so that headers and body leave in one write when the answer is done (as IMDS's
    # do): written apart, a herd of handler threads could hold the body back for seconds.
    wbufsize = -1
    server: SimulatorServer
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: requests are recorded, not printed."""

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        state = self.server.state
        settings = state.settings
        if state.closing.is_set():  # stopped: a kept-alive connection gets no more answers
            self.close_connection = True
            return
        # On arrival, before any --latency: `simulate -v` shows what reached "IMDS" and when.
        log.info(f"request: {method} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 65536))
        if settings.latency:
            time.sleep(settings.latency)
        with state.lock:
            status, body, headers = self._answer(method, state)
            state.requests.append(
                Recorded(method, self.path, status, dict(self.headers.items()), time.monotonic())
            )
        if status == 0:  # the token PUT that never answers
            state.closing.wait()
            self.close_connection = True
            return
        self._send(method, status, body, headers)

    def _answer(self, method: str, state: State) -> tuple[int, bytes, dict[str, str]]:
        settings, path = state.settings, self.path
        if len(state.requests) < settings.fail_first:
            hint = {} if settings.retry_after is None else {"Retry-After": str(settings.retry_after)}
            return settings.fail_status, b"simulated failure\n", hint
        if state.throttled():
            return 429, b"Too Many Requests\n", {}
        if path == TOKEN_PATH:
            return self._token(method, state)
        if method != "GET":
            return 405, b"Method Not Allowed\n", {}
        token = self.headers.get(TOKEN_HEADER)
        if token is not None and state.tokens.get(token, 0) < time.monotonic():
            return 401, b"Unauthorized\n", {}
        if token is not None and settings.revoke_first_token and token == next(iter(state.tokens)):
            return 401, b"Unauthorized\n", {}
        if token is None and settings.imds_v2_required:
            return 401, b"Unauthorized\n", {}
        return self._metadata(path, state)

    def _token(self, method: str, state: State) -> tuple[int, bytes, dict[str, str]]:
        settings = state.settings
        if method != "PUT":
            return 405, b"Method Not Allowed\n", {}
        state.token_puts += 1
        if settings.token_hang or state.token_puts <= settings.token_hang_first:
            return 0, b"", {}
        if settings.token_status:
            return settings.token_status, b"simulated token answer\n", {}
        if "X-Forwarded-For" in self.headers:
            return 403, b"Forbidden\n", {}
        ttl = self.headers.get(TOKEN_TTL_HEADER, "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return 400, b"Bad Request\n", {}
        token = "SIMTOKEN-" + secrets.token_urlsafe(32)
        state.tokens[token] = time.monotonic() + int(ttl)
        return 200, token.encode(), {TOKEN_TTL_HEADER: ttl}

    def _metadata(self, path: str, state: State) -> tuple[int, bytes, dict[str, str]]:
        settings = state.settings
        if path == ROLE_PATH:
            if settings.no_role:
                return 404, b"Not Found\n", {}
            return 200, settings.role_name.encode(), {}
        if path == ROLE_PATH + settings.role_name and not settings.no_role:
            return self._credentials(state)
        if path == IDENTITY_DOCUMENT_PATH and not settings.no_identity_document:
            return 200, json.dumps(_identity_document(settings), indent=2).encode(), {}
        if path == REGION_PATH:
            return 200, settings.region.encode(), {}
        if path == "/latest/meta-data/instance-id":
            return 200, INSTANCE_ID.encode(), {}
        return self._instance_end(path, state)

    def _instance_end(self, path: str, state: State) -> tuple[int, bytes, dict[str, str]]:
        """The announcements of the instance's end, in IMDS's shapes, from their moments on."""
        settings, since = state.settings, time.time() - state.started
        spot, rebalance = settings.spot_interruption_in, settings.rebalance_in
        if path == SPOT_ACTION_PATH and spot is not None and since >= spot:
            moment = datetime.fromtimestamp(int(state.started + spot + SPOT_WARNING), timezone.utc)
            return 200, json.dumps({"action": settings.spot_action, "time": _rfc3339(moment)}).encode(), {}
        if path == REBALANCE_PATH and rebalance is not None and since >= rebalance:
            moment = datetime.fromtimestamp(int(state.started + rebalance), timezone.utc)
            return 200, json.dumps({"noticeTime": _rfc3339(moment)}).encode(), {}
        if path == LIFECYCLE_STATE_PATH and settings.asg_terminate_in is not None:
            return 200, b"Terminated" if since >= settings.asg_terminate_in else b"InService", {}
        if path == SCHEDULED_EVENTS_PATH:
            return 200, json.dumps(_scheduled_events(state)).encode(), {}
        return 404, b"Not Found\n", {}

    def _credentials(self, state: State) -> tuple[int, bytes, dict[str, str]]:
        settings = state.settings
        state.credentials_answers += 1
        issued = state.credentials()
        document = {
            "Code": "Success",
            "LastUpdated": _rfc3339(datetime.now(timezone.utc)),
            "Type": "AWS-HMAC",
            "AccessKeyId": issued.access_key_id,
            "SecretAccessKey": issued.secret_access_key,
            "Token": issued.token,
            "Expiration": _rfc3339(issued.expiration),
        }
        if settings.account_in_credentials:
            document["AccountId"] = settings.account
        fault = settings.credentials_fault
        if fault and (not settings.fault_times or state.credentials_answers <= settings.fault_times):
            return _faulty(fault, document)
        return 200, json.dumps(document, indent=2).encode(), {}

    def _send(self, method: str, status: int, body: bytes, headers: dict[str, str]) -> None:
        hop_limit = self.server.state.settings.hop_limit
        is_token_answer = method == "PUT" and self.path == TOKEN_PATH
        if hop_limit and is_token_answer:
            # IMDS sends the token answer with IP TTL = hop limit. Keep it for the rest of the
            # connection (and close it) so that retransmissions are limited the same way.
            _set_ttl(self.connection, hop_limit)
            self.close_connection = True
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def _set_ttl(connection: socket.socket, hops: int) -> None:
    if connection.family == socket.AF_INET6:
        connection.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
    else:
        connection.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)


def _faulty(fault: str, document: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    if fault == "malformed":
        return 200, b'{"Code": "Success", "AccessKeyId": ', {}
    if fault == "oversized":
        padded = dict(document, Padding="x" * (128 * 1024))
        return 200, json.dumps(padded).encode(), {}
    if fault == "redirect":
        return 302, b"", {"Location": REDIRECT_TARGET}
    if fault == "error-code":
        return 200, json.dumps({"Code": "AssumeRoleUnauthorizedAccess"}).encode(), {}
    return 200, json.dumps({k: v for k, v in document.items() if k != "Token"}).encode(), {}


def _identity_document(settings: Knobs) -> dict[str, object]:
    return {
        "accountId": settings.account,
        "architecture": "x86_64",
        "availabilityZone": settings.region + "a",
        "imageId": "ami-0123456789abcdef0",
        "instanceId": INSTANCE_ID,
        "instanceType": "t3.micro",
        "pendingTime": "2026-01-01T00:00:00Z",
        "privateIp": "10.0.0.10",
        "region": settings.region,
        "version": "2017-09-30",
    }


def _scheduled_events(state: State) -> list[dict[str, str]]:
    if state.settings.scheduled_event is None:
        return []
    start = datetime.fromtimestamp(int(state.started) + 3 * 86400, timezone.utc)
    end = datetime.fromtimestamp(int(state.started) + 3 * 86400 + 7200, timezone.utc)
    return [
        {
            "Code": state.settings.scheduled_event,
            "Description": "simulated maintenance",
            "EventId": "instance-event-0123456789abcdef0",
            "NotBefore": _event_time(start),
            "NotAfter": _event_time(end),
            "State": "active",
        }
    ]


def _event_time(moment: datetime) -> str:
    """Scheduled events' own form: ``7 Dec 2026 16:27:36 GMT``."""
    return f"{moment.day} {moment.strftime('%b %Y %H:%M:%S')} GMT"


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class SimulatorServer(ThreadingHTTPServer):
    """The HTTP server; ``state`` is shared by all handler threads."""

    daemon_threads = True
    # socketserver's default backlog of 5 drops SYNs when a herd connects at once, which a shim
    # rightly reads as "no IMDS here"; the real IMDS does not do that.
    request_queue_size = 1024

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that closed with a reset (imds-shim does) or went away is no error of ours."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def __init__(self, settings: Knobs) -> None:
        self.address_family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self.state = State(settings)
        super().__init__((settings.host, settings.port), Handler)


class Simulator:
    """Run the simulator in a background thread: ``with Simulator(Knobs()) as sim: sim.url``."""

    def __init__(self, knobs: Knobs | None = None) -> None:
        self.server = SimulatorServer(knobs or Knobs())
        # Polled often: stopping waits for the next poll, and every simulate run stops one.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        address, port = self.server.server_address[:2]
        host = address.decode() if isinstance(address, bytes) else str(address)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def state(self) -> State:
        return self.server.state

    @property
    def requests(self) -> list[Recorded]:
        with self.state.lock:
            return list(self.state.requests)

    def start(self) -> Simulator:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.state.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def simulate(settings: Mapping[str, Value], command: Sequence[str], environ: Mapping[str, str]) -> int:
    """``imds-shim simulate``: serve until interrupted, or run ``command`` against the simulator."""
    try:
        simulator = Simulator(Knobs.from_settings(settings))
    except OSError as error:
        raise UsageError(
            f"cannot listen on {settings['host']}:{settings['port']}: {error.strerror}"
        ) from None
    with simulator:
        log.info(f"IMDS simulator serving on {simulator.url} (fake credentials)")
        if not command:
            # Serving on its own, where it serves is its whole output (--port 0 picks a port).
            write_stdout(f"IMDS simulator serving on {simulator.url} (fake credentials); Ctrl-C stops it\n")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                return 0
        child_env = dict(environ, AWS_EC2_METADATA_SERVICE_ENDPOINT=simulator.url)
        # A bare imds-shim is this same imds-shim, as under the entrypoint: no PATH needed.
        argv = as_this_program(command)
        try:  # found and started as the entrypoint would: the same 127 and 126
            child = subprocess.Popen(argv, executable=locate(argv[0], child_env), env=child_env)
        except OSError as error:
            raise command_error(argv[0], error) from None
        try:
            status = child.wait()
        except KeyboardInterrupt:
            child.terminate()
            status = child.wait()
        return SIGNAL_BASE - status if status < 0 else status


def simulator_help() -> str:
    """``imds-shim simulate --help``, its options made from :data:`SIMULATOR_OPTIONS`."""
    lines = [
        "usage: imds-shim simulate [OPTIONS] [-- COMMAND [ARGS...]]",
        "",
        "Serve a local IMDS look-alike with fake, rotating credentials. With a command, run it with",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT pointing here and exit with its status:",
        "  imds-shim simulate -- imds-shim -v -- env",
        "  imds-shim simulate --imds-v2-required --token-hang -- imds-shim doctor",
        "",
        "A bare 'imds-shim' as the command is this same imds-shim, installed on PATH or not.",
        f"The exit status is the command's; {COMMAND_NOT_FOUND} and {COMMAND_NOT_EXECUTABLE} when it "
        "cannot be found or executed.",
        "",
        "options:",
        *option_lines(SIMULATOR_OPTIONS),
        "  -v, -vv        log every request as it arrives (--log-level info, debug)",
        "  -h, --help     show this help",
    ]
    return "\n".join(lines) + "\n"
