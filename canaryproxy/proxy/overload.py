"""Whether this process is overloaded: the shadow's guard, so that copies use spare capacity only.

Two signs, read by a timer due every `interval` seconds:

* **The event loop runs late.** On a loop with more ready work than it can run, every callback
  waits in the queue, and a request timed on that loop carries the wait. A shadow copy is timed
  later than the request it copies (it starts when the user's answer ends), when a growing queue
  is longer: on an overloaded proxy the pair would show a healthy canary slower.
* **The process uses nearly all of its core** (its CPU time over the last `cpu_span` seconds).
  A copy costs the proxy about what the request itself does; at a full core every copy takes
  time from the users' requests, which then wait for it, though the loop may never run late (a
  closed-loop load keeps the queue short and makes the clients wait instead).

While either holds no copy starts, and a pair whose time overlapped a lateness is not compared
(both counted as `overloaded`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Overload:
    """Answers `overloaded()` and `lagged_since()` for the shadow; see the module docstring."""

    __slots__ = ("max_lag", "max_cpu", "interval", "cpu_span", "_now", "_cpu", "_due", "_handle", "lagged_at",
                 "late", "cpu_share", "_since", "_cpu_since")

    def __init__(self, max_lag: float, max_cpu: float | None, now: Callable[[], float], *,
                 interval: float = 0.05, cpu_span: float = 0.5,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.max_lag = max_lag  # seconds of lateness beyond which the loop lags (0: not watched)
        self.max_cpu = max_cpu  # share of one core beyond which the process is busy (None: not watched)
        self.interval = interval
        self.cpu_span = cpu_span
        self._now = now
        self._cpu = cpu
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self.lagged_at = float("-inf")  # when a tick last ran later than `max_lag`
        self.late = 0.0  # how late the last tick ran
        self.cpu_share = 0.0  # of one core, over the last completed span
        self._since = 0.0
        self._cpu_since = 0.0

    def start(self) -> None:
        """Begin ticking on the running loop."""
        if self._handle is None:
            self._since, self._cpu_since = self._now(), self._cpu()
            self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def overloaded(self) -> bool:
        """Whether the process is overloaded now (the loop late, or the core nearly full)."""
        if self._handle is None:
            return False
        return self._lagging() or (self.max_cpu is not None and self.cpu_share > self.max_cpu)

    def lagged_since(self, moment: float) -> bool:
        """Whether the loop ran late at any tick since `moment` (this clock), or does now."""
        return self.lagged_at >= moment or self._lagging()

    def _lagging(self) -> bool:
        if not self.max_lag or self._handle is None:
            return False
        return self.late > self.max_lag or self._now() - self._due > self.max_lag

    def _schedule(self) -> None:
        self._due = self._now() + self.interval
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._now()
        self.late = max(0.0, now - self._due)
        if self.max_lag and self.late > self.max_lag:
            self.lagged_at = now
        if now - self._since >= self.cpu_span:
            cpu = self._cpu()
            self.cpu_share = (cpu - self._cpu_since) / (now - self._since)
            self._since, self._cpu_since = now, cpu
        self._schedule()
