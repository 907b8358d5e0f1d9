import json
import math
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from canaryproxy.core.histogram import Histogram
from canaryproxy.core.metrics import METRICS
from canaryproxy.core.types import LIVE_ROLES, ErrorKind, Feedback, Outcome, Role
from canaryproxy.core.window import (
    COUNT_LAYOUT,
    LATENCY_LAYOUT,
    MAX_RUNNING_SPANS,
    RoleWindow,
    WindowConfig,
    Windows,
    whole_buckets,
)

# Small rings keep the examples fast and make expiry, slot reuse and late records common.
CONFIGS = [
    WindowConfig(1.0, 10.0),
    WindowConfig(0.25, 2.0),
    WindowConfig(1.0, 3.0),
    WindowConfig(1.0, 1.0),
    WindowConfig(1.0, 30.0),
]

optional_seconds = st.none() | st.floats(min_value=0.0, max_value=100.0)
optional_count = st.none() | st.integers(min_value=0, max_value=100_000)

outcomes = st.builds(
    Outcome,
    role=st.sampled_from(LIVE_ROLES),
    started=st.just(0.0),
    status=st.sampled_from([0, 200, 204, 301, 404, 408, 413, 429, 500, 502, 503, 504]),
    latency=st.floats(min_value=0.0, max_value=1000.0),
    error=st.none() | st.sampled_from(ErrorKind),
    truncated=st.booleans(),
    ttft=optional_seconds,
    prompt_tokens=optional_count,
    completion_tokens=optional_count,
    usage_missing=st.booleans(),
    estimated_tokens=optional_count,
    output_chars=optional_count,
    schema_ok=st.none() | st.booleans(),
    schema_skipped=st.booleans(),
    guardrails=st.lists(st.sampled_from(["input", "output", "pii"]), max_size=3).map(tuple),
    cost_usd=st.none() | st.floats(min_value=0.0, max_value=1.0),
    inspect_error=st.booleans(),
)


@st.composite
def scenarios(draw):
    """A config and a sequence of records and snapshots. A clock moves forward; each operation
    happens at the clock or, one time in four, up to 1.5 ring lengths earlier (late records,
    snapshots of the past), so the times cover about two ring lengths and every path of the ring
    is taken.
    Snapshots reuse a few spans, as rules do, so running tallies slide as well as get rebuilt.
    One snapshot in three is only since the last weight change (`since`), which moves to the
    clock now and then, as a weight does. Records draw from a small pool of outcomes, which leaves
    room for long sequences."""
    config = draw(st.sampled_from(CONFIGS))
    ring_seconds = config.ring_size * config.bucket_seconds
    # The longest span is always among them: it is the one that sees slots reused under it.
    spans = [config.span_buckets, *draw(st.lists(st.integers(1, config.span_buckets), max_size=2))]
    pool = draw(st.lists(outcomes, min_size=1, max_size=6))
    clock = draw(st.floats(min_value=0.0, max_value=100.0))
    quarter_bucket = config.bucket_seconds / 4
    operations = []
    since = clock
    for _ in range(draw(st.integers(min_value=1, max_value=80))):
        if draw(st.integers(0, 9)) == 0:
            since = clock  # the weight changes
        clock += draw(st.integers(min_value=0, max_value=8)) * quarter_bucket
        on_time = draw(st.integers(0, 3)) > 0
        late = 0.0 if on_time else draw(st.floats(min_value=0.0, max_value=1.5 * ring_seconds))
        if draw(st.integers(0, 2)) == 0:
            buckets = draw(st.sampled_from(spans))
            # A span that is not a whole number of buckets covers the next whole number.
            shortfall = draw(st.sampled_from([0.0, 0.5])) * config.bucket_seconds
            role = draw(st.sampled_from(LIVE_ROLES))
            span = buckets * config.bucket_seconds - shortfall
            only_since = since if draw(st.integers(0, 2)) == 0 else None
            operations.append(("snapshot", role, buckets, span, clock - late, only_since))
        else:
            operations.append(("record", draw(st.sampled_from(pool)), clock - late))
    return config, operations


