"""``--serve``: a container-credentials endpoint on 127.0.0.1 that renews from IMDS for the command's life.

Every AWS SDK and the AWS CLI read ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (with
``AWS_CONTAINER_AUTHORIZATION_TOKEN``), the endpoint ECS and EKS Pod Identity serve, and ask it
again before what it gave them expires. So the command gets that URL and a token instead of
static keys, and needs no shell, config file or writable folder for it (``FROM scratch`` works).

The shim binds the socket before the exec, so the URL is known and the first request waits in the
listen queue, never refused; then a companion process (:mod:`shim.companion`) serves on it:

- requests are answered from memory, by handler threads; IMDS is asked only by the main thread,
  in the background, once the set is due for renewal (:mod:`shim.renewal`), so no request waits
  for IMDS while the cached set is valid;
- while IMDS is down the cached set is served until it expires, and never after: a 503 instead;
- only ``GET`` of the one path, with exactly the token in ``Authorization`` (compared in constant
  time), gets credentials: 401 without it, 403 with another; requests are bounded in size (8 KiB),
  time (a 5 s socket timeout) and number (16 connections at once);
- nothing is logged per request: a request line or header could carry anything, the token included.
"""

from __future__ import annotations

import hmac
import json
import os
import random
import socket
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from http.client import LineTooLong
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from shim.companion import Companion, Parent
from shim.config import Config
from shim.credentials import Credentials, Fetched, format_duration, format_time
from shim.errors import CredentialsUnavailable, ShimError
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
MAX_CONNECTIONS = 16
LISTEN_BACKLOG = 128


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
        except CredentialsUnavailable as error:
            failures += 1
            log.warning(f"--serve: could not renew the credentials: {error}; {_still_serving(store)}")
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


class _CappedReader:
    """The request's input, of which a request line and headers may take :data:`MAX_REQUEST_BYTES`."""

    def __init__(self, raw: object) -> None:
        self.raw = raw
        self.left = MAX_REQUEST_BYTES

    def readline(self, limit: int = -1) -> bytes:
        wanted = self.left + 1 if limit < 0 else min(limit, self.left + 1)
        line: bytes = self.raw.readline(wanted)  # type: ignore[attr-defined]
        self.left -= len(line)
        if self.left < 0:
            raise LineTooLong("request larger than the endpoint accepts")
        return line


class EndpointHandler(BaseHTTPRequestHandler):
    """Answers one connection; keep-alive, as the SDKs' HTTP clients expect."""

    protocol_version = "HTTP/1.1"
    server_version = "imds-shim"
    sys_version = ""
    timeout = REQUEST_TIMEOUT
    server: EndpointServer

    def setup(self) -> None:
        super().setup()
        self.capped = _CappedReader(self.rfile)
        self.rfile = self.capped  # type: ignore[assignment]  # only readline is used

    def handle_one_request(self) -> None:
        self.capped.left = MAX_REQUEST_BYTES
        super().handle_one_request()

    def log_message(self, format: str, *args: object) -> None:
        """Silent: a request line may carry anything, the token included."""

    def do_GET(self) -> None:
        status, body = self.server.answer(self.path, self.headers.get_all("Authorization") or [])
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class EndpointServer(ThreadingHTTPServer):
    """Serves on a socket bound before the exec; at most :data:`MAX_CONNECTIONS` at once."""

    daemon_threads = True

    def __init__(self, listener: socket.socket, store: CredentialStore, token: str) -> None:
        super().__init__(listener.getsockname(), EndpointHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.store, self.token = store, token.encode()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: the client retries, as SDKs do
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        """Silent: a broken or oversized request only ends its own connection."""

    def answer(self, path: str, authorization: list[str]) -> tuple[int, bytes]:
        if path != CREDENTIALS_PATH:
            return 404, _error("NotFound", f"the credentials are at {CREDENTIALS_PATH}")
        if not authorization:
            return 401, _error("Unauthorized", f"send the value of {AUTHORIZATION_TOKEN} as Authorization")
        given = authorization[0].encode("latin-1", "replace")
        if len(authorization) > 1 or not hmac.compare_digest(given, self.token):
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
        threading.Thread(target=server.serve_forever, args=(0.5,), daemon=True).start()
        keep_renewed(store, lambda: fresh_credentials(config), parent)

    return environment, serve
