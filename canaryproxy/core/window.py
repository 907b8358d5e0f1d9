"""Rolling per-role metric windows: a ring of one-second tallies, merged over any span on demand.

Each role has a ring of `ceil(span_seconds / bucket_seconds) + 1` buckets. A bucket is the tally
(core/tally.py) of the requests that finished in one `bucket_seconds` interval. A bucket remembers
its absolute index `int(t // bucket_seconds)` and is reset lazily when its slot is reused, so
recording is O(1) and an idle second costs nothing.

Time is wall-clock seconds (`Outcome.finished_at`): the same second on every host, so buckets
recorded by several processes, or a record that arrives from another process a moment later,
land in the same bucket and merge. Durations (latency, TTFT) stay on each host's monotonic clock.

What counts where is the tally's declaration: every recorded outcome counts in `requests`,
`status_classes` and `errors`; only outcomes that count for the version count anywhere else.

Expiry. The ring keeps the buckets within `ring` buckets of the newest bucket recorded so far
(`newest - ring < index <= newest`); a record for an older bucket is dropped and counted in
`RoleWindow.dropped_late`. A snapshot at time t over a span of n buckets merges the kept buckets
with `now - n < index <= now`, where now = int(t // bucket_seconds).

Snapshots slide. A fresh merge of a full 15-minute ring is a Python loop over every histogram
bin of 900 buckets, far too slow to repeat for several spans of both roles at every evaluation
(bench/README.md, "Windows"). So each role keeps a running tally per span it has been asked for
(at most `MAX_RUNNING_SPANS`, the least recently used dropped): the sum of the closed buckets
(low, high] of that span's last snapshot. The next snapshot subtracts the buckets that left, adds
those that entered, and adds the open bucket (`now`) to a copy. Only the first snapshot of a span
on a full ring, or one after time jumped (backwards, or forward by half the span or more), pays
for a fresh merge. A record for a bucket a running tally already holds (a late record: from
another process, or one that finished just before a snapshot), and a slot reused under one, are
applied to that tally too, so a running tally always equals a fresh merge. Counts and histogram
bins are integers, so sliding them is exact; float totals are reset to exactly 0 when their count
reaches 0.

Memory per role is fixed by the configuration. A histogram stores at most `bin_limit` bins
(1,037 for latency and ttft, 1e-4..1e5 s; 923 for output tokens and characters, 1..1e8), so a
tally stores at most B = 2 * 1,037 + 2 * 923 = 3,920 bins. With R = ceil(span / bucket) + 1
buckets in the ring, K = MAX_RUNNING_SPANS running tallies and one snapshot being built, F bytes
of fixed structure per tally and E bytes per stored bin:

    worst_case_bytes = (R + K + 1) * (F + B * E)

A bucket holds at most as many bins as samples, so at r requests per second the bound is
(R + K + 1) * (F + E * sum over the four histograms of min(bin_limit, r * bucket_seconds)).
F, E and the measured figures are in bench/README.md ("Windows").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from canaryproxy.core.series import MAX_SERIES_POINTS, Series, SeriesCache
from canaryproxy.core.series import series as make_series
from canaryproxy.core.snapshot import WindowSnapshot
from canaryproxy.core.tally import COUNT_LAYOUT, LATENCY_LAYOUT, Tally
from canaryproxy.core.types import LIVE_ROLES, Feedback, Observed, Role
from canaryproxy.core.units import whole_buckets

__all__ = [
    "COUNT_LAYOUT", "LATENCY_LAYOUT", "MAX_RUNNING_SPANS", "MAX_SERIES_POINTS", "RoleWindow", "Series",
    "WindowConfig", "WindowSnapshot", "Windows", "whole_buckets",
]

MAX_RUNNING_SPANS = 8  # distinct spans per role with a sliding running tally (config rules use few)

_NEVER = -(2**63)  # below any bucket index a monotonic clock produces: "holds no bucket"
_RunningKey = tuple[str, int, float]  # ("span", buckets) or ("since", low end), and how early it ends


@dataclass(frozen=True, slots=True)
class WindowConfig:
    bucket_seconds: float = 1.0  # time resolution of spans and of expiry
    span_seconds: float = 900.0  # the longest span any rule or report asks for

    def __post_init__(self) -> None:
        if not (0.0 < self.bucket_seconds < math.inf):
            raise ValueError(
                "WindowConfig.bucket_seconds must be a positive number of seconds, "
                f"got {self.bucket_seconds!r}"
            )
        if not (self.bucket_seconds <= self.span_seconds < math.inf):
            raise ValueError(
                "WindowConfig.span_seconds must be at least bucket_seconds "
                f"({self.bucket_seconds:g}s) and finite, got {self.span_seconds!r}"
            )

    @property
    def span_buckets(self) -> int:
        return whole_buckets(self.span_seconds, self.bucket_seconds)

    @property
    def ring_size(self) -> int:
        """Buckets in the ring: the longest span plus the open bucket."""
        return self.span_buckets + 1


class _RunningTally:
    """The sum of the buckets with low < index <= high, kept for one span (module docstring:
    "Snapshots slide")."""

    __slots__ = ("low", "high", "tally")

    def __init__(self) -> None:
        self.low = self.high = 0  # empty
        self.tally = Tally()

    def holds(self, index: int) -> bool:
        return self.low < index <= self.high


class RoleWindow:
    """The ring of buckets of one role."""

    __slots__ = ("config", "dropped_late", "_bucket_seconds", "_ring_size", "_span_buckets",
                 "_buckets", "_bucket_indexes", "_newest_index", "_running", "_running_high",
                 "series_cache")

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self.dropped_late = 0  # records for buckets the ring no longer keeps
        self._bucket_seconds = config.bucket_seconds
        self._ring_size = config.ring_size
        self._span_buckets = config.span_buckets
        self._buckets = [Tally() for _ in range(self._ring_size)]
        self._bucket_indexes = [_NEVER] * self._ring_size  # the bucket each slot holds
        self._newest_index = _NEVER
        self._running: dict[_RunningKey, _RunningTally] = {}  # by span or low end, least recent first
        self._running_high = _NEVER  # the highest bucket any running tally holds
        self.series_cache = SeriesCache(0, ())  # closed steps of the last series (module docstring)

    def record(self, outcome: Observed, t: float) -> None:
        """Count an outcome that finished at time `t`. O(1)."""
        index = self._index_kept(t)
        if index is None:
            return
        self._buckets[index % self._ring_size].record(outcome)
        if index <= self._running_high:
            for running in self._running.values():
                if running.holds(index):
                    running.tally.record(outcome)

    def record_feedback(self, feedback: Feedback, t: float) -> None:
        """Count a feedback record in the bucket of time `t` (the request's, when it is late)."""
        index = self._index_kept(t)
        if index is None:
            return
        self._buckets[index % self._ring_size].record_feedback(feedback)
        if index <= self._running_high:
            for running in self._running.values():
                if running.holds(index):
                    running.tally.record_feedback(feedback)

    def _index_kept(self, t: float) -> int | None:
        """The bucket index of time `t` with its slot ready, or None (and counted) when the ring
        no longer keeps it."""
        index = int(t // self._bucket_seconds)
        if index > self._newest_index:
            self._newest_index = index
        elif index <= self._newest_index - self._ring_size:
            self.dropped_late += 1
            return None
        position = index % self._ring_size
        if self._bucket_indexes[position] != index:
            self._reuse_slot(position, index)
        return index

    def snapshot(self, span: float, t: float, since: float | None = None, ends_before: float = 0.0
                 ) -> WindowSnapshot:
        """Merge the buckets of the last `span` seconds up to time `t` (included); with `since`,
        only the buckets wholly after time `since` (the bucket holding it is left out); with
        `ends_before`, the span ends that many seconds before `t` (a late metric's window:
        core/metrics.py).

        A `since` inside the span has a running tally of its own, whose low end stays put while
        its high end follows `t`, so a comparison since a weight change costs what a span does.
        A window that ends early has its own too: one tally sliding between two ends would pay
        for the difference at every evaluation.
        """
        span_buckets = self._checked_span_buckets(span)
        if not 0.0 <= ends_before < math.inf:
            raise ValueError(f"snapshot ends_before must be a number of seconds >= 0, got {ends_before!r}")
        now = int((t - ends_before) // self._bucket_seconds)
        low = max(now - span_buckets, self._newest_index - self._ring_size)
        key: _RunningKey = ("span", span_buckets, ends_before)
        covered = span_buckets
        if since is not None and int(since // self._bucket_seconds) > low:
            low = min(int(since // self._bucket_seconds), now)
            key, covered = ("since", low, ends_before), max(now - low, 1)
        running = self._running_tally(key)
        self._slide(running, low, max(low, now - 1))
        merged = running.tally.copy()
        if now > low:
            position = now % self._ring_size
            if self._bucket_indexes[position] == now:
                merged.add(self._buckets[position])
        return WindowSnapshot(covered * self._bucket_seconds, merged)

    def series(self, span: float, step: float, t: float, metrics: Sequence[str]) -> Series:
        """`metrics` over the last `span` seconds before time `t`, one point per `step`
        (core/series.py)."""
        return make_series(self, span, step, t, metrics)

    def held_buckets(self, low: int, high: int) -> list[Tally | None]:
        """The buckets low..high (both included), None where the ring does not keep one (never
        recorded, reused, or expired: at or below newest - ring, as in `record`)."""
        ring_size = self._ring_size
        indexes = self._bucket_indexes
        buckets = self._buckets
        expired = self._newest_index - ring_size
        held: list[Tally | None] = []
        for index in range(low, high + 1):
            position = index % ring_size
            held.append(buckets[position] if index > expired and indexes[position] == index else None)
        return held

    @property
    def stored_bins(self) -> int:
        """Histogram bins held by the ring and the running tallies: what the window costs beyond
        its fixed structure."""
        tallies = [*self._buckets, *(running.tally for running in self._running.values())]
        return sum(histogram.stored_bins for tally in tallies for histogram in tally.distributions)

    def _checked_span_buckets(self, span: float) -> int:
        if not (0.0 < span < math.inf):
            raise ValueError(f"snapshot span must be a positive number of seconds, got {span!r}")
        span_buckets = whole_buckets(span, self._bucket_seconds)
        if span_buckets > self._span_buckets:
            raise ValueError(
                f"snapshot span {span:g}s is longer than the {self.config.span_seconds:g}s "
                "the window keeps (WindowConfig.span_seconds)"
            )
        return span_buckets

    def _reuse_slot(self, position: int, index: int) -> None:
        """Give a slot to a new bucket, taking the old bucket out of the running tallies first."""
        bucket = self._buckets[position]
        old_index = self._bucket_indexes[position]
        if old_index <= self._running_high:
            for running in self._running.values():
                if running.holds(old_index):
                    running.tally.subtract(bucket)
        bucket.clear()
        self._bucket_indexes[position] = index

    def _running_tally(self, key: _RunningKey) -> _RunningTally:
        """The running tally of a span (or of a fixed low end), made most recently used; the least
        recent beyond MAX_RUNNING_SPANS is dropped."""
        running = self._running.pop(key, None) or _RunningTally()
        self._running[key] = running
        if len(self._running) > MAX_RUNNING_SPANS:
            del self._running[next(iter(self._running))]
        return running

    def _slide(self, running: _RunningTally, low: int, high: int) -> None:
        """Make `running` hold the buckets (low, high], by the cheaper of sliding or rebuilding."""
        tally = running.tally
        moved = abs(low - running.low) + abs(high - running.high)
        if moved >= high - low or low >= running.high or high <= running.low:
            tally.clear()
            self._apply(tally.add, low, high)
        else:
            if low > running.low:
                self._apply(tally.subtract, running.low, low)
            elif low < running.low:
                self._apply(tally.add, low, running.low)
            if high > running.high:
                self._apply(tally.add, running.high, high)
            elif high < running.high:
                self._apply(tally.subtract, high, running.high)
        running.low, running.high = low, high
        self._running_high = max(r.high for r in self._running.values())

    def _apply(self, operation: Callable[[Tally], None], low: int, high: int) -> None:
        """Call `operation` on each bucket with low < index <= high that the ring holds."""
        ring_size = self._ring_size
        indexes = self._bucket_indexes
        buckets = self._buckets
        for index in range(low + 1, high + 1):
            position = index % ring_size
            if indexes[position] == index:
                operation(buckets[position])


class Windows:
    """One `RoleWindow` per role."""

    __slots__ = ("config", "_roles")

    def __init__(self, config: WindowConfig = WindowConfig()) -> None:
        self.config = config
        # The shadow's window holds the canary's answers to shadow copies: shown apart, never
        # compared by the rules (they read stable and canary only).
        self._roles = {role: RoleWindow(config) for role in (*LIVE_ROLES, Role.SHADOW)}

    def record(self, outcome: Observed, t: float) -> None:
        try:
            window = self._roles[outcome.role]
        except KeyError:
            raise _no_window(outcome.role) from None
        window.record(outcome, t)

    def record_feedback(self, feedback: Feedback, t: float) -> None:
        self[feedback.role].record_feedback(feedback, t)

    def snapshot(self, role: Role, span: float, t: float, since: float | None = None, ends_before: float = 0.0
                 ) -> WindowSnapshot:
        return self[role].snapshot(span, t, since, ends_before)

    def __getitem__(self, role: Role) -> RoleWindow:
        try:
            return self._roles[role]
        except KeyError:
            raise _no_window(role) from None


def _no_window(role: Role) -> ValueError:
    return ValueError(f"role {str(role)!r} has no window: only stable, canary and shadow are counted")
