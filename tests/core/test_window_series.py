import math

import pytest
from hypothesis import given, settings, strategies as st

from canaryproxy.core.metrics import METRICS
from canaryproxy.core.types import Role, ErrorKind, Outcome
from canaryproxy.core.window import MAX_SERIES_POINTS, RoleWindow, WindowConfig

DASHBOARD = ("request_rate", "error_rate", "latency_p95", "ttft_p95", "tokens_per_request",
             "guardrail_rate")


def outcome(**fields) -> Outcome:
    return Outcome(role=Role.CANARY, started=0.0, **{"status": 200, "latency": 1.0, **fields})


# --- by hand -----------------------------------------------------------------------------------------


def test_points_are_aligned_steps_of_closed_buckets_oldest_first():
    window = RoleWindow(WindowConfig(1.0, 20.0))
    window.record(outcome(latency=0.5), 100.2)  # step 100..101
    window.record(outcome(latency=1.5, status=500), 103.9)  # step 102..103
    window.record(outcome(latency=9.0), 105.5)  # bucket 105: still open at t=105.7
    series = window.series(10.0, 2.0, 105.7, DASHBOARD)
    # Closed buckets end at 104; steps of 2 aligned to even buckets: 96-97 .. 104 (partial).
    assert series.step == 2.0
    assert series.ends == (98.0, 100.0, 102.0, 104.0, 105.0)
    assert series.values["request_rate"] == (None, None, 0.5, 0.5, None)
    assert series.values["error_rate"] == (None, None, 0.0, 1.0, None)
    assert series.values["latency_p95"][2] == pytest.approx(0.5, rel=0.01)


def test_the_newest_point_rates_over_the_buckets_it_holds():
    window = RoleWindow(WindowConfig(1.0, 60.0))
    for i in range(30):
        window.record(outcome(), 120.0 + i / 10)  # 10 per second in buckets 120..122
    series = window.series(30.0, 10.0, 123.5, ["request_rate"])
    # The newest step (120..129) holds the closed buckets 120..122: 30 requests in 3 s.
    assert series.ends[-1] == 123.0
    assert series.values["request_rate"][-1] == pytest.approx(10.0)
    assert len(series.ends) == 3


def test_a_point_with_no_samples_is_none_for_every_metric():
    series = RoleWindow(WindowConfig(1.0, 60.0)).series(60.0, 5.0, 1000.0, list(METRICS))
    assert len(series.ends) == 12
    assert all(value is None for values in series.values.values() for value in values)


def test_requests_the_version_is_not_judged_on_count_in_the_rate_only():
    window = RoleWindow(WindowConfig(1.0, 10.0))
    window.record(outcome(error=ErrorKind.CLIENT_DISCONNECT, status=0, latency=3.0), 10.5)
    series = window.series(2.0, 2.0, 12.0, DASHBOARD)
    assert series.values["request_rate"] == (0.5,)
    assert series.values["error_rate"] == (None,)
    assert series.values["latency_p95"] == (None,)


def test_a_late_record_in_a_step_already_drawn_is_in_the_next_series():
    window = RoleWindow(WindowConfig(1.0, 30.0))
    window.record(outcome(prompt_tokens=10, completion_tokens=10), 100.5)
    first = window.series(30.0, 5.0, 112.0, ["tokens_per_request"])
    assert first.values["tokens_per_request"][-3] == 20.0  # step 100..104
    window.record(outcome(prompt_tokens=30, completion_tokens=30), 103.5)  # late, same step
    second = window.series(30.0, 5.0, 112.0, ["tokens_per_request"])
    assert second.values["tokens_per_request"][-3] == 40.0


def test_an_expired_step_already_drawn_empties():
    window = RoleWindow(WindowConfig(1.0, 10.0))  # the ring keeps 11 buckets
    window.record(outcome(), 100.5)
    assert window.series(10.0, 5.0, 106.0, ["request_rate"]).values["request_rate"] == (0.2, None)
    window.record(outcome(), 112.5)  # bucket 100 is now 12 behind the newest: expired
    # Its slot (100 % 11) was not reused, yet a series of the same time no longer sees it, like a
    # snapshot would not.
    assert window.series(10.0, 5.0, 106.0, ["request_rate"]).values["request_rate"] == (None, None)
    assert window.snapshot(10.0, 106.0).requests == 0


def test_a_new_step_or_metric_list_gives_its_own_points():
    window = RoleWindow(WindowConfig(1.0, 30.0))
    for second in range(20):
        window.record(outcome(latency=1.0 + second), 100.5 + second)
    five = window.series(20.0, 5.0, 120.0, ["latency_p95"])
    ten = window.series(20.0, 10.0, 120.0, ["latency_p95", "request_rate"])
    assert five.values["latency_p95"] == pytest.approx((5.0, 10.0, 15.0, 20.0), rel=0.01)
    assert ten.values["latency_p95"] == pytest.approx((10.0, 20.0), rel=0.01)
    assert ten.values["request_rate"] == (1.0, 1.0)


def test_bucket_fractions_line_up():
    window = RoleWindow(WindowConfig(0.1, 3.0))
    window.record(outcome(), 10.05)
    series = window.series(3.0, 0.3, 10.45, ["request_rate"])
    assert len(series.ends) == 10
    assert series.step == pytest.approx(0.3)
    assert series.ends[-1] == pytest.approx(10.4)  # buckets 102..103 closed, 104 open
    assert series.values["request_rate"][-2] == pytest.approx(1 / 0.3)  # step 99..101


