"""Health of a processor loop: restarts counted in a sliding window."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RestartWindow:
    """Counts a loop's restarts within a sliding window: more than ``max_restarts`` within
    ``window_s`` is a crash loop, which a health check should report."""

    def __init__(self, max_restarts: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.clock = clock
        self.total = 0
        self._times: deque[float] = deque()

    def record(self) -> None:
        self.total += 1
        self._times.append(self.clock())
        self._expire()

    def recent(self) -> int:
        self._expire()
        return len(self._times)

    def crash_looping(self) -> bool:
        return self.recent() > self.max_restarts

    def _expire(self) -> None:
        now = self.clock()
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
