"""The least a fetch can cost with a given HTTP client: the shim's four IMDS requests and an exec.

    python bench/client_floor.py requests|urllib3|http.client COMMAND [ARG...]

For comparison only, like curl_recipe.sh: no retries, no deadline, no checks, no region or account
variables, nothing of imds-shim's own, just the client's imports and four round trips. bench/run.py
times each client beside ``imds-shim -- true``, so that every run shows how much of a fetch is the
HTTP client's and whether a bar set against curl + jq is within that client's reach. requests is
imported the shim's lean way (shim.imds.lean_requests), urllib3 with the same importlib.metadata
stand-in, so that each row is the cheapest that client gets.
"""

from __future__ import annotations

import json
import os
import sys
import types
from typing import Callable

from shim.imds.protocol import IDENTITY_DOCUMENT_PATH, ROLE_PATH, TOKEN_HEADER, TOKEN_PATH, TOKEN_TTL_HEADER

ENDPOINT = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
Send = Callable[[str, str, dict[str, str]], bytes]


def answered(method: str, path: str, status: int, body: bytes) -> bytes:
    """The body of a 200; anything else ends the run, also under -OO (which drops asserts)."""
    if status != 200:
        sys.exit(f"{method} {path} answered {status}")
    return body


def with_requests() -> Send:
    from shim.imds.lean_requests import requests

    session = requests.Session()
    session.trust_env = False

    def send(method: str, path: str, headers: dict[str, str]) -> bytes:
        response = session.request(
            method, ENDPOINT + path, headers=headers, timeout=(1, 1), allow_redirects=False
        )
        return answered(method, path, response.status_code, response.content)

    return send


def with_urllib3() -> Send:
    # urllib3 imports importlib.metadata only to check h2's version: the stand-in the shim uses too.
    stand_in = types.ModuleType("importlib.metadata")
    stand_in.version = lambda name: "0"  # type: ignore[attr-defined]
    sys.modules["importlib.metadata"] = stand_in
    import urllib3

    del sys.modules["importlib.metadata"]
    pool = urllib3.connection_from_url(ENDPOINT, retries=False, timeout=urllib3.Timeout(1, 1))

    def send(method: str, path: str, headers: dict[str, str]) -> bytes:
        response = pool.urlopen(method, path, headers=headers, redirect=False)
        return answered(method, path, response.status, response.data)

    return send


def with_http_client() -> Send:
    import http.client
    import urllib.parse

    address = urllib.parse.urlsplit(ENDPOINT)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=1)

    def send(method: str, path: str, headers: dict[str, str]) -> bytes:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return answered(method, path, response.status, response.read())

    return send


CLIENTS = {"requests": with_requests, "urllib3": with_urllib3, "http.client": with_http_client}

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in CLIENTS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(CLIENTS)} COMMAND [ARG...]")
    send = CLIENTS[sys.argv[1]]()
    token = {TOKEN_HEADER: send("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: "60"}).decode()}
    role = send("GET", ROLE_PATH, token).decode().strip()
    credentials = json.loads(send("GET", ROLE_PATH + role, token))
    send("GET", IDENTITY_DOCUMENT_PATH, token)
    os.execvpe(
        sys.argv[2],
        sys.argv[2:],
        dict(
            os.environ,
            AWS_ACCESS_KEY_ID=credentials["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=credentials["SecretAccessKey"],
            AWS_SESSION_TOKEN=credentials["Token"],
        ),
    )