@pytest.mark.parametrize(
    ("span", "step", "message"),
    [
        (60.0, 0.0, "series step must be a positive number of seconds, got 0.0"),
        (60.0, math.nan, "series step must be a positive number of seconds, got nan"),
        (60.0, 1.5, r"series step 1.5s is not a whole number of 1s buckets"),
        (math.inf, 5.0, "series span must be a positive number of seconds, got inf"),
        (1200.0, 5.0, r"series span 1200s is longer than the 900s the window keeps"),
        (5.0, 10.0, "series span 5s is shorter than its step 10s"),
        (900.0, 1.0, f"makes 900 points; at most {MAX_SERIES_POINTS}: take a longer step"),
    ],
)
def test_bad_spans_and_steps_say_what_is_wrong(span, step, message):
    with pytest.raises(ValueError, match=message):
        RoleWindow(WindowConfig(1.0, 900.0)).series(span, step, 1000.0, DASHBOARD)


def test_an_unknown_metric_is_refused_even_without_data():
    with pytest.raises(KeyError, match="unknown metric 'error_ratio'; known metrics: error_rate"):
        RoleWindow(WindowConfig()).series(60.0, 5.0, 1000.0, ["error_ratio"])


# --- against a brute-force count --------------------------------------------------------------------

CONFIGS = [WindowConfig(1.0, 10.0), WindowConfig(0.25, 3.0), WindowConfig(1.0, 24.0)]

outcomes = st.builds(
    outcome,
    status=st.sampled_from([0, 200, 404, 500, 503]),
    latency=st.floats(min_value=0.0, max_value=100.0),
    error=st.none() | st.sampled_from(ErrorKind),
    ttft=st.none() | st.floats(min_value=0.0, max_value=10.0),
    prompt_tokens=st.none() | st.integers(0, 1000),
    completion_tokens=st.none() | st.integers(0, 1000),
    guardrails=st.sampled_from([(), ("output",), ("input", "pii")]),
    cost_usd=st.none() | st.floats(min_value=0.0, max_value=1.0),
)


@st.composite
def scenarios(draw):
    """Records and series calls on a moving clock, one in four late by up to 1.5 ring lengths (a
    late record, a series of the past); series take one of two steps, so kept points are reused,
    invalidated, and thrown away."""
    config = draw(st.sampled_from(CONFIGS))
    b = config.bucket_seconds
    steps = draw(st.lists(st.integers(1, config.span_buckets), min_size=2, max_size=2))
    pool = draw(st.lists(outcomes, min_size=1, max_size=5))
    ring_seconds = config.ring_size * b
    clock = draw(st.floats(min_value=0.0, max_value=50.0))
    operations = []
    for _ in range(draw(st.integers(1, 60))):
        clock += draw(st.integers(0, 6)) * b / 4
        late = 0.0 if draw(st.integers(0, 3)) else draw(st.floats(0.0, 1.5 * ring_seconds))
        if draw(st.integers(0, 2)) == 0:
            step = draw(st.sampled_from(steps))
            points = draw(st.integers(1, config.span_buckets // step))
            operations.append(("series", points * step * b, step * b, clock - late))
        else:
            operations.append(("record", draw(st.sampled_from(pool)), clock - late))
    return config, operations


class Kept:
    """Every record the ring keeps by definition: within `ring_size` of the newest bucket."""

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self.records: list[tuple[Outcome, int]] = []
        self.newest = -math.inf

    def record(self, outcome: Outcome, t: float) -> None:
        index = int(t // self.config.bucket_seconds)
        if index > self.newest - self.config.ring_size:
            self.newest = max(self.newest, index)
            self.records.append((outcome, index))

    def between(self, low: int, high: int) -> list[Outcome]:
        oldest_kept = self.newest - self.config.ring_size
        return [o for o, index in self.records if low <= index <= high and index > oldest_kept]


def expected_point(outcomes: list[Outcome], buckets: int, config: WindowConfig) -> dict:
    """The metrics of exactly these outcomes over `buckets` buckets: a snapshot of a fresh window."""
    fresh = RoleWindow(config)
    for o in outcomes:
        fresh.record(o, 0.0)
    snapshot = fresh.snapshot(buckets * config.bucket_seconds, 0.0)
    return {name: snapshot.metric(name).value for name in METRICS}


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_every_point_equals_the_metrics_of_the_outcomes_in_its_buckets(scenario):
    config, operations = scenario
    b = config.bucket_seconds
    window, kept = RoleWindow(config), Kept(config)
    for operation in operations:
        if operation[0] == "record":
            _, o, t = operation
            window.record(o, t)
            kept.record(o, t)
            continue
        _, span, step, t = operation
        series = window.series(span, step, t, list(METRICS))
        step_buckets, newest_closed = round(step / b), int(t // b) - 1
        first_step = newest_closed // step_buckets - round(span / step) + 1
        for point, end in enumerate(series.ends):
            low = (first_step + point) * step_buckets
            high = min(low + step_buckets - 1, newest_closed)
            assert end == pytest.approx((high + 1) * b)
            want = expected_point(kept.between(low, high), high - low + 1, config)
            for name, value in want.items():
                got = series.values[name][point]
                assert got == (None if value is None else pytest.approx(value, rel=1e-9, abs=1e-12)), name
