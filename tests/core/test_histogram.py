import math

import pytest
from hypothesis import given, strategies as st

from canaryproxy.core.histogram import Histogram, HistogramLayout, merge

LATENCY = HistogramLayout(min_value=1e-4, max_value=1e5)
TOKENS = HistogramLayout(min_value=1.0, max_value=1e8)

QUANTILES = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]

in_range = st.floats(min_value=LATENCY.min_value, max_value=LATENCY.max_value)
values = st.lists(st.one_of(st.just(0.0), in_range), min_size=1, max_size=300)


def histogram_of(samples, layout=LATENCY) -> Histogram:
    histogram = Histogram(layout)
    for value in samples:
        histogram.add(value)
    return histogram


def exact_quantile(samples, q: float) -> float:
    """The lower nearest-rank quantile, straight from its definition."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@given(values)
def test_quantiles_are_within_1_percent_of_the_exact_sorted_quantiles(samples):
    histogram = histogram_of(samples)
    for q in QUANTILES:
        exact = exact_quantile(samples, q)
        estimate = histogram.quantile(q)
        if exact == 0.0:
            assert estimate == 0.0
        else:
            # The layout guarantees the relative accuracy (1%), comfortably inside the 2% required.
            error = abs(estimate - exact)
            assert error <= (LATENCY.relative_accuracy + 1e-9) * exact, (q, exact, estimate)


@given(st.lists(st.integers(min_value=0, max_value=10**8), min_size=1, max_size=300))
def test_token_counts_are_within_1_percent_too(samples):
    histogram = histogram_of(samples, TOKENS)
    for q in QUANTILES:
        exact = exact_quantile(samples, q)
        assert abs(histogram.quantile(q) - exact) <= (TOKENS.relative_accuracy + 1e-9) * exact


@given(values)
def test_count_total_and_mean_are_exact(samples):
    histogram = histogram_of(samples)
    assert histogram.count == len(samples)
    assert histogram.total == pytest.approx(math.fsum(samples), rel=1e-12)
    assert histogram.mean == pytest.approx(math.fsum(samples) / len(samples), rel=1e-12)


@given(values, values, values)
def test_merging_is_associative_and_equals_adding_everything_to_one(a, b, c):
    left = histogram_of(a)
    histogram_of(b).merge_into(left)
    histogram_of(c).merge_into(left)

    right = histogram_of(b)
    histogram_of(c).merge_into(right)
    right_first = histogram_of(a)
    right.merge_into(right_first)

    merged = merge([histogram_of(a), histogram_of(b), histogram_of(c)], LATENCY)
    together = histogram_of(a + b + c)
    for histogram in (left, right_first, merged):
        assert histogram.bins() == together.bins()
        assert histogram.count == together.count
        assert histogram.total == pytest.approx(together.total, rel=1e-12)
        assert [histogram.quantile(q) for q in QUANTILES] == [
            together.quantile(q) for q in QUANTILES]


@given(values, values)
def test_remove_from_undoes_merge_into(kept, passing):
    target = histogram_of(kept)
    before = target.bins()
    histogram_of(passing).merge_into(target)
    histogram_of(passing).remove_from(target)
    assert target.bins() == before
    assert target.count == len(kept)
    assert target.total == pytest.approx(math.fsum(kept), rel=1e-9, abs=1e-6)


def test_removing_everything_leaves_an_exactly_empty_histogram():
    target = histogram_of([0.1, 0.2, 0.3])
    histogram_of([0.1, 0.2, 0.3]).remove_from(target)
    assert (target.count, target.total, target.stored_bins, target.bins()) == (0, 0.0, 0, [])
    assert target.quantile(0.5) is None and target.mean is None


def test_removing_samples_the_target_never_held_is_an_error():
    target = histogram_of([1.0])
    message = "cannot remove 2 samples from bin .*: the target holds only 1$"
    with pytest.raises(ValueError, match=message):
        histogram_of([1.0, 1.0]).remove_from(target)


def test_an_empty_histogram_has_no_quantile_no_mean_and_no_bins():
    histogram = Histogram(LATENCY)
    assert histogram.quantile(0.5) is None
    assert histogram.mean is None
    assert (histogram.count, histogram.total, histogram.stored_bins) == (0, 0.0, 0)


@given(st.lists(st.floats(min_value=0.0, max_value=1e300), max_size=500))
def test_stored_bins_never_exceed_the_layout_bound(samples):
    assert histogram_of(samples).stored_bins <= LATENCY.bin_limit


def test_the_bin_bound_is_reached_by_values_spread_over_the_whole_range():
    # Steps of gamma ** 0.5 hit every bin between min_value and max_value; values outside the
    # range add no bin of their own.
    histogram = Histogram(LATENCY)
    value = LATENCY.min_value / 100
    while value < LATENCY.max_value * 100:
        histogram.add(value)
        value *= math.sqrt(LATENCY.gamma)
    assert histogram.stored_bins == LATENCY.bin_limit == 1037
    assert TOKENS.bin_limit == 923


def test_values_outside_the_range_are_clamped():
    histogram = histogram_of([1e-6, 5e-5, 1e9])  # two below min_value, one above max_value
    assert histogram.quantile(0.0) == 0.0
    assert histogram.quantile(0.5) == 0.0
    top = histogram.quantile(1.0)
    assert top == pytest.approx(LATENCY.max_value, rel=LATENCY.relative_accuracy)
    assert histogram.total == pytest.approx(1e9 + 5e-5 + 1e-6)  # the sum keeps the values added


@pytest.mark.parametrize("bad", [-1.0, -1e-9, math.nan, math.inf])
def test_negative_nan_and_infinite_values_are_rejected(bad):
    histogram = Histogram(LATENCY)
    with pytest.raises(ValueError, match="histogram values must be"):
        histogram.add(bad)
    assert histogram.count == 0


@pytest.mark.parametrize("q", [-0.1, 1.5, math.nan])
def test_a_quantile_outside_0_1_is_rejected(q):
    with pytest.raises(ValueError, match="quantile q must be between 0 and 1"):
        histogram_of([1.0]).quantile(q)


def test_histograms_of_different_layouts_do_not_merge():
    with pytest.raises(ValueError, match="cannot merge histograms of different layouts"):
        histogram_of([1.0], TOKENS).merge_into(Histogram(LATENCY))


def test_equal_layouts_built_separately_do_merge():
    target = Histogram(HistogramLayout(1e-4, 1e5))
    histogram_of([1.0]).merge_into(target)
    assert target.count == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((0.0, 1.0), "0 < min_value < max_value < inf"),
        ((2.0, 1.0), "0 < min_value < max_value < inf"),
        ((1.0, math.inf), "0 < min_value < max_value < inf"),
        ((1.0, 10.0, 0.0), "relative_accuracy must be between 0 and 1"),
        ((1.0, 10.0, 1.0), "relative_accuracy must be between 0 and 1"),
    ],
)
def test_a_bad_layout_is_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        HistogramLayout(*arguments)
