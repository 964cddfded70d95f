"""The command the tests ask imds-shim to exec: reports what it got as JSON on stdout.

Run as ``python probe.py [ARGS...]``. Signal dispositions are read with ``cat /proc/self/status``
instead, since CPython changes SIGPIPE's disposition before any of this code runs.
"""

import json
import os
import sys

with open("/proc/self/cmdline", "rb") as cmdline:
    raw_argv = [part.decode("utf-8", "surrogateescape") for part in cmdline.read().split(b"\0")[:-1]]
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
json.dump(
    {
        "env": dict(os.environ),
        "argv": raw_argv,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "fds": fds,
        "stdin": sys.stdin.read() if "--read-stdin" in sys.argv else None,
    },
    sys.stdout,
)