class BruteForce:
    """Keeps every raw outcome and answers from the definition: each role's ring keeps the buckets
    within `ring_size` of the newest bucket recorded on that role; a record for an older bucket is
    dropped."""

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self.kept: list[tuple[Outcome, int]] = []
        self.newest = {role: -math.inf for role in LIVE_ROLES}
        self.dropped = Counter()

    def index(self, t: float) -> int:
        return int(t // self.config.bucket_seconds)

    def record(self, outcome: Outcome, t: float) -> None:
        index = self.index(t)
        if index <= self.newest[outcome.role] - self.config.ring_size:
            self.dropped[outcome.role] += 1
            return
        self.newest[outcome.role] = max(self.newest[outcome.role], index)
        self.kept.append((outcome, index))

    def outcomes(self, role: Role, span_buckets: int, t: float, since: float | None = None) -> list[Outcome]:
        low = self.low(role, span_buckets, t, since)
        return [o for o, index in self.kept if o.role is role and low < index <= self.index(t)]

    def low(self, role: Role, span_buckets: int, t: float, since: float | None = None) -> int:
        """The bucket a snapshot starts after: the span's, the ring's, or `since`'s when later."""
        now = self.index(t)
        low = max(now - span_buckets, self.newest[role] - self.config.ring_size)
        return low if since is None else max(low, min(self.index(since), now))


def histogram(layout, values) -> Histogram:
    result = Histogram(layout)
    for value in values:
        result.add(value)
    return result


def expected_fields(selected: list[Outcome]) -> dict:
    judged = [o for o in selected if o.counts_for_version]
    return {
        "requests": len(selected),
        "judged": len(judged),
        "failed": sum(o.failed for o in judged),
        "status_classes": dict(Counter(o.status_class for o in selected)),
        "errors": dict(Counter(o.error.value for o in selected if o.error is not None)),
        "truncated": sum(o.truncated for o in judged),
        "schema_checked": sum(o.schema_ok is not None for o in judged),
        "schema_failures": sum(o.schema_ok is False for o in judged),
        "schema_skipped": sum(o.schema_skipped for o in judged),
        "guardrails": dict(Counter(source for o in judged for source in o.guardrails)),
        "guardrail_requests": sum(bool(o.guardrails) for o in judged),
        "usage_missing": sum(o.usage_missing for o in judged),
        "inspect_errors": sum(o.inspect_error for o in judged),
        "prompt_tokens": sum(o.prompt_tokens for o in judged if o.prompt_tokens is not None),
        "completion_tokens": sum(
            o.completion_tokens for o in judged if o.completion_tokens is not None),
        "token_requests": sum(o.completion_tokens is not None for o in judged),
        "tokens_estimated": sum(o.usage_missing and o.completion_tokens is not None for o in judged),
        "estimated_tokens": sum(o.estimated_tokens for o in judged if o.estimated_tokens is not None),
        "estimated_token_requests": sum(o.estimated_tokens is not None for o in judged),
        "output_chars": sum(o.output_chars for o in judged if o.output_chars is not None),
        "output_chars_count": sum(o.output_chars is not None for o in judged),
        "cost_count": sum(o.cost_usd is not None for o in judged),
    }


def expected_histograms(selected: list[Outcome]) -> dict[str, Histogram]:
    judged = [o for o in selected if o.counts_for_version]
    return {
        "latency": histogram(LATENCY_LAYOUT, (o.latency for o in judged)),
        "ttft": histogram(LATENCY_LAYOUT, (o.ttft for o in judged if o.ttft is not None)),
        "output_tokens": histogram(
            COUNT_LAYOUT, (o.completion_tokens for o in judged if o.completion_tokens is not None)),
        "output_length": histogram(
            COUNT_LAYOUT, (o.output_chars for o in judged if o.output_chars is not None)),
    }


def assert_snapshot_matches(snapshot, selected: list[Outcome], span: float) -> None:
    assert snapshot.span == span
    for name, value in expected_fields(selected).items():
        assert getattr(snapshot, name) == value, name
    judged = [o for o in selected if o.counts_for_version]
    # Float sums slide (added and subtracted), so they match up to rounding.
    cost = math.fsum(o.cost_usd for o in judged if o.cost_usd is not None)
    assert snapshot.cost_usd == pytest.approx(cost, rel=1e-9, abs=1e-9)
    for name, want in expected_histograms(selected).items():
        got = getattr(snapshot, name)
        assert got.bins() == want.bins(), name
        assert got.count == want.count, name
        assert got.total == pytest.approx(want.total, rel=1e-9, abs=1e-6), name


@settings(max_examples=300)
@given(scenarios())
def test_snapshots_equal_a_brute_force_count_of_the_raw_outcomes(scenario):
    config, operations = scenario
    windows = Windows(config)
    brute = BruteForce(config)
    for operation in operations:
        if operation[0] == "record":
            _, outcome, t = operation
            windows.record(outcome, t)
            brute.record(outcome, t)
        else:
            _, role, buckets, span, t, since = operation
            snapshot = windows.snapshot(role, span, t, since)
            expected = brute.outcomes(role, buckets, t, since)
            # Cut short by `since` (a weight change inside the span), the span is what is left of it.
            cut = since is not None and brute.index(since) > brute.low(role, buckets, t)
            covered = max(brute.index(t) - brute.low(role, buckets, t, since), 1) if cut else buckets
            assert_snapshot_matches(snapshot, expected, covered * config.bucket_seconds)
    for role in LIVE_ROLES:
        assert windows[role].dropped_late == brute.dropped[role]


def llm_outcome(role: Role = Role.CANARY, **fields) -> Outcome:
    return Outcome(role=role, started=0.0, **{"status": 200, "latency": 1.0, **fields})


def test_a_late_record_under_a_running_tally_is_in_the_next_snapshot():
    window = RoleWindow(WindowConfig(1.0, 10.0))
    window.record(llm_outcome(latency=1.0), 100.5)
    assert window.snapshot(5.0, 103.5).requests == 1  # the span's running tally now holds 99..102
    window.record(llm_outcome(latency=2.0), 101.5)  # late: its bucket is in that tally
    snapshot = window.snapshot(5.0, 103.5)
    assert snapshot.requests == 2
    assert snapshot.latency.total == 3.0


def test_a_reused_slot_under_a_running_tally_leaves_it():
    window = RoleWindow(WindowConfig(1.0, 10.0))  # 11 slots
    window.record(llm_outcome(), 100.5)
    window.record(llm_outcome(), 105.5)
    assert window.snapshot(10.0, 109.5).requests == 2  # the running tally holds buckets 100..108
    window.record(llm_outcome(), 111.5)  # bucket 111 takes bucket 100's slot
    # The tally slides by one bucket (not rebuilt): bucket 100 must already be out of it.
    assert window.snapshot(10.0, 110.5).requests == 1
    assert window.snapshot(10.0, 111.5).requests == 2


def test_more_spans_than_running_tallies_stay_exact():
    config = WindowConfig(1.0, 30.0)
    windows, brute = Windows(config), BruteForce(config)
    spans = range(1, MAX_RUNNING_SPANS + 5)
    for step in range(120):
        t = 100.0 + step / 2
        for outcome_t in (t, t - 7.0):  # one on time, one late (under most running tallies)
            outcome = llm_outcome(latency=0.1 * (step % 7 + 1), completion_tokens=step)
            windows.record(outcome, outcome_t)
            brute.record(outcome, outcome_t)
        span = spans[step % len(spans)]
        expected = brute.outcomes(Role.CANARY, span, t)
        assert_snapshot_matches(windows.snapshot(Role.CANARY, span, t), expected, span)


def test_outcomes_older_than_the_ring_are_dropped_and_counted():
    window = RoleWindow(WindowConfig(1.0, 10.0))
    window.record(llm_outcome(), 120.0)
    window.record(llm_outcome(), 109.0)  # 11 buckets before the newest: older than the ring
    window.record(llm_outcome(), 110.0)  # 10 buckets before: still kept
    assert window.dropped_late == 1
    assert window.snapshot(10.0, 120.0).requests == 1  # 110 is kept but outside the 10 s span
    assert window.snapshot(10.0, 119.0).requests == 1  # (109, 119]: only 110


def test_every_catalogue_metric_is_computable_and_nothing_else_is():
    snapshot = Windows().snapshot(Role.CANARY, 60.0, 1000.0)
    for name in METRICS:
        assert snapshot.metric(name).samples == 0
        assert snapshot.metric(name).value is None, name
    known = "known metrics: error_rate, availability, latency_p50"
    with pytest.raises(KeyError, match=f"unknown metric 'error_ratio'; {known}"):
        snapshot.metric("error_ratio")


def test_metrics_of_a_small_window_by_hand():
    windows = Windows()
    t = 1000.25
    windows.record(llm_outcome(latency=1.0, ttft=0.2, prompt_tokens=100, completion_tokens=50,
                               estimated_tokens=46, output_chars=200, schema_ok=True, cost_usd=0.01), t)
    windows.record(llm_outcome(status=500, latency=2.0), t)
    windows.record(llm_outcome(latency=3.0, guardrails=("output", "pii"), prompt_tokens=20,
                               completion_tokens=10, estimated_tokens=10, output_chars=40, schema_ok=False,
                               usage_missing=True, cost_usd=0.03), t)
    # The client hung up: counted as a request, in its status class and error kind, nowhere else.
    windows.record(llm_outcome(latency=100.0, error=ErrorKind.CLIENT_DISCONNECT,
                               completion_tokens=1, output_chars=3, cost_usd=9.0,
                               guardrails=("input",)), t)
    windows.record(llm_outcome(Role.STABLE, status=500), t)
    windows.record_feedback(Feedback(role=Role.CANARY, request_id="r", routed_at=t, weight=5.0, key_hash=None,
                                     name="thumbs", value=False, negative=True, received_at=t + 20), t)

    snapshot = windows.snapshot(Role.CANARY, 60.0, t + 30)
    values = {name: snapshot.metric(name) for name in METRICS}
    exact = {
        "error_rate": (1 / 3, 3),
        "availability": (2 / 3, 3),
        "latency_mean": (2.0, 3),
        "tokens_per_request": (90.0, 2),
        "output_tokens_per_request": (30.0, 2),
        "prompt_tokens_per_request": (60.0, 2),
        "output_length_mean": (120.0, 2),
        "schema_failure_rate": (0.5, 2),
        "guardrail_per_minute": (2.0, 3),
        "guardrail_rate": (1 / 3, 3),
        "truncation_rate": (0.0, 3),
        "usage_missing_rate": (0.5, 2),
        "tokens_estimated_rate": (0.5, 2),
        "estimated_tokens_per_request": (28.0, 2),
        "cost_per_request": (0.02, 2),
        "request_rate": (4 / 60, 4),
        "negative_feedback_rate": (1 / 3, 3),
        "negative_feedback_per_minute": (1.0, 3),
        "negative_feedback_share": (1.0, 1),
        "downstream_error_rate": (0.0, 3),
        "downstream_errors_per_minute": (0.0, 3),
    }
    quantiles = {
        "latency_p50": (2.0, 3),
        "latency_p95": (3.0, 3),
        "latency_p99": (3.0, 3),
        "ttft_p50": (0.2, 1),
        "ttft_p95": (0.2, 1),
        "ttft_p99": (0.2, 1),
        "output_tokens_p95": (50.0, 2),
        "output_length_p95": (200.0, 2),
    }
    assert exact.keys() | quantiles.keys() == METRICS.keys()
    for name, (value, samples) in exact.items():
        assert (values[name].value, values[name].samples) == (pytest.approx(value), samples), name
    for name, (value, samples) in quantiles.items():
        assert values[name].value == pytest.approx(value, rel=0.01), name
        assert values[name].samples == samples, name
    assert (snapshot.requests, snapshot.status_classes, snapshot.errors) == (
        4, {"2xx": 3, "5xx": 1}, {"client_disconnect": 1})


def test_summary_is_json_with_counts_and_every_metric():
    windows = Windows()
    windows.record(llm_outcome(ttft=0.1, completion_tokens=5, cost_usd=0.001), 10.0)
    summary = json.loads(json.dumps(windows.snapshot(Role.CANARY, 300.0, 10.0).summary()))
    assert summary["requests"] == 1
    assert summary["span_seconds"] == 300.0
    assert summary["metrics"].keys() == METRICS.keys()
    assert summary["metrics"]["error_rate"] == {"value": 0.0, "samples": 1}
    assert summary["metrics"]["ttft_p95"]["value"] == pytest.approx(0.1, rel=0.01)


def test_an_idle_ring_holds_no_histogram_bins():
    window = RoleWindow(WindowConfig(1.0, 10.0))  # 11 slots
    for t in (100.0, 500.0, 10_000.0):
        for span in (1.0, 5.0, 10.0):
            assert window.snapshot(span, t).requests == 0
    assert window.stored_bins == 0


def test_idle_seconds_add_no_bins_and_a_reused_slot_gives_its_bins_back():
    window = RoleWindow(WindowConfig(1.0, 10.0))  # 11 slots
    for second in range(10):  # four bins a bucket: latency, ttft, tokens, characters
        outcome = llm_outcome(latency=1.0 + second, ttft=0.1, completion_tokens=7, output_chars=9)
        window.record(outcome, 100.5 + second)
    assert window.stored_bins == 40
    window.snapshot(10.0, 109.5)  # a running tally of buckets 100..108: 9 + 1 + 1 + 1 bins
    assert window.stored_bins == 40 + 12
    for t in (150.0, 200.0, 300.0):  # idle: the running tally slides onto empty buckets
        snapshot = window.snapshot(10.0, t)
        assert [h.stored_bins for h in (snapshot.latency, snapshot.ttft)] == [0, 0]
    assert window.stored_bins == 40
    window.record(llm_outcome(latency=1.0), 400.5)  # takes the slot of bucket 103 (4 bins)
    assert window.stored_bins == 36 + 1


def test_stored_bins_never_exceed_the_configured_bound():
    config = WindowConfig(1.0, 3.0)  # 4 slots
    window = RoleWindow(config)
    per_tally = 2 * LATENCY_LAYOUT.bin_limit + 2 * COUNT_LAYOUT.bin_limit
    bound = (config.ring_size + MAX_RUNNING_SPANS) * per_tally
    # Values stepping by gamma fill every bin of every histogram, in every bucket.
    step = math.sqrt(LATENCY_LAYOUT.gamma)
    seconds = [LATENCY_LAYOUT.min_value * step**i for i in range(2 * LATENCY_LAYOUT.bin_limit + 2)]
    counts = [round(step**i) for i in range(2 * COUNT_LAYOUT.bin_limit + 2)]
    for bucket in range(6):
        for value, count in zip(seconds, counts * 2):
            outcome = llm_outcome(latency=value, ttft=value,
                                  completion_tokens=count, output_chars=count)
            window.record(outcome, bucket + 0.5)
        window.snapshot(1.0, bucket + 0.5)
        window.snapshot(3.0, bucket + 0.5)
        assert window.stored_bins <= bound
    # Every slot is full: the ring's share of the bound is nearly reached (small token counts are
    # whole numbers and cannot reach every bin below 50).
    assert window.stored_bins >= config.ring_size * per_tally * 0.85


@pytest.mark.parametrize("span", [0.0, -1.0, math.nan, math.inf])
def test_a_span_that_is_not_a_positive_number_is_rejected(span):
    with pytest.raises(ValueError, match="snapshot span must be a positive number of seconds"):
        Windows().snapshot(Role.STABLE, span, 1000.0)


def test_a_span_longer_than_the_ring_is_rejected():
    windows = Windows(WindowConfig(1.0, 900.0))
    assert windows.snapshot(Role.STABLE, 900.0, 1000.0).span == 900.0
    message = "snapshot span 901s is longer than the 900s the window keeps"
    with pytest.raises(ValueError, match=message):
        windows.snapshot(Role.STABLE, 901.0, 1000.0)


@pytest.mark.parametrize(
    ("bucket", "span", "message"),
    [
        (0.0, 900.0, "bucket_seconds must be a positive number of seconds, got 0.0"),
        (math.nan, 900.0, "bucket_seconds must be a positive number of seconds, got nan"),
        (1.0, 0.5, r"span_seconds must be at least bucket_seconds \(1s\) and finite, got 0.5"),
        (1.0, math.inf, "span_seconds must be at least bucket_seconds"),
    ],
)
def test_a_bad_config_is_rejected(bucket, span, message):
    with pytest.raises(ValueError, match=message):
        WindowConfig(bucket, span)


def test_default_config_rings_fifteen_minutes_of_seconds():
    assert WindowConfig().ring_size == 901


@pytest.mark.parametrize(
    ("seconds", "bucket", "buckets"),
    [
        (900.0, 1.0, 900),
        (0.3, 0.1, 3),
        (0.7, 0.1, 7),
        (0.5, 1.0, 1),
        (1.5, 1.0, 2),
        (60.0, 0.25, 240),
    ],
)
def test_whole_buckets_rounds_float_noise_and_covers_the_rest(seconds, bucket, buckets):
    assert whole_buckets(seconds, bucket) == buckets
