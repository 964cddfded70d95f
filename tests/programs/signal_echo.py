"""A command that says, one line each, every signal it gets, as it gets it; first "ready PID PGRP
FOREGROUND" (its process group, and the terminal's foreground group, -1 off a terminal).

Race-free: the signals named on the command line are blocked and taken with ``sigtimedwait``, so
none can arrive unseen. A Python handler around a blocking ``read`` is not: a signal that lands
after CPython's last check for pending signals and before the ``read`` enters the kernel trips its
flag and leaves the read asleep, and the handler runs only when another signal comes (what the
suite's earlier command did: tests/signal_stress.py counts it). Ends when stdin closes.
"""

import os
import select
import signal
import sys

wanted = {int(name) if name.isdigit() else getattr(signal, name) for name in sys.argv[1:]}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
try:
    foreground = os.tcgetpgrp(0)
except OSError:
    foreground = -1
os.write(1, f"ready {os.getpid()} {os.getpgrp()} {foreground}\n".encode())
while True:
    # Looked at between waits: stdin's end is a readable descriptor with nothing to read.
    if select.select([0], [], [], 0)[0] and not os.read(0, 4096):
        break
    arrived = signal.sigtimedwait(wanted, 0.2) if wanted else None
    if arrived is not None:
        try:
            word = signal.Signals(arrived.si_signo).name
        except ValueError:  # a real-time signal without a name of its own
            word = str(arrived.si_signo)
        os.write(1, word.encode() + b"\n")
