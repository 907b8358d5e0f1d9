"""Operator rules: sustained-for semantics, insufficient data, stable comparisons, reasons."""

from __future__ import annotations

from typing import Any, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canaryproxy.core.metrics import MetricValue, Unit
from canaryproxy.core.rules import Comparison, Rule, RuleEngine, format_value
from canaryproxy.core.types import Role, Status


class TableSource:
    """Metric values looked up by (role, metric): tests set what each evaluation should see."""

    def __init__(self) -> None:
        self.values: dict[tuple[Role, str], MetricValue] = {}

    def set(self, role: Role, metric: str, value: float | None, samples: int) -> None:
        self.values[(role, metric)] = MetricValue(value, samples)

    late_by = 0.0  # late metrics: a table has no window to shift

    def metric(self, role: Role, name: str, window: float, t: float, same_weight: bool = False) -> MetricValue:
        return self.values.get((role, name), MetricValue(None, 0))  # a metric nothing counted: no value


def errors_rule(for_: float = 300.0, **overrides: Any) -> Rule:
    """The brief's `errors` rule: error_rate above 0.05 over 1m, with `overrides` applied."""
    fields: dict[str, Any] = dict(
        name="errors", metric="error_rate", comparison="above", threshold=0.05, window=60.0, for_=for_
    )
    return Rule(**{**fields, **overrides})


def source_with(canary: tuple[float | None, int], stable: tuple[float | None, int] = (0.009, 6210),
                metric: str = "error_rate") -> TableSource:
    source = TableSource()
    source.set(Role.CANARY, metric, *canary)
    source.set(Role.STABLE, metric, *stable)
    return source


BREACH = (0.213, 340)
HEALTHY = (0.01, 340)
THIN = (0.5, 7)


def statuses(engine: RuleEngine, steps: Sequence[tuple[float, tuple[float | None, int]]]) -> list[Status]:
    """Evaluate the single-rule engine at each (t, canary value) and return the statuses."""
    result = []
    for t, canary in steps:
        [verdict] = engine.evaluate(source_with(canary), t)
        result.append(verdict.status)
    return result


# --- sustained-for ----------------------------------------------------------------------------------


def test_a_breach_is_pending_until_it_has_held_for_the_full_duration_then_fires() -> None:
    engine = RuleEngine([errors_rule(for_=300.0)])
    got = statuses(engine, [(0.0, BREACH), (150.0, BREACH), (299.0, BREACH), (300.0, BREACH)])
    assert got == [Status.PENDING, Status.PENDING, Status.PENDING, Status.FAIL]


def test_for_zero_fires_on_the_first_breach() -> None:
    engine = RuleEngine([errors_rule(for_=0.0)])
    assert statuses(engine, [(10.0, BREACH)]) == [Status.FAIL]


def test_a_healthy_evaluation_ends_the_streak_and_the_next_breach_starts_over() -> None:
    engine = RuleEngine([errors_rule(for_=300.0)])
    evaluations = [(0.0, BREACH), (200.0, HEALTHY), (210.0, BREACH), (400.0, BREACH), (510.0, BREACH)]
    assert statuses(engine, evaluations) == [
        Status.PENDING, Status.PASS, Status.PENDING, Status.PENDING, Status.FAIL
    ]


def test_thin_data_is_inconclusive_and_never_fires_even_past_the_for_duration() -> None:
    engine = RuleEngine([errors_rule(for_=300.0)])
    got = statuses(engine, [(0.0, BREACH), (100.0, THIN), (400.0, THIN), (900.0, (None, 0))])
    assert got == [Status.PENDING, Status.INCONCLUSIVE, Status.INCONCLUSIVE, Status.INCONCLUSIVE]


def test_thin_data_does_not_break_a_streak_so_thinning_traffic_cannot_escape_a_breach() -> None:
    engine = RuleEngine([errors_rule(for_=300.0)])
    got = statuses(engine, [(0.0, BREACH), (100.0, THIN), (250.0, THIN), (310.0, BREACH)])
    assert got == [Status.PENDING, Status.INCONCLUSIVE, Status.INCONCLUSIVE, Status.FAIL]


