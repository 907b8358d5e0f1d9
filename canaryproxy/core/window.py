"""Rolling per-role metric windows: a ring of one-second tallies, merged over any span on demand.

Each role has a ring of `ceil(span_seconds / bucket_seconds) + 1` buckets. A bucket is the tally of
the requests that finished in one `bucket_seconds` interval: counters, sums and four mergeable
histograms (latency, time to first token, output tokens, output length in characters). A bucket
remembers its absolute index `int(t // bucket_seconds)` and is reset lazily when its slot is
reused, so recording is O(1) and an idle second costs nothing.

What counts where. Every recorded outcome counts in `requests`, `status_classes` and `errors`.
Only outcomes that count for the version (`Outcome.counts_for_version`: not a client hang-up, not
a refused or late request body, not shutdown) count anywhere else: they are the `judged` requests,
the denominator of every rate, and the only ones in the latency, token, length, schema, guardrail
and cost figures. A client that hangs up mid-stream leaves a short output and a low token count
that say nothing about the version, so they must not drag its means down.

Expiry. The ring keeps the buckets within `ring` buckets of the newest bucket recorded so far
(`newest - ring < index <= newest`); a record for an older bucket is dropped and counted in
`RoleWindow.dropped_late`. A snapshot at time t over a span of n buckets merges the kept buckets
with `now - n < index <= now`, where now = int(t // bucket_seconds).

Snapshots slide. A fresh merge of 900 one-second buckets costs 32 ms or more at 500 requests per
second (a bucket then holds ~550 distinct bins across its four histograms, and merging is a Python
loop over them); a controller that snapshots three spans of both roles every tick would block the
event loop for 200 ms. So each role keeps a running tally per span it has been asked for (at most
`MAX_RUNNING_SPANS`, the least recently used dropped): the sum of the closed buckets (low, high]
of that span's last snapshot. The next snapshot subtracts the buckets that left, adds those that
entered, and adds the open bucket (`now`) to a copy: about 0.1 ms a tick at 500 requests per
second. Only the first snapshot of a span on a full ring, or one after time jumped (backwards, or
forward by half the span or more), pays for a fresh merge. A record for a bucket a running tally already holds (a late record), and a slot
reused under one, are applied to that tally too, so a running tally always equals a fresh merge.
With one event loop and one monotonic clock, records land at or after the last snapshot's `now`
and skip the running tallies: recording stays O(1). Counts and histogram bins are integers, so
sliding them is exact; float sums (latency, ttft, cost) pick up rounding of about one ulp of the
largest window total per subtraction, and are reset to exactly 0 when their count reaches 0.

Memory per role is fixed by the configuration. A histogram stores at most `bin_limit` bins
(1,037 for latency and ttft, 1e-4..1e5 s; 923 for output tokens and characters, 1..1e8), so a
tally stores at most B = 2 * 1,037 + 2 * 923 = 3,920 bins. With R = ceil(span / bucket) + 1
buckets in the ring, K = MAX_RUNNING_SPANS running tallies and one snapshot being built, F = 1.8 KB
of fixed structure per tally (its objects, empty histograms, full status/error/guardrail dicts)
and E = 87 bytes per stored bin (dict entry, key int, count int; measured on a full tally):

    worst_case_bytes = (R + K + 1) * (F + B * E)
                     = (901 + 8 + 1) * (1,772 + 3,920 * 86.2) = 910 * 340 KB ≈ 309 MB per role

That ceiling needs all 3,920 bins filled in every one of 901 seconds: over a thousand requests a
second on one role, spread evenly over nine decades of latency and eight of tokens. A bucket holds
at most as many bins as samples, so at r requests per second the bound is
(R + K + 1) * (F + E * sum over the four histograms of min(bin_limit, r * bucket_seconds)),
about 33 MB at 100 requests per second. Measured with tracemalloc (`record` at 100 requests/s for
15 minutes of simulated time with LLM-like lognormal latency, ttft, tokens and lengths, spans of
1, 5 and 15 minutes snapshotted every second): 13.6 MB for the loaded role; an empty `Windows`
(both roles) is 1.9 MB.

Series. A dashboard polls `RoleWindow.series` every 2 s for charts of the last 15 minutes in steps
of a few seconds. Each point merges the buckets of its step once (never a 15-minute snapshot per
point), but merging all 900 buckets still costs about 40 ms per role at 500 requests per second.
Steps are aligned to multiples of the step, so a closed step never changes again unless a late
record lands in it or its buckets expire: each role keeps the metric values of the closed steps of
its last series, with the request counts of their buckets when they were merged. Every record
adds to its bucket's count and an expired bucket counts 0, so a step whose counts still match
still holds the same outcomes; the next call merges only the steps that closed since and the one
still filling: 0.3 to 0.6 ms per role at 500 requests per second. `record` is untouched by this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from canaryproxy.core.histogram import Histogram, HistogramLayout
from canaryproxy.core.metrics import METRICS, MetricValue
from canaryproxy.core.types import Role, Outcome

LATENCY_LAYOUT = HistogramLayout(min_value=1e-4, max_value=1e5)  # seconds: 100 µs .. 28 hours
COUNT_LAYOUT = HistogramLayout(min_value=1.0, max_value=1e8)  # tokens and characters

MAX_RUNNING_SPANS = 8  # distinct spans per role with a sliding running tally (config rules use few)
MAX_SERIES_POINTS = 240  # points per series: more than a chart a few hundred pixels wide can show

_NEVER = -(2**63)  # below any bucket index a monotonic clock produces: "holds no bucket"


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


def whole_buckets(seconds: float, bucket_seconds: float) -> int:
    """The number of buckets that cover `seconds`. A ratio within float noise of a whole number is
    that number (0.3 / 0.1 is 2.9999999999999996, meaning 3)."""
    ratio = seconds / bucket_seconds
    nearest = round(ratio)
    return nearest if math.isclose(ratio, nearest, rel_tol=1e-9) else math.ceil(ratio)


class _Tally:
    """Counters, sums and histograms of a set of outcomes: one bucket, or a merge of buckets."""

    __slots__ = (
        "requests", "judged", "failed", "status_classes", "errors", "truncated",
        "schema_checked", "schema_failures", "schema_skipped", "guardrails", "guardrail_requests",
        "usage_missing", "inspect_errors", "prompt_tokens", "cost_usd", "cost_count",
        "latency", "ttft", "output_tokens", "output_length",
    )

    def __init__(self) -> None:
        self.latency = Histogram(LATENCY_LAYOUT)
        self.ttft = Histogram(LATENCY_LAYOUT)
        self.output_tokens = Histogram(COUNT_LAYOUT)
        self.output_length = Histogram(COUNT_LAYOUT)
        self._zero_counters()

    def _zero_counters(self) -> None:
        self.requests = self.judged = self.failed = self.truncated = 0
        self.schema_checked = self.schema_failures = self.schema_skipped = 0
        self.guardrail_requests = self.usage_missing = self.inspect_errors = 0
        self.prompt_tokens = self.cost_count = 0
        self.cost_usd = 0.0
        self.status_classes: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.guardrails: dict[str, int] = {}

    def clear(self) -> None:
        self._zero_counters()
        for histogram in self.histograms():
            histogram.clear()

    def histograms(self) -> tuple[Histogram, Histogram, Histogram, Histogram]:
        return self.latency, self.ttft, self.output_tokens, self.output_length

    def copy(self) -> _Tally:
        twin = _Tally.__new__(_Tally)
        for name in _Tally.__slots__:
            value = getattr(self, name)
            setattr(twin, name, value.copy() if isinstance(value, (dict, Histogram)) else value)
        return twin

    def record(self, outcome: Outcome) -> None:
        """Count one outcome. On the hot path: every request, for its bucket."""
        self.requests += 1
        status_classes = self.status_classes
        status_class = outcome.status_class
        status_classes[status_class] = status_classes.get(status_class, 0) + 1
        error = outcome.error
        if error is not None:
            self.errors[error.value] = self.errors.get(error.value, 0) + 1
            if not error.is_upstream_fault:
                return  # says nothing about the version (see the module docstring)
        self.judged += 1
        if outcome.failed:
            self.failed += 1
        if outcome.truncated:
            self.truncated += 1
        self.latency.add(outcome.latency)
        if outcome.ttft is not None:
            self.ttft.add(outcome.ttft)
        if outcome.prompt_tokens is not None:
            self.prompt_tokens += outcome.prompt_tokens
        if outcome.completion_tokens is not None:
            self.output_tokens.add(outcome.completion_tokens)
        if outcome.output_chars is not None:
            self.output_length.add(outcome.output_chars)
        if outcome.usage_missing:
            self.usage_missing += 1
        if outcome.schema_ok is not None:
            self.schema_checked += 1
            if not outcome.schema_ok:
                self.schema_failures += 1
        if outcome.schema_skipped:
            self.schema_skipped += 1
        if outcome.guardrails:
            self.guardrail_requests += 1
            guardrails = self.guardrails
            for source in outcome.guardrails:
                guardrails[source] = guardrails.get(source, 0) + 1
        if outcome.cost_usd is not None:
            self.cost_usd += outcome.cost_usd
            self.cost_count += 1
        if outcome.inspect_error:
            self.inspect_errors += 1

    def add(self, other: _Tally) -> None:
        """self += other."""
        self.requests += other.requests
        self.judged += other.judged
        self.failed += other.failed
        self.truncated += other.truncated
        self.schema_checked += other.schema_checked
        self.schema_failures += other.schema_failures
        self.schema_skipped += other.schema_skipped
        self.guardrail_requests += other.guardrail_requests
        self.usage_missing += other.usage_missing
        self.inspect_errors += other.inspect_errors
        self.prompt_tokens += other.prompt_tokens
        self.cost_usd += other.cost_usd
        self.cost_count += other.cost_count
        _add_counts(self.status_classes, other.status_classes)
        _add_counts(self.errors, other.errors)
        _add_counts(self.guardrails, other.guardrails)
        for mine, theirs in zip(self.histograms(), other.histograms()):
            theirs.merge_into(mine)

    def subtract(self, other: _Tally) -> None:
        """self -= other, where self holds everything `other` holds."""
        self.requests -= other.requests
        self.judged -= other.judged
        self.failed -= other.failed
        self.truncated -= other.truncated
        self.schema_checked -= other.schema_checked
        self.schema_failures -= other.schema_failures
        self.schema_skipped -= other.schema_skipped
        self.guardrail_requests -= other.guardrail_requests
        self.usage_missing -= other.usage_missing
        self.inspect_errors -= other.inspect_errors
        self.prompt_tokens -= other.prompt_tokens
        self.cost_count -= other.cost_count
        self.cost_usd = self.cost_usd - other.cost_usd if self.cost_count else 0.0
        _subtract_counts(self.status_classes, other.status_classes)
        _subtract_counts(self.errors, other.errors)
        _subtract_counts(self.guardrails, other.guardrails)
        for mine, theirs in zip(self.histograms(), other.histograms()):
            theirs.remove_from(mine)

    def to_snapshot(self, span: float) -> WindowSnapshot:
        """Freeze into a snapshot. The snapshot takes over this tally's dicts and histograms."""
        return WindowSnapshot(
            span=span,
            requests=self.requests,
            judged=self.judged,
            failed=self.failed,
            status_classes=self.status_classes,
            errors=self.errors,
            truncated=self.truncated,
            schema_checked=self.schema_checked,
            schema_failures=self.schema_failures,
            schema_skipped=self.schema_skipped,
            guardrails=self.guardrails,
            guardrail_requests=self.guardrail_requests,
            usage_missing=self.usage_missing,
            inspect_errors=self.inspect_errors,
            prompt_tokens=self.prompt_tokens,
            cost_usd=self.cost_usd,
            cost_count=self.cost_count,
            latency=self.latency,
            ttft=self.ttft,
            output_tokens=self.output_tokens,
            output_length=self.output_length,
        )


