"""One scripted IMDS for the byte-level tables (tests/test_hostile_imds.py, tests/test_bad_input.py).

A loopback HTTP server that answers each path from a script of :class:`Reply` (status, headers,
body; a body or headers dripped a byte at a time; a huge body never held in memory), healthy
(:func:`healthy`) where the script says nothing, and records the path and Cookie of every request.
Tests start it with the ``scripted_imds`` fixture (conftest.py). The simulator is for behaviour;
this is for bytes the simulator would never send.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from shim.imds.protocol import IDENTITY_DOCUMENT_PATH, REGION_PATH, ROLE_PATH, TOKEN_PATH

ROLE_NAME = "hostile-role"
CREDENTIALS = ROLE_PATH + ROLE_NAME
IMDS_TOKEN = "hostile-imds-token-value"
SECRET = "hostile-secret-access-key-value"
SESSION_TOKEN = "hostile-session-token-value"
GOOD_CREDENTIALS = {
    "Code": "Success",
    "AccessKeyId": "ASIAHOSTILEEXAMPLE",
    "SecretAccessKey": SECRET,
    "Token": SESSION_TOKEN,
    "Expiration": "2099-01-01T00:00:00Z",
}


class Reply(NamedTuple):
    """One scripted answer. ``drip``: seconds between bytes, for a body (or headers) sent slowly;
    ``repeat``: the body is sent that many times over (a huge answer, never held in memory)."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str | bytes], ...] = ()
    drip: float | None = None
    drip_headers: bool = False
    repeat: int = 1


def as_body(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def healthy() -> dict[str, Reply]:
    return {
        TOKEN_PATH: Reply(body=IMDS_TOKEN.encode()),
        ROLE_PATH: Reply(body=ROLE_NAME.encode()),
        CREDENTIALS: Reply(body=as_body(GOOD_CREDENTIALS)),
        IDENTITY_DOCUMENT_PATH: Reply(body=as_body({"region": "eu-west-1", "accountId": "123456789012"})),
        REGION_PATH: Reply(body=b"eu-west-1"),
    }


class ScriptedImds(ThreadingHTTPServer):
    """Answers IMDS paths from a script; records every request's path."""

    daemon_threads = True

    def __init__(self, script: dict[str, Reply]) -> None:
        self.script = script
        self.paths: list[str] = []
        self.cookies: list[str | None] = []  # the Cookie header of every request
        self.closing = threading.Event()
        super().__init__(("127.0.0.1", 0), ScriptedHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that closed with a reset (imds-shim does) or went away is no error of ours."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedImds
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_PUT(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def _answer(self) -> None:
        self.server.paths.append(self.path)
        self.server.cookies.append(self.headers.get("Cookie"))
        reply = self.server.script.get(self.path, Reply(404, b"Not Found\n"))
        head = f"HTTP/1.1 {reply.status} X\r\n".encode()
        for name, value in reply.headers:
            head += name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()) + b"\r\n"
        if reply.drip is None:
            head += f"Content-Length: {len(reply.body) * reply.repeat}\r\n\r\n".encode()
            try:
                self.wfile.write(head)
                for _ in range(reply.repeat):
                    self.wfile.write(reply.body)
            except OSError:  # the shim hung up: what it should do with a huge answer
                self.close_connection = True
            return
        # Declares far more than it will ever send, then sends it a byte at a time.
        if reply.drip_headers:
            self._drip(head + b"X-Slow: " + b"a" * 100000, reply.drip)
        else:
            self.wfile.write(head + b"Content-Length: 100000\r\n\r\n")
            self._drip(b"{" + b" " * 100000, reply.drip)

    def _drip(self, data: bytes, every: float) -> None:
        for index in range(len(data)):
            if self.server.closing.wait(every):
                return
            try:
                self.wfile.write(data[index : index + 1])
                self.wfile.flush()
            except OSError:  # the shim hung up: what it should do
                return
