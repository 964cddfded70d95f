"""The overall time budget that every IMDS request timeout and every retry sleep is measured against."""

from __future__ import annotations

import time
from typing import Callable


class Deadline:
    """An overall time budget that every request timeout and every sleep is measured against."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.seconds = clock, seconds
        self.started = clock()
        self.ends = self.started + seconds

    def remaining(self) -> float:
        return max(0.0, self.ends - self.clock())

    def elapsed(self) -> float:
        return self.clock() - self.started