def test_thin_data_does_not_count_as_healthy_evidence_for_a_breach_that_never_started() -> None:
    engine = RuleEngine([errors_rule(for_=300.0)])
    got = statuses(engine, [(0.0, THIN), (600.0, BREACH), (899.0, BREACH), (900.0, BREACH)])
    assert got == [Status.INCONCLUSIVE, Status.PENDING, Status.PENDING, Status.FAIL]


def test_reset_forgets_every_streak() -> None:
    engine = RuleEngine([errors_rule(for_=300.0)])
    assert statuses(engine, [(0.0, BREACH)]) == [Status.PENDING]
    engine.reset()
    assert statuses(engine, [(300.0, BREACH), (600.0, BREACH)]) == [Status.PENDING, Status.FAIL]


# One evaluation: (seconds since the previous one, what the canary shows).
_evaluations = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=200.0), st.sampled_from(["breach", "healthy", "thin"])),
    max_size=40,
)


@given(for_=st.sampled_from([0.0, 60.0, 300.0]), evaluations=_evaluations)
def test_fires_exactly_when_every_conclusive_evaluation_since_the_streak_began_breached(
    for_: float, evaluations: list[tuple[float, str]]
) -> None:
    """Reference: the streak starts at the first breach after the last healthy evaluation; thin
    evaluations are skipped; the rule fires at a breach at least `for_` after the streak start."""
    engine = RuleEngine([errors_rule(for_=for_)])
    canary_for = {"breach": BREACH, "healthy": HEALTHY, "thin": THIN}
    expected_for = {"healthy": Status.PASS, "thin": Status.INCONCLUSIVE}
    t, streak_start = 0.0, None
    for gap, kind in evaluations:
        t += gap
        [verdict] = engine.evaluate(source_with(canary_for[kind]), t)
        if kind == "healthy":
            streak_start = None
        elif kind == "breach" and streak_start is None:
            streak_start = t
        if kind == "breach":
            assert streak_start is not None
            expected = Status.FAIL if t - streak_start >= for_ else Status.PENDING
        else:
            expected = expected_for[kind]
        assert verdict.status is expected


# --- reasons and details ----------------------------------------------------------------------------


def test_a_firing_verdict_says_what_by_how_much_for_how_long_on_how_many_requests() -> None:
    engine = RuleEngine([errors_rule(for_=300.0)])
    engine.evaluate(source_with(BREACH), 1000.0)
    [verdict] = engine.evaluate(source_with(BREACH), 1300.0)
    assert verdict.status is Status.FAIL
    assert verdict.source == "errors"
    assert verdict.reason == "error_rate 0.213 > 0.05 for 5m0s (canary n=340; stable 0.009, n=6210)"
    assert not verdict.also_on_stable
    assert verdict.details == {
        "metric": "error_rate",
        "comparison": "above",
        "threshold": 0.05,
        "limit": 0.05,
        "window": 60.0,
        "for": 300.0,
        "min_samples": 20,
        "canary_value": 0.213,
        "canary_samples": 340,
        "stable_value": 0.009,
        "stable_samples": 6210,
        "streak_start": 1000.0,
        "streak_duration": 300.0,
    }


def test_pending_and_passing_reasons() -> None:
    engine = RuleEngine([errors_rule(for_=300.0)])
    [pending] = engine.evaluate(source_with(BREACH), 0.0)
    assert pending.reason == "error_rate 0.213 > 0.05 for 0ms of 5m0s (canary n=340; stable 0.009, n=6210)"
    [passing] = engine.evaluate(source_with(HEALTHY), 10.0)
    assert passing.reason == "error_rate 0.01 <= 0.05 (canary n=340; stable 0.009, n=6210)"
    assert passing.details["streak_start"] is None


def test_inconclusive_reason_counts_the_samples_in_the_metric_s_own_terms() -> None:
    engine = RuleEngine([errors_rule()])
    [verdict] = engine.evaluate(source_with((0.5, 7)), 0.0)
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.reason == "insufficient data: 7 of 20 requests in 1m0s"
    schema = RuleEngine([Rule("schema", "schema_failure_rate", Comparison.ABOVE, 0.02, 300.0, 300.0)])
    [verdict] = schema.evaluate(source_with((0.0, 3), metric="schema_failure_rate"), 0.0)
    assert verdict.reason == "insufficient data: 3 of 20 schema-checked responses in 5m0s"


