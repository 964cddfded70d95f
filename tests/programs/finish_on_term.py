"""An app that finishes its work when told: "ready" first; on SIGTERM, "got SIGTERM AT" (AT:
time.monotonic() when it arrived, comparable with the test's own clock) and "finished", then
exit 7, its own status. Race-free: SIGTERM is blocked and taken with sigwait."""

import os
import signal
import time

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
os.write(1, b"ready\n")
signal.sigwait({signal.SIGTERM})
os.write(1, f"got SIGTERM {time.monotonic():.6f}\nfinished\n".encode())
raise SystemExit(7)
