"""The shadow's overload guard (proxy/overload.py), on an injected clock and CPU counter: when it
says the process is overloaded, and for which pairs it says the loop ran late."""

from __future__ import annotations

import pytest

from canaryproxy.proxy.overload import Overload


class Clocks:
    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 10.0


@pytest.fixture
async def clocks():
    yield Clocks()


async def test_a_late_tick_marks_the_loop_lagging_and_dates_it(clocks):
    guard = Overload(0.01, None, lambda: clocks.wall, cpu=lambda: clocks.cpu)
    guard.start()
    try:
        assert not guard.overloaded()
        clocks.wall += 0.05 + 0.005  # on time, within the limit
        guard._tick()
        assert not guard.overloaded() and not guard.lagged_since(100.0)
        clocks.wall += 0.05 + 0.03  # 30 ms late
        guard._tick()
        assert guard.late == pytest.approx(0.03) and guard.overloaded()
        lagged_at = clocks.wall
        assert guard.lagged_since(100.0)
        clocks.wall += 0.05
        guard._tick()
        assert not guard.overloaded()  # the loop keeps up again
        assert guard.lagged_since(100.0)  # but a pair that began before the lag overlapped it
        assert not guard.lagged_since(lagged_at + 0.01)  # and one that began after it did not
    finally:
        guard.stop()


async def test_an_overdue_tick_counts_before_it_runs(clocks):
    guard = Overload(0.01, None, lambda: clocks.wall, cpu=lambda: clocks.cpu)
    guard.start()
    try:
        clocks.wall += 0.05 + 0.02  # the tick is due and has not run: the loop is busy right now
        assert guard.overloaded()
    finally:
        guard.stop()


async def test_the_cpu_share_over_a_span_pauses_copies_and_the_next_idle_span_resumes(clocks):
    guard = Overload(0, 0.9, lambda: clocks.wall, cpu=lambda: clocks.cpu, cpu_span=0.5)
    guard.start()
    try:
        for _ in range(8):  # 0.5 s at 95% of the core (steps exact in binary)
            clocks.wall += 0.0625
            clocks.cpu += 0.0625 * 0.95
            guard._tick()
        assert guard.cpu_share == pytest.approx(0.95) and guard.overloaded()
        assert not guard.lagged_since(0.0)  # lateness is not watched (max_lag 0): no pair is dropped for it
        for _ in range(8):  # the next 0.5 s at 50%
            clocks.wall += 0.0625
            clocks.cpu += 0.0625 * 0.5
            guard._tick()
        assert guard.cpu_share == pytest.approx(0.5) and not guard.overloaded()
    finally:
        guard.stop()


async def test_a_stopped_guard_never_says_overloaded(clocks):
    guard = Overload(0.01, 0.5, lambda: clocks.wall, cpu=lambda: clocks.cpu)
    clocks.wall += 10
    assert not guard.overloaded()