def test_enough_samples_but_no_value_is_inconclusive() -> None:
    engine = RuleEngine([Rule("latency", "latency_p95", Comparison.ABOVE, 10.0, 60.0, 300.0)])
    [verdict] = engine.evaluate(source_with((None, 50), (1.0, 900), metric="latency_p95"), 0.0)
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.reason == "insufficient data: no latency_p95 value from 50 requests in 1m0s"


def test_seconds_metrics_read_as_durations() -> None:
    engine = RuleEngine([Rule("latency", "latency_p95", Comparison.ABOVE, 10.0, 60.0, 0.0)])
    [verdict] = engine.evaluate(source_with((14.2, 120), (0.25, 3000), metric="latency_p95"), 5.0)
    assert verdict.status is Status.FAIL
    assert verdict.reason == "latency_p95 14.2s > 10s for 0ms (canary n=120; stable 250ms, n=3000)"


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.2134, Unit.RATIO, "0.213"),
        (0.05, Unit.RATIO, "0.05"),
        (12.0, Unit.PER_MINUTE, "12"),
        (612.4, Unit.TOKENS, "612"),
        (0.25, Unit.SECONDS, "250ms"),
        (1.5, Unit.SECONDS, "1.5s"),
    ],
)
def test_format_value(value: float, unit: Unit, text: str) -> None:
    assert format_value(value, unit) == text


# --- stable --------------------------------------------------------------------------------------


def test_the_same_breach_on_stable_is_flagged_as_an_environment_problem() -> None:
    engine = RuleEngine([errors_rule(for_=0.0)])
    [verdict] = engine.evaluate(source_with(BREACH, (0.19, 6000)), 0.0)
    assert verdict.status is Status.FAIL
    assert verdict.also_on_stable


def test_a_stable_breach_on_too_few_samples_does_not_count() -> None:
    engine = RuleEngine([errors_rule(for_=0.0)])
    [verdict] = engine.evaluate(source_with(BREACH, (0.19, 19)), 0.0)
    assert verdict.status is Status.FAIL
    assert not verdict.also_on_stable


def test_a_stable_breach_alone_is_not_the_canary_s_problem() -> None:
    engine = RuleEngine([errors_rule(for_=0.0)])
    [verdict] = engine.evaluate(source_with(HEALTHY, (0.19, 6000)), 0.0)
    assert verdict.status is Status.PASS
    assert not verdict.also_on_stable


def tokens_rule(
    comparison: Comparison = Comparison.ABOVE_STABLE, threshold: float = 1.5, for_: float = 600.0
) -> Rule:
    return Rule("tokens", "tokens_per_request", comparison, threshold, 300.0, for_)


def tokens(canary: tuple[float | None, int], stable: tuple[float | None, int]) -> TableSource:
    return source_with(canary, stable, metric="tokens_per_request")


def test_above_stable_compares_with_the_ratio_times_stable_over_the_same_window() -> None:
    engine = RuleEngine([tokens_rule(for_=0.0)])
    [verdict] = engine.evaluate(tokens((700.0, 200), (410.0, 5000)), 0.0)
    assert verdict.status is Status.FAIL
    assert verdict.reason == (
        "tokens_per_request 700 > 1.5x stable 410 = 615 for 0ms (canary n=200; stable n=5000)"
    )
    assert verdict.details["limit"] == pytest.approx(615.0)
    assert not verdict.also_on_stable  # stable cannot breach a limit made of itself
    [verdict] = engine.evaluate(tokens((600.0, 200), (410.0, 5000)), 1.0)
    assert verdict.status is Status.PASS


def test_below_stable() -> None:
    engine = RuleEngine([tokens_rule(Comparison.BELOW_STABLE, 0.5, for_=0.0)])
    [verdict] = engine.evaluate(tokens((150.0, 200), (410.0, 5000)), 0.0)
    assert verdict.status is Status.FAIL
    assert verdict.reason.startswith("tokens_per_request 150 < 0.5x stable 410 = 205")


@pytest.mark.parametrize(
    ("stable", "reason"),
    [
        ((410.0, 12), "insufficient data on stable: 12 of 20 responses with usage in 5m0s at this weight"),
        (
            (None, 5000),
            "insufficient data on stable: no tokens_per_request value from 5000 responses with usage in 5m0s at this weight",
        ),
    ],
)
def test_relative_rules_need_enough_data_on_stable_too(stable: tuple[float | None, int], reason: str) -> None:
    engine = RuleEngine([tokens_rule(for_=0.0)])
    [verdict] = engine.evaluate(tokens((5000.0, 200), stable), 0.0)
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.reason == reason


