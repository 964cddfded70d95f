"""``--serve``: a container-credentials endpoint on 127.0.0.1 that renews from IMDS for the command's life.

Every AWS SDK and the AWS CLI read ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (with
``AWS_CONTAINER_AUTHORIZATION_TOKEN``), the endpoint ECS and EKS Pod Identity serve, and ask it
again before what it gave them expires. So the command gets that URL and a token instead of
static keys, and needs no shell, config file or writable folder for it (``FROM scratch`` works).

The shim binds the socket before the exec, so the URL is known and the first request waits in the
listen queue, never refused; then a companion process (:mod:`shim.companion`) serves on it:

- requests are answered from memory, by one thread with a selector (:class:`EndpointServer`);
  IMDS is asked only by the main thread, in the background, once the set is due for renewal
  (:mod:`shim.renewal`), so no request waits for IMDS while the cached set is valid;
- while IMDS is down the cached set is served until it expires, and never after: a 503 instead;
- only ``GET`` of the one path, with exactly the token in ``Authorization`` (compared in constant
  time), gets credentials: 401 without it, 403 with another; requests are bounded in size (8 KiB),
  time (5 s of silence ends a connection) and number (64 connections at once);
- nothing is logged per request: a request line or header could carry anything, the token included.
"""

from __future__ import annotations

import hmac
import json
import os
import random
import selectors
import socket
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Callable

from shim.companion import Companion, Parent
from shim.config import Config
from shim.credentials import Credentials, Fetched, format_duration, format_time
from shim.errors import ShimError
from shim.fetch import fresh_credentials
from shim.log import log
from shim.renewal import renewal_due, retry_delay
from shim.variables import identity_without_keys

FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
AUTHORIZATION_TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
# The SDKs prefer these to the two above: an inherited one would send them elsewhere.
OUTRANKING_VARIABLES = ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
LISTEN_ADDRESS = "127.0.0.1"  # every SDK accepts 127.0.0.1 over plain http; some refuse other hosts
CREDENTIALS_PATH = "/credentials"
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