def _add_counts(target: dict[str, int], source: Mapping[str, int]) -> None:
    for name, count in source.items():
        target[name] = target.get(name, 0) + count


def _subtract_counts(target: dict[str, int], source: Mapping[str, int]) -> None:
    """Take counts out, dropping names that reach zero so a merge equals a fresh count."""
    for name, count in source.items():
        left = target[name] - count
        if left:
            target[name] = left
        else:
            del target[name]


class _RunningTally:
    """The sum of the buckets with low < index <= high, kept for one span (module docstring:
    "Snapshots slide")."""

    __slots__ = ("low", "high", "tally")

    def __init__(self) -> None:
        self.low = self.high = 0  # empty
        self.tally = _Tally()

    def holds(self, index: int) -> bool:
        return self.low < index <= self.high


class RoleWindow:
    """The ring of buckets of one role."""

    __slots__ = ("config", "dropped_late", "_bucket_seconds", "_ring_size", "_span_buckets",
                 "_buckets", "_bucket_indexes", "_newest_index", "_running", "_running_high",
                 "_series_cache")

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self.dropped_late = 0  # records for buckets the ring no longer keeps
        self._bucket_seconds = config.bucket_seconds
        self._ring_size = config.ring_size
        self._span_buckets = config.span_buckets
        self._buckets = [_Tally() for _ in range(self._ring_size)]
        self._bucket_indexes = [_NEVER] * self._ring_size  # the bucket each slot holds
        self._newest_index = _NEVER
        self._running: dict[int, _RunningTally] = {}  # by span in buckets, least recent first
        self._running_high = _NEVER  # the highest bucket any running tally holds
        self._series_cache = _SeriesCache(0, ())  # closed steps of the last series (module docstring)

    def record(self, outcome: Outcome, t: float) -> None:
        """Count an outcome that finished at monotonic time `t`. O(1)."""
        index = int(t // self._bucket_seconds)
        if index > self._newest_index:
            self._newest_index = index
        elif index <= self._newest_index - self._ring_size:
            self.dropped_late += 1
            return
        position = index % self._ring_size
        if self._bucket_indexes[position] != index:
            self._reuse_slot(position, index)
        self._buckets[position].record(outcome)
        if index <= self._running_high:
            for running in self._running.values():
                if running.holds(index):
                    running.tally.record(outcome)

    def snapshot(self, span: float, t: float) -> WindowSnapshot:
        """Merge the buckets of the last `span` seconds up to monotonic time `t` (included)."""
        span_buckets = self._checked_span_buckets(span)
        now = int(t // self._bucket_seconds)
        low = max(now - span_buckets, self._newest_index - self._ring_size)
        running = self._running_tally(span_buckets)
        self._slide(running, low, max(low, now - 1))
        merged = running.tally.copy()
        if now > low:
            position = now % self._ring_size
            if self._bucket_indexes[position] == now:
                merged.add(self._buckets[position])
        return merged.to_snapshot(span_buckets * self._bucket_seconds)

    def series(self, span: float, step: float, t: float, metrics: Sequence[str]) -> Series:
        """`metrics` over the last `span` seconds before monotonic time `t`, one point per `step`.

        Points hold closed buckets only (index < int(t // bucket_seconds)): a bucket still filling
        would make the newest rate dip. Steps are aligned to multiples of `step`, so a point keeps
        its buckets from one call to the next; the newest point may hold fewer buckets than a step
        (its span, and so its rates, are of the buckets it holds). The series has
        `span // step` points, oldest first, and covers at most `span`; a metric is None where its
        point has no samples.
        """
        bucket_seconds = self._bucket_seconds
        step_buckets, points = self._checked_series_shape(span, step)
        names = tuple(metrics)
        for name in names:
            if name not in METRICS:
                raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
        cache = self._series_cache
        if (cache.step_buckets, cache.metrics) != (step_buckets, names):
            cache = self._series_cache = _SeriesCache(step_buckets, names)
        newest_closed = int(t // bucket_seconds) - 1
        newest_step = newest_closed // step_buckets
        kept_points: dict[int, tuple[tuple[int, ...], tuple[float | None, ...]]] = {}
        ends: list[float] = []
        rows: list[tuple[float | None, ...]] = []
        for step_index in range(newest_step - points + 1, newest_step + 1):
            low = step_index * step_buckets
            high = min(low + step_buckets - 1, newest_closed)
            buckets = self._held_buckets(low, high)
            counts = tuple(bucket.requests if bucket is not None else 0 for bucket in buckets)
            cached = cache.points.get(step_index)
            if cached is not None and cached[0] == counts:
                row = cached[1]
            else:
                row = self._point(buckets, (high - low + 1) * bucket_seconds, names)
            if high - low + 1 == step_buckets:  # closed: worth keeping for the next call
                kept_points[step_index] = (counts, row)
            ends.append((high + 1) * bucket_seconds)
            rows.append(row)
        cache.points = kept_points
        values = {name: tuple(row[column] for row in rows) for column, name in enumerate(names)}
        return Series(step=step_buckets * bucket_seconds, ends=tuple(ends), values=values)

    def _checked_series_shape(self, span: float, step: float) -> tuple[int, int]:
        """The buckets per step and the number of points of a series, or a ValueError saying
        which argument is wrong."""
        bucket_seconds = self._bucket_seconds
        if not (0.0 < span < math.inf):
            raise ValueError(f"series span must be a positive number of seconds, got {span!r}")
        if not (0.0 < step < math.inf):
            raise ValueError(f"series step must be a positive number of seconds, got {step!r}")
        step_buckets = whole_buckets(step, bucket_seconds)
        if not math.isclose(step_buckets * bucket_seconds, step, rel_tol=1e-9):
            raise ValueError(
                f"series step {step:g}s is not a whole number of {bucket_seconds:g}s buckets "
                "(WindowConfig.bucket_seconds)"
            )
        span_buckets = whole_buckets(span, bucket_seconds)
        if span_buckets > self._span_buckets:
            raise ValueError(
                f"series span {span:g}s is longer than the {self.config.span_seconds:g}s "
                "the window keeps (WindowConfig.span_seconds)"
            )
        points = span_buckets // step_buckets
        if points < 1:
            raise ValueError(f"series span {span:g}s is shorter than its step {step:g}s")
        if points > MAX_SERIES_POINTS:
            raise ValueError(
                f"series span {span:g}s in steps of {step:g}s makes {points} points; "
                f"at most {MAX_SERIES_POINTS}: take a longer step"
            )
        return step_buckets, points

    def _held_buckets(self, low: int, high: int) -> list[_Tally | None]:
        """The buckets low..high (both included), None where the ring does not keep one (never
        recorded, reused, or expired: at or below newest - ring, as in `record`)."""
        ring_size = self._ring_size
        indexes = self._bucket_indexes
        buckets = self._buckets
        expired = self._newest_index - ring_size
        held: list[_Tally | None] = []
        for index in range(low, high + 1):
            position = index % ring_size
            held.append(buckets[position] if index > expired and indexes[position] == index else None)
        return held

    @staticmethod
    def _point(buckets: list[_Tally | None], span: float, names: tuple[str, ...]
               ) -> tuple[float | None, ...]:
        merged = _Tally()
        for bucket in buckets:
            if bucket is not None and bucket.requests:
                merged.add(bucket)
        snapshot = merged.to_snapshot(span)
        return tuple(snapshot.metric(name).value for name in names)

    @property
    def stored_bins(self) -> int:
        """Histogram bins held by the ring and the running tallies: what the window costs beyond
        its fixed structure."""
        tallies = [*self._buckets, *(running.tally for running in self._running.values())]
        return sum(histogram.stored_bins for tally in tallies for histogram in tally.histograms())

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

    def _running_tally(self, span_buckets: int) -> _RunningTally:
        """The running tally of a span, made most recently used; the least recent beyond
        MAX_RUNNING_SPANS is dropped."""
        running = self._running.pop(span_buckets, None) or _RunningTally()
        self._running[span_buckets] = running
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

    def _apply(self, operation: Callable[[_Tally], None], low: int, high: int) -> None:
        """Call `operation` on each bucket with low < index <= high that the ring holds."""
        ring_size = self._ring_size
        indexes = self._bucket_indexes
        buckets = self._buckets
        for index in range(low + 1, high + 1):
            position = index % ring_size
            if indexes[position] == index:
                operation(buckets[position])


class _SeriesCache:
    """The closed steps of an role's last series, by step index: the request counts of the step's
    buckets when it was merged, and its metric values (module docstring: "Series")."""

    __slots__ = ("step_buckets", "metrics", "points")

    def __init__(self, step_buckets: int, metrics: tuple[str, ...]) -> None:
        self.step_buckets = step_buckets
        self.metrics = metrics
        self.points: dict[int, tuple[tuple[int, ...], tuple[float | None, ...]]] = {}


@dataclass(frozen=True, slots=True)
class Series:
    """Metrics of one role in consecutive steps, oldest first (`RoleWindow.series`)."""

    step: float  # seconds per point: a whole number of buckets
    ends: tuple[float, ...]  # monotonic time at which each point ends (the end of its last bucket)
    values: Mapping[str, tuple[float | None, ...]]  # metric -> one value per point, None: no samples


class Windows:
    """One `RoleWindow` per role."""

    __slots__ = ("config", "_arms")

    def __init__(self, config: WindowConfig = WindowConfig()) -> None:
        self.config = config
        self._arms = {role: RoleWindow(config) for role in Role}

    def record(self, outcome: Outcome, t: float) -> None:
        self._arms[outcome.role].record(outcome, t)

    def snapshot(self, role: Role, span: float, t: float) -> WindowSnapshot:
        return self._arms[role].snapshot(span, t)

    def __getitem__(self, role: Role) -> RoleWindow:
        return self._arms[role]


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """The merged tally of one role over `span` seconds. Read-only by convention: it owns its dicts
    and histograms, which no window references any more."""

    span: float  # seconds covered: the requested span rounded up to whole buckets
    requests: int  # every recorded outcome
    judged: int  # outcomes that count for the version: the denominator of the rates
    failed: int  # judged outcomes that failed (Outcome.failed)
    status_classes: Mapping[str, int]  # "2xx".."5xx", "none": every recorded outcome
    errors: Mapping[str, int]  # ErrorKind value -> count: every recorded outcome
    truncated: int
    schema_checked: int
    schema_failures: int
    schema_skipped: int
    guardrails: Mapping[str, int]  # intervention source -> interventions
    guardrail_requests: int  # judged outcomes with at least one intervention
    usage_missing: int
    inspect_errors: int
    prompt_tokens: int  # sum over judged outcomes that report it
    cost_usd: float  # sum over priced outcomes
    cost_count: int  # priced outcomes
    latency: Histogram  # seconds, judged outcomes
    ttft: Histogram  # seconds, outcomes with a first token
    output_tokens: Histogram  # completion tokens, outcomes with usage (count, total, quantiles)
    output_length: Histogram  # output characters, inspected outcomes

    @property
    def token_requests(self) -> int:
        """Judged outcomes with a completion token count ("responses with usage")."""
        return self.output_tokens.count

    @property
    def completion_tokens(self) -> int:
        return round(self.output_tokens.total)

    @property
    def output_chars(self) -> int:
        return round(self.output_length.total)

    @property
    def output_chars_count(self) -> int:
        """Judged outcomes with an output length ("inspected responses")."""
        return self.output_length.count

    @property
    def guardrail_interventions(self) -> int:
        return sum(self.guardrails.values())

    def metric(self, name: str) -> MetricValue:
        """The value of a metric of the catalogue (`canaryproxy.core.metrics.METRICS`)."""
        try:
            compute = _METRIC_FUNCTIONS[name]
        except KeyError:
            raise KeyError(
                f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}"
            ) from None
        return compute(self)

    def summary(self) -> dict[str, Any]:
        """Counts and every catalogue metric, JSON-serializable, for the admin API."""
        return {
            "span_seconds": self.span,
            "requests": self.requests,
            "judged": self.judged,
            "failed": self.failed,
            "status_classes": dict(self.status_classes),
            "errors": dict(self.errors),
            "truncated": self.truncated,
            "schema": {"checked": self.schema_checked, "failures": self.schema_failures,
                       "skipped": self.schema_skipped},
            "guardrails": dict(self.guardrails),
            "guardrail_requests": self.guardrail_requests,
            "usage_missing": self.usage_missing,
            "inspect_errors": self.inspect_errors,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                       "requests": self.token_requests},
            "cost_usd": self.cost_usd,
            "metrics": {
                name: {"value": value.value, "samples": value.samples}
                for name, value in ((name, self.metric(name)) for name in METRICS)
            },
        }


def _ratio(part: float, whole: int) -> MetricValue:
    return MetricValue(part / whole if whole else None, whole)


def _quantile(histogram_of: Callable[[WindowSnapshot], Histogram], q: float
              ) -> Callable[[WindowSnapshot], MetricValue]:
    def compute(snapshot: WindowSnapshot) -> MetricValue:
        histogram = histogram_of(snapshot)
        return MetricValue(histogram.quantile(q), histogram.count)
    return compute


def _availability(s: WindowSnapshot) -> MetricValue:
    error_rate = _ratio(s.failed, s.judged)
    return MetricValue(None if error_rate.value is None else 1.0 - error_rate.value, s.judged)


def _per_span(count: float, samples: int, span_units: float) -> MetricValue:
    return MetricValue(count / span_units if samples else None, samples)


# How each catalogue metric is computed from a snapshot; samples follow the catalogue's `samples`.
_METRIC_FUNCTIONS: dict[str, Callable[[WindowSnapshot], MetricValue]] = {
    "error_rate": lambda s: _ratio(s.failed, s.judged),
    "availability": _availability,
    "latency_p50": _quantile(lambda s: s.latency, 0.50),
    "latency_p95": _quantile(lambda s: s.latency, 0.95),
    "latency_p99": _quantile(lambda s: s.latency, 0.99),
    "latency_mean": lambda s: MetricValue(s.latency.mean, s.latency.count),
    "ttft_p50": _quantile(lambda s: s.ttft, 0.50),
    "ttft_p95": _quantile(lambda s: s.ttft, 0.95),
    "ttft_p99": _quantile(lambda s: s.ttft, 0.99),
    "tokens_per_request": lambda s: _ratio(s.prompt_tokens + s.completion_tokens, s.token_requests),
    "output_tokens_per_request": lambda s: _ratio(s.completion_tokens, s.token_requests),
    "prompt_tokens_per_request": lambda s: _ratio(s.prompt_tokens, s.token_requests),
    "output_tokens_p95": _quantile(lambda s: s.output_tokens, 0.95),
    "output_length_mean": lambda s: _ratio(s.output_chars, s.output_chars_count),
    "output_length_p95": _quantile(lambda s: s.output_length, 0.95),
    "schema_failure_rate": lambda s: _ratio(s.schema_failures, s.schema_checked),
    "guardrail_per_minute": lambda s: _per_span(s.guardrail_interventions, s.judged, s.span / 60.0),
    "guardrail_rate": lambda s: _ratio(s.guardrail_requests, s.judged),
    "truncation_rate": lambda s: _ratio(s.truncated, s.judged),
    "usage_missing_rate": lambda s: _ratio(s.usage_missing, s.output_chars_count),
    "cost_per_request": lambda s: _ratio(s.cost_usd, s.cost_count),
    "request_rate": lambda s: _per_span(s.requests, s.requests, s.span),
}