def test_zero_on_stable_makes_any_positive_canary_value_breach_above_stable() -> None:
    engine = RuleEngine([Rule("guard", "guardrail_rate", Comparison.ABOVE_STABLE, 2.0, 60.0, 0.0)])
    [verdict] = engine.evaluate(source_with((0.001, 300), (0.0, 6000), metric="guardrail_rate"), 0.0)
    assert verdict.status is Status.FAIL
    [verdict] = engine.evaluate(source_with((0.0, 300), (0.0, 6000), metric="guardrail_rate"), 1.0)
    assert verdict.status is Status.PASS


def test_below_uses_the_other_direction() -> None:
    engine = RuleEngine([Rule("avail", "availability", Comparison.BELOW, 0.99, 60.0, 0.0)])
    [verdict] = engine.evaluate(source_with((0.95, 300), (0.999, 6000), metric="availability"), 0.0)
    assert verdict.status is Status.FAIL
    assert verdict.reason == "availability 0.95 < 0.99 for 0ms (canary n=300; stable 0.999, n=6000)"


def test_one_verdict_per_rule_in_rule_order() -> None:
    source = source_with(BREACH)
    source.set(Role.CANARY, "latency_p95", 1.0, 340)
    source.set(Role.STABLE, "latency_p95", 1.0, 6000)
    engine = RuleEngine([
        Rule("latency", "latency_p95", Comparison.ABOVE, 10.0, 60.0, 0.0),
        errors_rule(for_=0.0),
    ])
    assert [(v.source, v.status) for v in engine.evaluate(source, 0.0)] == [
        ("latency", Status.PASS),
        ("errors", Status.FAIL),
    ]


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": ""}, "a rule needs a non-empty name"),
        ({"metric": "eror_rate"}, "rule 'errors': unknown metric 'eror_rate'; known metrics: availability, "),
        ({"comparison": "over"}, "rule 'errors': unknown comparison 'over'; expected one of above, below, "),
        ({"threshold": float("nan")}, "rule 'errors': threshold must be a finite number, got nan"),
        ({"comparison": "above_stable", "threshold": 0.0}, "must be > 0, got 0.0"),
        ({"window": 0.0}, "rule 'errors': window must be > 0 seconds, got 0.0"),
        ({"for_": -1.0}, "rule 'errors': for must be >= 0 seconds, got -1.0"),
        ({"min_samples": 0}, "rule 'errors': min_samples must be an integer >= 1, got 0"),
        ({"min_samples": True}, "rule 'errors': min_samples must be an integer >= 1, got True"),
    ],
)
def test_a_bad_rule_is_rejected_with_a_precise_message(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        errors_rule(**overrides)
    assert message in str(raised.value)


def test_a_comparison_string_becomes_the_enum() -> None:
    assert errors_rule().comparison is Comparison.ABOVE


def test_rule_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="rule names must be unique; repeated: errors"):
        RuleEngine([errors_rule(), errors_rule()])


def test_comparisons_with_stable_pass_while_the_canary_takes_all_traffic():
    rule = Rule("tokens", "tokens_per_request", Comparison.ABOVE_STABLE, 1.5, window=60.0, for_=0.0)
    engine = RuleEngine([rule])
    # Stable has no traffic at 100%: the comparison is off, not inconclusive (which would stall
    # the last stage) and not against stale stable numbers.
    source = source_with((900.0, 50), (None, 0), metric="tokens_per_request")
    [verdict] = engine.evaluate(source, 10.0, stable_in_service=False)
    assert verdict.status is Status.PASS and "all traffic" in verdict.reason
    [verdict] = engine.evaluate(source, 20.0)
    assert verdict.status is Status.INCONCLUSIVE


# --- like with like: token sources ---------------------------------------------------------------


def token_source(canary_share: float, stable_share: float, **values: tuple[tuple[float, int], tuple[float, int]]
                 ) -> TableSource:
    source = TableSource()
    source.set(Role.CANARY, "tokens_estimated_rate", canary_share, 100)
    source.set(Role.STABLE, "tokens_estimated_rate", stable_share, 100)
    for metric, (canary, stable) in values.items():
        source.set(Role.CANARY, metric, *canary)
        source.set(Role.STABLE, metric, *stable)
    return source


