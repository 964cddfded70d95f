"""A command for the tests to run under ``imds-shim --serve``: it talks to the endpoint it was given.

    python endpoint_client.py poll SECONDS [--wait-for-go]   # GET every 0.1 s; JSON lines on stdout
    python endpoint_client.py auth                            # the answers to right and wrong requests
    python endpoint_client.py children [--then-kill]          # this process's children (the companion)

``poll`` prints one JSON line per request: the wall time just before it was sent, the status, and
the key ID and expiration when there was one. With ``--wait-for-go`` it prints ``ready`` after the
first good answer and waits for a line on stdin before it goes on (the test stops IMDS meanwhile).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sys
import time
import urllib.parse

URI = urllib.parse.urlsplit(os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9/"))
TOKEN = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN", "")


def request(
    headers: list[tuple[str, str]], method: str = "GET", path: str | None = None, host: str | None = None
) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection(host or URI.hostname or "", URI.port, timeout=5)
    try:
        connection.putrequest(method, path or URI.path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        document = json.loads(body) if body.startswith(b"{") else {}
        return response.status, document
    finally:
        connection.close()


def poll(seconds: float, wait_for_go: bool) -> None:
    ends = time.time() + seconds
    waited = not wait_for_go
    while time.time() < ends:
        before = time.time()
        status, document = request([("Authorization", TOKEN)])
        line: dict[str, object] = {"before": before, "status": status}
        if status == 200:
            line.update(
                key=document["AccessKeyId"], expiration=document["Expiration"], fields=sorted(document)
            )
        print(json.dumps(line), flush=True)
        if not waited and status == 200:
            print("ready", flush=True)
            sys.stdin.readline()
            waited = True
            ends = time.time() + seconds
        time.sleep(0.1)


def auth() -> None:
    right = [("Authorization", TOKEN)]
    outcomes = {
        "right": request(right)[0],
        "none": request([])[0],
        "wrong": request([("Authorization", TOKEN[:-1] + ("0" if TOKEN[-1] != "0" else "1"))])[0],
        "prefixed": request([("Authorization", "Bearer " + TOKEN)])[0],
        "twice": request([*right, *right])[0],
        "other path": request(right, path=URI.path + "/x")[0],
        "query": request(right, path=URI.path + "?x=1")[0],
        "post": request(right, method="POST")[0],
        "length 0": request([*right, ("Content-Length", "0")])[0],
        "a body": request([*right, ("Content-Length", "5")])[0],
        "huge header": _status_or_closed(lambda: request([*right, ("X-Pad", "x" * 20000)])[0]),
    }
    try:
        socket.create_connection(("127.0.0.2", URI.port or 0), timeout=2).close()
        outcomes["127.0.0.2"] = "connected"
    except OSError:
        outcomes["127.0.0.2"] = "refused"
    print(json.dumps(outcomes))


def _status_or_closed(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except (ConnectionError, http.client.HTTPException):
        return "closed"


def children() -> None:
    """PIDs whose parent is this process, from /proc."""
    mine = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == mine:
                found.append(int(entry))
    print(json.dumps({"pid": mine, "children": found}), flush=True)
    if "--then-kill" in sys.argv:
        os.kill(mine, signal.SIGKILL)


if __name__ == "__main__":
    verb = sys.argv[1]
    if verb == "poll":
        poll(float(sys.argv[2]), "--wait-for-go" in sys.argv)
    elif verb == "auth":
        auth()
    else:
        children()
