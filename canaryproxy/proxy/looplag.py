"""How late this process's event loop runs: the shadow's guard against judging an overloaded proxy.

A timer due every `interval` seconds measures how late it ran. On a loop with more ready work
than it can run, every callback waits in the queue, and a request timed on that loop carries
the queue's wait. A shadow copy is timed later than the request it copies (it starts when the
user's answer ends), when a growing queue is longer: on an overloaded proxy the pair would
show a healthy canary slower. So while the loop lags, no copy starts, and a pair whose time
overlapped a lag is not compared (both counted: `overloaded`); the copies would add as much
work again to a loop that is already behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LoopLag:
    """Measures the event loop's lateness; `lagging()` and `lagged_since()` answer the shadow."""

    __slots__ = ("limit", "interval", "_now", "_due", "_handle", "lagged_at", "late")

    def __init__(self, limit: float, now: Callable[[], float], interval: float = 0.05) -> None:
        self.limit = limit  # seconds of lateness beyond which the loop counts as lagging
        self.interval = interval
        self._now = now
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self.lagged_at = float("-inf")  # when a tick last ran later than `limit`
        self.late = 0.0  # how late the last tick ran

    def start(self) -> None:
        """Begin ticking on the running loop."""
        if self._handle is None:
            self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def lagging(self) -> bool:
        """Whether the loop is behind now: the last tick ran late, or the next one is overdue."""
        if self._handle is None:
            return False
        return self.late > self.limit or self._now() - self._due > self.limit

    def lagged_since(self, moment: float) -> bool:
        """Whether the loop lagged at any tick since `moment` (this clock)."""
        return self.lagged_at >= moment or self.lagging()

    def _schedule(self) -> None:
        self._due = self._now() + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._now()
        self.late = max(0.0, now - self._due)
        if self.late > self.limit:
            self.lagged_at = now
        self._schedule()