def tokens_above_stable(metric: str = "tokens_per_request") -> RuleEngine:
    return RuleEngine([Rule("tokens", metric, Comparison.ABOVE_STABLE, 1.3, window=60.0, for_=0.0, min_samples=20)])


def test_reported_on_both_sides_compares_the_metric_as_written():
    source = token_source(0.0, 0.0, tokens_per_request=((500.0, 100), (300.0, 100)),
                          estimated_tokens_per_request=((100.0, 100), (100.0, 100)))
    [verdict] = tokens_above_stable().evaluate(source, 0.0)
    assert verdict.status is Status.FAIL and "compared_metric" not in verdict.details
    assert verdict.reason.startswith("tokens_per_request 500 > 1.3x stable 300")


def test_estimates_on_one_side_compare_the_proxys_count_on_both():
    # The canary's server stopped sending usage: its "tokens" are completion estimates without the
    # prompt (80) against stable's reported prompt + completion (300). Compared as written that is
    # no regression at all, whatever the canary does; on the proxy's own count it is like with like.
    healthy = token_source(1.0, 0.0, tokens_per_request=((80.0, 100), (300.0, 100)),
                           estimated_tokens_per_request=((101.0, 100), (100.0, 100)))
    [verdict] = tokens_above_stable().evaluate(healthy, 0.0)
    assert verdict.status is Status.PASS
    assert verdict.reason == ("tokens_per_request 101 <= 1.3x stable 100 = 130 (canary n=100; stable "
                              "n=100); compared as estimated_tokens_per_request on both versions (token counts "
                              "estimated on canary 100%, stable 0%)")
    assert verdict.details["compared_metric"] == "estimated_tokens_per_request"
    assert verdict.details["estimated_share"] == {"canary": 1.0, "stable": 0.0}
    regressed = token_source(1.0, 0.0, tokens_per_request=((120.0, 100), (300.0, 100)),
                             estimated_tokens_per_request=((150.0, 100), (100.0, 100)))
    [verdict] = tokens_above_stable().evaluate(regressed, 1.0)
    assert verdict.status is Status.FAIL and verdict.details["canary_value"] == 150.0


def test_a_token_metric_the_estimator_cannot_see_is_inconclusive_when_sources_differ():
    source = token_source(0.0, 0.4, prompt_tokens_per_request=((240.0, 100), (90.0, 100)))
    [verdict] = tokens_above_stable("prompt_tokens_per_request").evaluate(source, 0.0)
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.reason == ("insufficient data: prompt_tokens_per_request is compared on reported usage only, "
                              "and token counts estimated on canary 0%, stable 40%")


def test_constant_threshold_token_rules_are_left_as_written():
    source = token_source(1.0, 0.0, output_tokens_per_request=((900.0, 100), (100.0, 100)))
    rule = Rule("long", "output_tokens_per_request", Comparison.ABOVE, 500.0, window=60.0, for_=0.0)
    [verdict] = RuleEngine([rule]).evaluate(source, 0.0)
    assert verdict.status is Status.FAIL and "compared_metric" not in verdict.details


# --- late metrics ------------------------------------------------------------------------------------


def test_a_rule_on_a_late_metric_says_its_window_ends_feedback_settle_ago() -> None:
    source = TableSource()
    source.late_by = 120.0
    source.set(Role.CANARY, "negative_feedback_rate", 0.2, 7)
    source.set(Role.CANARY, "error_rate", 0.2, 7)
    late = Rule("unhappy", "negative_feedback_rate", Comparison.ABOVE, 0.05, window=300.0, for_=0.0)
    engine = RuleEngine([late, errors_rule()])
    unhappy, errors = engine.evaluate(source, 0.0)
    assert unhappy.reason == "insufficient data: 7 of 20 requests in 5m0s ending 2m0s ago"
    assert unhappy.details["window_ends_before"] == 120.0
    assert errors.reason == "insufficient data: 7 of 20 requests in 1m0s"  # not late: not shifted
    assert "window_ends_before" not in errors.details
    source.set(Role.CANARY, "negative_feedback_rate", 0.2, 70)
    [fired] = RuleEngine([late]).evaluate(source, 10.0)
    assert fired.status is Status.FAIL and fired.reason.endswith("; over 5m0s ending 2m0s ago")
