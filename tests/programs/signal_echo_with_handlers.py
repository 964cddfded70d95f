"""The suite's earlier signal-echoing command, kept to show its race (tests/signal_stress.py):
Python handlers around a blocking read of stdin. A signal that lands between CPython's check for
pending signals and the read's entry into the kernel is not seen until another signal arrives."""

import os
import signal
import sys


def said(number: int, frame: object) -> None:
    try:
        word = signal.Signals(number).name
    except ValueError:
        word = str(number)
    os.write(1, word.encode() + b"\n")


for name in sys.argv[1:]:
    signal.signal(int(name) if name.isdigit() else getattr(signal, name), said)
os.write(1, f"ready {os.getpid()}\n".encode())
sys.stdin.read()