class CredentialStore:
    """The set the endpoint hands out, already rendered, and when it is due for renewal."""

    def __init__(
        self, credentials: Credentials, account_id: str | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.lock = threading.Lock()
        self.account_id, self.clock = account_id, clock
        self.replace(credentials)

    def replace(self, credentials: Credentials) -> None:
        document = {
            "AccessKeyId": credentials.access_key_id,
            "SecretAccessKey": credentials.secret_access_key,
            "Token": credentials.session_token,
            "Expiration": format_time(credentials.expiration),
        }
        account_id = credentials.account_id or self.account_id
        if account_id:
            document["AccountId"] = account_id
        expires_at = credentials.expiration.timestamp()
        with self.lock:
            self.credentials = credentials
            self.body = json.dumps(document).encode()
            self.expires_at = expires_at
            self.due_at = renewal_due(expires_at, self.clock())

    def answer(self) -> bytes | None:
        """The JSON to hand out, or None once the set has expired."""
        with self.lock:
            return self.body if self.clock() < self.expires_at else None


def keep_renewed(
    store: CredentialStore,
    renew: Callable[[], Credentials],
    parent: Parent,
    rng: Callable[[], float] = random.random,
) -> None:
    """Replace the store's set when it is due, for as long as the command lives.

    A failed renewal, or one that brings no newer set (IMDS has not rotated yet), is tried again
    after :func:`shim.renewal.retry_delay`; the cached set is served meanwhile.
    """
    failures = 0
    while True:
        now = store.clock()
        due = store.due_at if failures == 0 else now + retry_delay(failures, store.expires_at - now, rng)
        if not parent.wait_until(due):
            return
        try:
            fresh = renew()
        except ShimError as error:  # IMDS down, busy, garbled, the role gone: try again later
            failures += 1
            log.warning(f"--serve: could not renew the credentials: {error}; {_still_serving(store)}")
            continue
        except Exception as error:  # the endpoint outlives a bug in one renewal; only the type is safe
            failures += 1
            log.error(
                f"--serve: internal error {type(error).__name__} while renewing; {_still_serving(store)}"
            )
            continue
        if fresh.expiration > store.credentials.expiration:
            store.replace(fresh)
            log.info(
                f"--serve: renewed: {fresh.masked_key_id} expires at {format_time(fresh.expiration)}, "
                f"renewing again in {format_duration(store.due_at - store.clock())}"
            )
        failures = 0 if store.due_at > store.clock() else failures + 1


def _still_serving(store: CredentialStore) -> str:
    left = store.expires_at - store.clock()
    if left <= 0:
        return "no valid credentials to serve until IMDS answers (the endpoint answers 503)"
    return f"serving the current set until it expires in {format_duration(left)}"


class Connection:
    """One client's socket, what it has sent that is not answered yet, and when it last spoke."""

    __slots__ = ("pending", "sock", "spoke_at")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock, self.pending, self.spoke_at = sock, b"", now


class EndpointServer:
    """The endpoint: one thread and a selector for every connection, keep-alive, HTTP/1.1.

    One thread, not one per connection: the answers come from memory, and threads handing the
    interpreter lock to each other cost more than the answers (a p99 of 11 ms against 8 busy
    clients on 2 cores with http.server's threads). A request is a request line and headers only:
    anything larger than :data:`MAX_REQUEST_BYTES`, with a body, or silent for
    :data:`REQUEST_TIMEOUT` ends its connection.
    """

    def __init__(self, listener: socket.socket, store: CredentialStore, token: str) -> None:
        self.listener, self.store, self.token = listener, store, token.encode()
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.connections: dict[int, Connection] = {}

    def serve_forever(self) -> None:
        while True:
            now = time.monotonic()
            for key, _ in self.selector.select(timeout=REQUEST_TIMEOUT / 4):
                if key.fileobj is self.listener:
                    self._accept(now)
                else:
                    connection = self.connections[key.fd]
                    try:
                        self._receive(connection, now)
                    except Exception:  # a bug met by one request ends its connection, not the endpoint
                        if connection.sock.fileno() in self.connections:
                            self._close(connection)
            for connection in [c for c in self.connections.values() if now - c.spoke_at > REQUEST_TIMEOUT]:
                self._close(connection)

    def _accept(self, now: float) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:  # the client gave up already, or no descriptors left for now
            return
        if len(self.connections) >= MAX_CONNECTIONS:
            sock.close()  # full: the client retries, as the SDKs do
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections[sock.fileno()] = Connection(sock, now)
        self.selector.register(sock, selectors.EVENT_READ)

    def _receive(self, connection: Connection, now: float) -> None:
        try:
            data = connection.sock.recv(MAX_REQUEST_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        connection.spoke_at = now
        connection.pending += data
        while b"\r\n\r\n" in connection.pending:
            head, _, connection.pending = connection.pending.partition(b"\r\n\r\n")
            if len(head) > MAX_REQUEST_BYTES or not self._respond(connection, head):
                self._close(connection)
                return
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
            connection_words = b",".join(value.lower() for name, value in named if name == b"connection")
            keep = words[2] == b"HTTP/1.1" and b"close" not in connection_words
        closing = "" if keep else "Connection: close\r\n"
        response = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{closing}\r\n"
        ).encode() + body
        try:
            sent = connection.sock.send(response)
        except OSError:
            return False
        return keep and sent == len(response)  # a client that does not read its answers is dropped

    def _close(self, connection: Connection) -> None:
        self.selector.unregister(connection.sock)
        del self.connections[connection.sock.fileno()]
        connection.sock.close()

    def answer(self, method: bytes, path: bytes, authorization: list[bytes]) -> tuple[int, bytes]:
        if path != CREDENTIALS_PATH.encode():
            return 404, _error("NotFound", f"the credentials are at {CREDENTIALS_PATH}")
        if method != b"GET":
            return 405, _error("MethodNotAllowed", "only GET")
        if not authorization:
            return 401, _error("Unauthorized", f"send the value of {AUTHORIZATION_TOKEN} as Authorization")
        if len(authorization) > 1 or not hmac.compare_digest(authorization[0], self.token):
            return 403, _error("Forbidden", "wrong authorization token")
        body = self.store.answer()
        if body is None:
            return 503, _error("CredentialsExpired", "IMDS has not renewed the credentials in time")
        return 200, body


def _error(code: str, message: str) -> bytes:
    return json.dumps({"Code": code, "Message": message}).encode()


def serving_environment(
    config: Config, environ: Mapping[str, str], fetched: Fetched
) -> tuple[dict[str, str], Companion]:
    """The command's environment (the endpoint's URL and token, region, account, no static keys)
    and the companion that serves it; the socket is already listening."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((LISTEN_ADDRESS, 0))
        listener.listen(LISTEN_BACKLOG)
    except OSError as error:
        listener.close()
        raise ShimError(f"--serve: cannot listen on {LISTEN_ADDRESS}: {error.strerror}") from None
    port = listener.getsockname()[1]
    token = os.urandom(TOKEN_BYTES).hex()
    url = f"http://{LISTEN_ADDRESS}:{port}{CREDENTIALS_PATH}"
    environment = identity_without_keys(environ, fetched)
    for name in OUTRANKING_VARIABLES:
        environment.pop(name, None)
    environment[FULL_URI] = url
    environment[AUTHORIZATION_TOKEN] = token
    store = CredentialStore(fetched.credentials, fetched.account_id)
    due_in = format_duration(store.due_at - store.clock())
    log.info(
        f"--serve: credentials at {url}, renewed from IMDS in {due_in} "
        f"({format_time(datetime.fromtimestamp(store.due_at, timezone.utc))})"
    )

    def serve(parent: Parent) -> None:
        server = EndpointServer(listener, store, token)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        keep_renewed(store, lambda: fresh_credentials(config), parent)

    return environment, serve
