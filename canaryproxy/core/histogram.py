"""A mergeable log-bucketed histogram with bounded relative error (the DDSketch layout).

A positive value v falls in bin k = ceil(log(v) / log(gamma)), with gamma = (1 + a) / (1 - a) for
a relative accuracy a. Bin k holds the values in (gamma**(k-1), gamma**k] and reports them as
2 * gamma**k / (gamma + 1), which is within a of every value in the bin. So any quantile is off by
at most a (1%) relative, however skewed the data, and merging two histograms is adding their bin
counts: the windows keep one histogram per second and merge the seconds a span asks for.

Memory is bounded by the layout, not by traffic: values are clamped to [min_value, max_value], so
a histogram stores at most `HistogramLayout.bin_limit` bins (1,037 for 1e-4..1e5 seconds, 923 for
1..1e8 tokens). Values in [0, min_value) share one zero bin and are reported as 0; values above
max_value are reported as about max_value. Bins live in a sparse dict, so an empty histogram holds
no bins at all.

Quantiles are lower nearest-rank quantiles: quantile(q) is the bin value of the sample of rank
max(1, ceil(q * count)) in ascending order (q=0 the smallest, q=1 the largest). No interpolation:
the answer is always the bin value of a sample that was added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

_log = math.log
_ceil = math.ceil


@dataclass(frozen=True, slots=True)
class HistogramLayout:
    """The bin geometry shared by histograms that can be merged with each other."""

    min_value: float
    max_value: float
    relative_accuracy: float = 0.01
    gamma: float = field(init=False, repr=False)
    multiplier: float = field(init=False, repr=False)  # 1 / log(gamma), cached for `add`
    min_key: int = field(init=False, repr=False)
    max_key: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.relative_accuracy < 1.0:
            raise ValueError(
                "HistogramLayout.relative_accuracy must be between 0 and 1, "
                f"got {self.relative_accuracy!r}"
            )
        if not (0.0 < self.min_value < self.max_value < math.inf):
            raise ValueError(
                "HistogramLayout needs 0 < min_value < max_value < inf, "
                f"got min_value={self.min_value!r}, max_value={self.max_value!r}"
            )
        gamma = (1.0 + self.relative_accuracy) / (1.0 - self.relative_accuracy)
        multiplier = 1.0 / math.log(gamma)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "multiplier", multiplier)
        object.__setattr__(self, "min_key", _ceil(_log(self.min_value) * multiplier))
        object.__setattr__(self, "max_key", _ceil(_log(self.max_value) * multiplier))

    @property
    def bin_limit(self) -> int:
        """The most bins a histogram of this layout can store (the zero bin is a plain counter)."""
        return self.max_key - self.min_key + 1

    def bin_value(self, key: int) -> float:
        """The value a bin reports: within `relative_accuracy` of everything in the bin."""
        return 2.0 * self.gamma**key / (self.gamma + 1.0)


class Histogram:
    """Counts of values in log bins, plus their exact count and sum.

    `total` and `mean` are of the values as added (not clamped, not binned), so means are exact.
    """

    __slots__ = ("layout", "_min_value", "_max_value", "_multiplier", "_bins", "_zero_count",
                 "_count", "_total")

    def __init__(self, layout: HistogramLayout) -> None:
        self.layout = layout
        # Copies of the layout's numbers: `add` runs several times per request, and an attribute
        # of self is one lookup instead of two.
        self._min_value = layout.min_value
        self._max_value = layout.max_value
        self._multiplier = layout.multiplier
        self._bins: dict[int, int] = {}
        self._zero_count = 0
        self._count = 0
        self._total = 0.0

    def add(self, value: float) -> None:
        """Add one value: finite and >= 0. O(1)."""
        if value >= self._min_value:
            if value > self._max_value:
                if value == math.inf:
                    raise ValueError("histogram values must be finite, got inf")
                key = self.layout.max_key
            else:
                key = _ceil(_log(value) * self._multiplier)
            bins = self._bins
            bins[key] = bins.get(key, 0) + 1
        elif value >= 0.0:
            self._zero_count += 1
        else:
            raise ValueError(f"histogram values must be >= 0 and not NaN, got {value!r}")
        self._count += 1
        self._total += value

    @property
    def count(self) -> int:
        return self._count

    @property
    def total(self) -> float:
        """The sum of the values added."""
        return self._total

    @property
    def mean(self) -> float | None:
        """The exact mean of the values added; None when there are none."""
        return self._total / self._count if self._count else None

    @property
    def stored_bins(self) -> int:
        """How many bins hold a count now: what the histogram costs in memory."""
        return len(self._bins)

    def bins(self) -> list[tuple[float, int]]:
        """The whole content as (bin value, count) in ascending order, the zero bin (0.0) first
        when it holds anything: what a dashboard draws, and what two equal histograms share."""
        zero = [(0.0, self._zero_count)] if self._zero_count else []
        value_of = self.layout.bin_value
        return zero + [(value_of(key), self._bins[key]) for key in sorted(self._bins)]

    def quantile(self, q: float) -> float | None:
        """The lower nearest-rank q-quantile (see the module docstring); None when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q must be between 0 and 1, got {q!r}")
        if self._count == 0:
            return None
        rank = max(1, _ceil(q * self._count))
        seen = self._zero_count
        if rank <= seen:
            return 0.0
        bins = self._bins
        for key in sorted(bins):
            seen += bins[key]
            if seen >= rank:
                return self.layout.bin_value(key)
        raise AssertionError("bin counts do not add up to count")  # unreachable while consistent

    def merge_into(self, target: Histogram) -> None:
        """Add every sample of this histogram to `target`."""
        self._check_same_layout(target)
        bins = target._bins
        get = bins.get
        for key, count in self._bins.items():
            bins[key] = get(key, 0) + count
        target._zero_count += self._zero_count
        target._count += self._count
        target._total += self._total

    def remove_from(self, target: Histogram) -> None:
        """Take the samples of this histogram out of `target`, which must hold them (the inverse of
        `merge_into`, for sliding sums). An emptied target has a total of exactly 0.0 again, so
        rounding left by the subtractions never outlives the samples."""
        self._check_same_layout(target)
        bins = target._bins
        for key, count in self._bins.items():
            left = bins.get(key, 0) - count
            if left > 0:
                bins[key] = left
            elif left == 0:
                del bins[key]
            else:
                raise ValueError(
                    f"cannot remove {count} samples from bin {key}: "
                    f"the target holds only {left + count}"
                )
        target._zero_count -= self._zero_count
        target._count -= self._count
        target._total = target._total - self._total if target._count else 0.0

    def copy(self) -> Histogram:
        twin = Histogram(self.layout)
        twin._bins = self._bins.copy()
        twin._zero_count = self._zero_count
        twin._count = self._count
        twin._total = self._total
        return twin

    def clear(self) -> None:
        self._bins = {}
        self._zero_count = 0
        self._count = 0
        self._total = 0.0

    def _check_same_layout(self, other: Histogram) -> None:
        if other.layout is not self.layout and other.layout != self.layout:
            raise ValueError(
                f"cannot merge histograms of different layouts: {self.layout} and {other.layout}"
            )

    def __repr__(self) -> str:
        return (f"Histogram(count={self._count}, total={self._total!r}, "
                f"stored_bins={len(self._bins)}, {self.layout})")


def merge(histograms: Iterable[Histogram], layout: HistogramLayout) -> Histogram:
    """A new histogram holding the samples of all `histograms` (which must share `layout`)."""
    merged = Histogram(layout)
    for histogram in histograms:
        histogram.merge_into(merged)
    return merged
