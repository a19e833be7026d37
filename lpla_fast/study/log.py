"""Stage lines on stderr with the elapsed time, and the seconds each stage took."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Dict


class Stages:
    """`say` prints a stage line (when progress is on); `timed(key, message)` says the message and
    adds the block's seconds to `seconds[key]`."""

    def __init__(self, progress: bool, command: str = "experiment"):
        self.progress = progress
        self.command = command
        self.start = time.perf_counter()
        self.seconds: Dict[str, float] = {}

    def say(self, message: str) -> None:
        if self.progress:
            elapsed = time.perf_counter() - self.start
            print(f"[lpla {self.command} {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {message}",
                  file=sys.stderr, flush=True)

    @contextmanager
    def timed(self, key: str, message: str):
        self.say(message)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = round(self.seconds.get(key, 0.0) + time.perf_counter() - t0, 3)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
