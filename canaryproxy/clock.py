"""Time, passed in.

Everything that needs "now" takes a `Clock` (or a plain float from one), so a 30-minute rollout is
tested in milliseconds with `ManualClock`. Two kinds of time, never mixed:

* monotonic seconds for windows, holds and timeouts: they never jump when NTP steps the wall clock;
* wall seconds (Unix epoch) for display, logs and the durable state, which must survive a restart.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    __slots__ = ()

    # The functions themselves, not methods that call them: the data plane reads the clock several
    # times per request, and a bound builtin costs no Python frame.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)


class ManualClock:
    """A clock that only moves when told to. Monotonic and wall time advance together."""

    __slots__ = ("_mono", "_wall")

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self._mono = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._mono += seconds
        self._wall += seconds
