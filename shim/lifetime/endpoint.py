"""``--serve``: a container-credentials endpoint on 127.0.0.1, served by the supervisor itself.

Every AWS SDK and the AWS CLI read ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (with
``AWS_CONTAINER_AUTHORIZATION_TOKEN``), the endpoint ECS and EKS Pod Identity serve, and ask it
again before what it gave them expires. So the command gets that URL and a token instead of
static keys, and needs no shell, config file or writable folder for it (``FROM scratch`` works).

The shim binds the socket before the command starts, so the URL is known and the first request
waits in the listen queue, never refused; then the supervisor's loop serves it
(:mod:`shim.lifetime.supervisor`), from memory, while renewals run in a child of their own
(:mod:`shim.lifetime.renewal`): no request waits for IMDS while the cached set is valid.

- while IMDS is down the cached set is served until it expires, and never after: a 503 instead;
- with ``--optional``, when IMDS gave nothing at the start, the command starts at once with the
  endpoint, which answers 503 until the renewals (backing off to every 30 s) bring a first set;
- only ``GET`` of the one path, with exactly the token in ``Authorization`` (compared in constant
  time), gets credentials: 401 without it, 403 with another, and the connection is closed after
  any 4xx; requests are bounded in size (8 KiB) and time (a whole request within 5 s of
  connecting or of the last answer, however slowly it trickles);
- at most 64 connections at once; when full, a newcomer takes the place of the oldest connection
  that has not yet shown the token, so clients without it cannot hold every slot;
- nothing is logged per request: a request line or header could carry anything, the token included.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timezone

from shim.command_line.config import Config
from shim.credentials import Fetched, format_duration, format_time
from shim.errors import ShimError
from shim.lifetime.renewal import Renewer
from shim.lifetime.standing import Standing
from shim.lifetime.store import CredentialStore
from shim.lifetime.supervisor import Service, Supervisor
from shim.log import log
from shim.variables import FULL_URI, SERVE_ADDRESS, SERVE_PATH, identity_without_keys

TYPE_CHECKING = False  # no typing import at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from hmac import compare_digest
else:
    # hmac's own compare_digest, without hmac: importing it loads hashlib and OpenSSL's libcrypto
    # (about 4 ms at every supervised start) for one constant-time comparison.
    from _operator import _compare_digest as compare_digest

AUTHORIZATION_TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
# The SDKs prefer these to the two above: an inherited one would send them elsewhere.
OUTRANKING_VARIABLES = ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
TOKEN_BYTES = 32  # 256 random bits, new at every start
MAX_REQUEST_BYTES = 8 * 1024  # request line and headers; an SDK's request is a few hundred bytes
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 64
LISTEN_BACKLOG = 128
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class Connection:
    """One client's socket, what it has sent that is not answered yet, and its time limit."""

    __slots__ = ("deadline", "pending", "shown_token", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock, self.pending, self.deadline = sock, b"", now + REQUEST_TIMEOUT
        self.shown_token = False


class EndpointServer(Service):
    """The endpoint: keep-alive HTTP/1.1 on the supervisor's loop, answered from memory.

    No thread: the answers come from memory, and one loop answers faster than threads handing
    the interpreter lock to each other (a p99 of 11 ms against 8 busy clients on 2 cores with
    http.server's threads). A request is a request line and headers only: anything larger than
    :data:`MAX_REQUEST_BYTES`, with a body, or not whole within :data:`REQUEST_TIMEOUT` of the
    connection's start or its last answer ends its connection.
    """

    def __init__(
        self,
        listener: socket.socket,
        store: CredentialStore,
        token: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener, self.store, self.token, self.clock = listener, store, token.encode(), clock
        self.listener.setblocking(False)
        self.connections: dict[int, Connection] = {}
        self.next_sweep = 0.0  # no connection's deadline comes before this
        self.supervisor: Supervisor | None = None

    def attach(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        supervisor.watch(self.listener.fileno(), self._accept)

    def tick(self) -> float | None:
        # Deadlines only move later, so the connections are looked through only once the earliest
        # one known is due: every wakeup of the loop calls this, not only the endpoint's.
        if not self.connections:
            return None
        now = self.clock()
        if now < self.next_sweep:
            return self.next_sweep - now
        for connection in [c for c in self.connections.values() if c.deadline <= now]:
            self._close(connection)
        if not self.connections:
            return None
        self.next_sweep = min(c.deadline for c in self.connections.values())
        return self.next_sweep - now

    def close(self) -> None:
        """The command has ended: nothing answers from now on."""
        for connection in list(self.connections.values()):
            self._close(connection)
        self.listener.close()

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:  # the client gave up already, or no descriptors left for now
            return
        if len(self.connections) >= MAX_CONNECTIONS:
            # Full: the oldest connection that has not shown the token makes room; if every one
            # has, the newcomer is refused and retries, as the SDKs do.
            waiting = [c for c in self.connections.values() if not c.shown_token]
            if not waiting:
                sock.close()
                return
            self._close(min(waiting, key=lambda c: c.deadline))
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(sock, self.clock())
        self.next_sweep = (
            min(self.next_sweep, connection.deadline) if self.connections else connection.deadline
        )
        self.connections[sock.fileno()] = connection
        assert self.supervisor is not None
        self.supervisor.watch(sock.fileno(), lambda: self._receive(connection))

    def _receive(self, connection: Connection) -> None:
        try:
            self._read(connection)
        except Exception:  # a bug met by one request ends its connection, not the endpoint
            if connection.sock.fileno() in self.connections:
                self._close(connection)

    def _read(self, connection: Connection) -> None:
        try:
            data = connection.sock.recv(MAX_REQUEST_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        connection.pending += data
        while b"\r\n\r\n" in connection.pending:
            head, _, connection.pending = connection.pending.partition(b"\r\n\r\n")
            if len(head) > MAX_REQUEST_BYTES or not self._respond(connection, head):
                self._close(connection)
                return
            connection.deadline = self.clock() + REQUEST_TIMEOUT
        if len(connection.pending) > MAX_REQUEST_BYTES:
            self._close(connection)

    def _respond(self, connection: Connection, head: bytes) -> bool:
        """Answer one request; False when the connection is to be closed."""
        lines = head.split(b"\r\n")
        words = lines[0].split(b" ")
        headers = [line.partition(b":") for line in lines[1:]]
        named = [(name.strip().lower(), value.strip()) for name, _, value in headers]
        if len(words) != 3 or not words[2].startswith(b"HTTP/1.") or any(not sep for _, sep, _ in headers):
            status, body, keep = 400, _error("BadRequest", "not an HTTP/1.x request"), False
        elif any(
            name == b"transfer-encoding" or (name == b"content-length" and value != b"0")
            for name, value in named
        ):
            status, body, keep = 400, _error("BadRequest", "a request with a body"), False
        else:
            authorization = [value for name, value in named if name == b"authorization"]
            status, body = self.answer(words[0], words[1], authorization)
            connection.shown_token = connection.shown_token or status in (200, 503)
            connection_words = b",".join(value.lower() for name, value in named if name == b"connection")
            # After a 4xx the client has nothing more to ask: its place goes to the next.
            keep = (
                words[2] == b"HTTP/1.1"
                and b"close" not in connection_words
                and (status < 400 or status == 503)
            )
        closing = "" if keep else "Connection: close\r\n"
        response = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{closing}\r\n"
        ).encode() + body
        try:
            sent = connection.sock.send(response, socket.MSG_NOSIGNAL)  # SIGPIPE is the command's
        except OSError:
            return False
        return keep and sent == len(response)  # a client that does not read its answers is dropped

    def _close(self, connection: Connection) -> None:
        assert self.supervisor is not None
        self.supervisor.unwatch(connection.sock.fileno())
        del self.connections[connection.sock.fileno()]
        connection.sock.close()

    def answer(self, method: bytes, path: bytes, authorization: list[bytes]) -> tuple[int, bytes]:
        if path != SERVE_PATH.encode():
            return 404, _error("NotFound", f"the credentials are at {SERVE_PATH}")
        if method != b"GET":
            return 405, _error("MethodNotAllowed", "only GET")
        if not authorization:
            return 401, _error("Unauthorized", f"send the value of {AUTHORIZATION_TOKEN} as Authorization")
        if len(authorization) > 1 or not compare_digest(authorization[0], self.token):
            return 403, _error("Forbidden", "wrong authorization token")
        body = self.store.answer()
        if body is None and self.store.credentials is None:
            return 503, _error(
                "CredentialsUnavailable", "no credentials yet: IMDS has not answered since the start"
            )
        if body is None:
            return 503, _error("CredentialsExpired", "IMDS has not renewed the credentials in time")
        return 200, body


def _error(code: str, message: str) -> bytes:
    return json.dumps({"Code": code, "Message": message}).encode()


def listening_socket() -> socket.socket:
    """A socket listening on 127.0.0.1 at a port the kernel chose."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((SERVE_ADDRESS, 0))
        listener.listen(LISTEN_BACKLOG)
    except OSError as error:
        listener.close()
        raise ShimError(f"--serve: cannot listen on {SERVE_ADDRESS}: {error.strerror}") from None
    return listener


def serving_environment(
    config: Config, environ: Mapping[str, str], fetched: Fetched | None, standing: Standing
) -> tuple[dict[str, str], list[Service]]:
    """The command's environment (the endpoint's URL and token, region, account, no static keys)
    and the services that serve and renew it; the socket is already listening. ``fetched`` None:
    IMDS gave nothing at the start (``--optional``), and the renewals bring the first set."""
    listener = listening_socket()
    port = listener.getsockname()[1]
    token = os.urandom(TOKEN_BYTES).hex()
    url = f"http://{SERVE_ADDRESS}:{port}{SERVE_PATH}"
    environment = identity_without_keys(environ, fetched)
    for name in OUTRANKING_VARIABLES:
        environment.pop(name, None)
    environment[FULL_URI] = url
    environment[AUTHORIZATION_TOKEN] = token
    if fetched is None:
        store = CredentialStore(None, None)
        log.info(f"--serve: the endpoint at {url} answers 503 until IMDS gives a first set", url=url)
    else:
        store = CredentialStore(fetched.credentials, fetched.account_id)
        due_in = format_duration(store.due_at - store.clock())
        renew_at = format_time(datetime.fromtimestamp(store.due_at, timezone.utc))
        log.info(
            f"--serve: credentials at {url}, renewed from IMDS in {due_in} ({renew_at})",
            url=url,
            role=fetched.role,
            key_id=fetched.credentials.masked_key_id,
            expires=format_time(fetched.credentials.expiration),
            renew_at=renew_at,
        )
    return environment, [EndpointServer(listener, store, token), Renewer(store, standing, config)]
