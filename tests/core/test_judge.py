"""The sequential judge: its statistics against reference numbers, and its behaviour on streams.

Reference numbers were computed once with scipy/numpy (not a project dependency); each carries
the expression that produced it. Random streams use fixed seeds, so every test is deterministic.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random

import pytest

from canaryproxy.core.judge import (
    DEFAULT_TESTS,
    Judge,
    JudgeConfig,
    TestConfig,
    log_normal_cdf,
    mixture_precision,
    normal_mixture_log_e,
)
from canaryproxy.core.types import Role, ErrorKind, Outcome, Status

# The defaults behind the reference numbers: alternatives r = geomspace(1.4, 40, 16) for r0 = 1
# with prior weights π ∝ 1/r; th = lambda q, r: q*r/(q*r + 1 - q). Requests form blocks of 100
# (closed early by a weight change or a verdict); a block with n_c canary and n_s stable requests,
# both > 0, and e_c, e_s events adds e_c*log(th(q, r)/q) + e_s*log((1 - th(q, r))/(1 - q)),
# q = n_c/(n_c + n_s), to each log L_r; log e = log(sum(π * exp(log L))).
ERRORS_THRESHOLD = 1 / 0.006


def only(*names: str, tests: dict[str, TestConfig] | None = None, **settings) -> JudgeConfig:
    """A config with just the named tests enabled: at their default settings unless in `tests`.

    No warm-up unless asked for: the statistics are checked on a warm canary; the warm-up has
    tests of its own.
    """
    chosen = {**DEFAULT_TESTS, **(tests or {})}
    enabled = {name: dataclasses.replace(test, enabled=name in names) for name, test in chosen.items()}
    settings.setdefault("warmup_seconds", 0.0)
    return JudgeConfig(tests=enabled, **settings)


def request(canary: bool, weight: float = 5.0, **fields) -> Outcome:
    fields.setdefault("status", 200)
    fields.setdefault("started", 0.0)
    return Outcome(role=Role.CANARY if canary else Role.STABLE, weight=weight, **fields)


def error(canary: bool, weight: float = 5.0, **fields) -> Outcome:
    return request(canary, weight, status=500, **fields)


def feed(judge: Judge, outcomes) -> None:
    for outcome in outcomes:
        judge.observe(outcome)


def verdict(judge: Judge, name: str):
    (found,) = [v for v in judge.verdicts() if v.source == f"judge:{name}"]
    return found


def now(judge: Judge, name: str) -> dict:
    return judge.summary()["tests"][name]["now"]


def traffic(seed: int, weight: float, ratio: float, requests: int, failure_rate: float = 0.1,
            canary_share: float | None = None):
    """Requests at `weight`, a share of them the canary's (the weight's unless given: sticky users
    make it differ); each fails with `failure_rate`, on the canary `ratio` times as often."""
    rng = random.Random(seed)
    share = weight / 100 if canary_share is None else canary_share
    for _ in range(requests):
        canary = rng.random() < share
        failed = rng.random() < failure_rate * (ratio if canary else 1.0)
        yield request(canary, weight, status=500 if failed else 200)


# --- numerics ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("z", "expected"),
    [  # scipy.special.log_ndtr(z)
        (-40.0, -804.6084420137539),
        (-30.5, -469.4627373229121),
        (-29.5, -439.4294746091503),
        (-5.0, -15.064998393988727),
        (0.0, -0.6931471805599453),
        (3.0, -0.0013508099647481925),
        (10.0, -7.61985302416047e-24),
    ],
)
def test_log_normal_cdf_matches_scipy(z: float, expected: float) -> None:
    assert log_normal_cdf(z) == pytest.approx(expected, rel=1e-13)


def test_log_normal_cdf_keeps_precision_far_below_underflow() -> None:
    # log(0.5 * erfc(40 / sqrt(2))) is log 0: the series must take over.
    assert math.erfc(1000 / math.sqrt(2)) == 0.0
    # scipy.special.log_ndtr(-1000)
    assert log_normal_cdf(-1000.0) == pytest.approx(-500007.8266948122, rel=1e-15)


@pytest.mark.parametrize(
    ("s", "v", "rho", "expected"),
    [  # log quad(lambda t: exp(t*s - t*t*v/2) * 2*sqrt(rho/(2*pi)) * exp(-rho*t*t/2), 0, inf)
        (50.0, 400.0, 48.45, 2.3587411531324847),
        (-20.0, 400.0, 48.45, -1.7310180802980535),
        (3.0, 10.0, 2.0, -0.04245927074146395),
    ],
)
def test_normal_mixture_closed_form_matches_numerical_integration(
    s: float, v: float, rho: float, expected: float
) -> None:
    assert normal_mixture_log_e(s, v, rho) == pytest.approx(expected, rel=1e-12)


def test_mixture_precision_by_hand() -> None:
    # L = log(1000); (200 / 0.25) / (2L + log(1 + 2L)) = 800 / 16.5112... = 48.452
    assert mixture_precision(0.25, 0.001) == pytest.approx(48.45200331043356, rel=1e-14)


# --- event tests: the statistic ---------------------------------------------------------------


def test_event_e_value_matches_reference() -> None:
    judge = Judge(only("errors"))
    # 250 requests at 20%: every 5th the canary's, failing every 25th; stable fails at i % 20 == 1.
    feed(judge, [
        (error if i % 25 == 0 or (i % 5 and i % 20 == 1) else request)(i % 5 == 0, 20.0) for i in range(250)
    ])
    # Blocks of 100, 100 and (closed by the verdict) 50 requests, each with q = 0.2 (see the top).
    assert now(judge, "errors")["log_e_value"] == pytest.approx(2.492622087659977, rel=1e-12)
    assert now(judge, "errors")["canary"]["events"] == 10


def test_blocks_end_where_the_weight_changes() -> None:
    judge = Judge(only("errors"))
    # 60 requests at 5% (every 20th the canary's), then 60 at 50% (every other one).
    feed(judge, [(error if i % 20 == 0 or i % 10 == 5 else request)(i % 20 == 0, 5.0) for i in range(60)])
    feed(judge, [
        (error if i % 6 == 0 or (i % 2 and i % 10 == 1) else request)(i % 2 == 0, 50.0) for i in range(60)
    ])
    # Two blocks: q = 3/60 and q = 30/60, each with its own events (see the top).
    assert now(judge, "errors")["log_e_value"] == pytest.approx(1.7567584212541847, rel=1e-12)


def test_healthy_stream_of_100000_events_does_not_reject() -> None:
    judge = Judge(only("errors"))
    feed(judge, traffic(seed=7, weight=5.0, ratio=1.0, requests=200_000, failure_rate=0.5))
    result = verdict(judge, "errors")
    assert result.status is Status.PASS
    assert result.details["canary"]["events"] + result.details["stable"]["events"] > 99_000
    assert 0.9 < result.details["ratio"] < 1.1


def test_threefold_regression_is_detected_within_a_few_thousand_events() -> None:
    judge = Judge(only("errors"))
    feed(judge, traffic(seed=7, weight=5.0, ratio=3.0, requests=30_000))
    result = verdict(judge, "errors")
    assert result.status is Status.FAIL
    events = result.details["canary"]["events"] + result.details["stable"]["events"]
    assert events < 1_000  # the evidence at the crossing, not at the end of the stream
    assert result.details["ratio"] > 1.5


def test_weight_ramp_with_a_healthy_canary_does_not_reject() -> None:
    # The canary's share of events jumps from 5% to 50%: only θ taken per event keeps this quiet.
    judge = Judge(only("errors"))
    for seed, weight in enumerate((5.0, 50.0, 25.0)):
        feed(judge, traffic(seed=seed, weight=weight, ratio=1.0, requests=30_000))
    result = verdict(judge, "errors")
    assert result.status is Status.PASS
    assert 0.85 < result.details["ratio"] < 1.15


@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_a_canary_serving_more_than_its_weight_is_judged_by_its_share(ratio: float) -> None:
    # Busy sticky users on the canary give it 15% of the requests at weight 5%: three times its
    # weight's share of the failures is then no evidence against it, twice that is.
    judge = Judge(only("errors"))
    feed(judge, traffic(seed=3, weight=5.0, ratio=ratio, requests=100_000, canary_share=0.15))
    assert verdict(judge, "errors").status is (Status.PASS if ratio == 1.0 else Status.FAIL)
    assert now(judge, "errors")["ratio"] == pytest.approx(ratio, rel=0.1)


# --- event tests: what counts -----------------------------------------------------------------


def test_fail_reason_carries_the_evidence_at_the_crossing() -> None:
    judge = Judge(only("errors"))
    stable_requests = itertools.count()
    # Every 20th request is the canary's; every 100th stable request fails; from request 21,000 on,
    # every canary request fails.
    feed(judge, [
        (error(True) if i >= 21_000 else request(True)) if i % 20 == 0
        else error(False) if next(stable_requests) % 100 == 0 else request(False)
        for i in range(30_000)
    ])
    # Every block has q = 5/100: the first block end with log e >= log(1/0.006) has 25 canary
    # failures, log e = 5.158539007898559 (e-value 173.9). Ratio: 25*0.95 / (0.05*205).
    result = verdict(judge, "errors")
    assert result.status is Status.FAIL
    assert result.reason == (
        "judge: failed requests canary 2.3× stable (e-value 174 ≥ 167; "
        "canary 25 events / 1,075 req, stable 205 / 20,425)"
    )
    assert result.details["statistic"] == "conditional-label mixture e-value"
    assert result.details["log_e_value"] == pytest.approx(5.158539007898559, rel=1e-12)
    assert result.details["threshold"] == pytest.approx(ERRORS_THRESHOLD)
    assert result.details["ratio"] == pytest.approx(25 * 0.95 / (0.05 * 205), rel=1e-9)
    assert result.details["canary"] == {"events": 25, "requests": 1_075}
    assert result.details["stable"] == {"events": 205, "requests": 20_425}
    # How much traffic the canary had served when the evidence crossed, for the decision record.
    assert result.details["observed"] == {"canary": 1_075, "stable": 20_425}


def test_fail_is_sticky_until_reset() -> None:
    judge = Judge(only("errors"))
    feed(judge, [outcome for _ in range(14) for outcome in (error(True, 50.0), request(False, 50.0))])
    failed = verdict(judge, "errors")
    assert failed.status is Status.FAIL
    # Now stable fails and the canary does not: the e-value falls far below 1/α.
    feed(judge, [outcome for _ in range(200) for outcome in (request(True, 50.0), error(False, 50.0))])
    assert now(judge, "errors")["log_e_value"] < 0
    assert verdict(judge, "errors") == failed
    judge.reset()
    assert verdict(judge, "errors").status is Status.PASS
    assert now(judge, "errors")["canary"] == {"events": 0, "requests": 0}


def test_pass_reason_says_there_is_no_evidence() -> None:
    judge = Judge(only("errors", "guardrail"))
    feed(judge, [error(False, 50.0), error(True, 50.0), request(False, 50.0)])
    # One block, q = 1/3: log(sum(π * th(q, r)/q * (1 - th(q, r))/(1 - q))) = -0.0186...; one event
    # each from a third and two thirds of the requests: the canary's rate is 2× stable's.
    assert verdict(judge, "errors").reason == (
        "judge: failed requests canary 2.0× stable, no evidence it is worse "
        "(e-value 0.982 < 167; canary 1 events / 1 req, stable 1 / 2)"
    )
    assert verdict(judge, "guardrail").reason == (
        "judge: guardrail interventions: none yet (e-value 1 < 1,667; canary 0 events / 1 req, stable 0 / 2)"
    )


def test_each_event_kind_counts_for_its_own_test() -> None:
    judge = Judge(only("errors", "guardrail", "schema", "truncation"))
    feed(
        judge,
        [
            request(True, guardrails=("pii",)),
            request(True, schema_ok=False),
            request(False, schema_ok=True),
            request(False, truncated=True),  # a truncated body is also a failed request
            request(False),
        ],
    )
    events = {
        name: (now(judge, name)["canary"], now(judge, name)["stable"])
        for name in ("errors", "guardrail", "schema", "truncation")
    }
    assert events == {
        "errors": ({"events": 0, "requests": 2}, {"events": 1, "requests": 3}),
        "guardrail": ({"events": 1, "requests": 2}, {"events": 0, "requests": 3}),
        "schema": ({"events": 1, "requests": 1}, {"events": 0, "requests": 1}),  # only checked ones
        "truncation": ({"events": 0, "requests": 2}, {"events": 1, "requests": 3}),
    }


def test_outcomes_that_say_nothing_about_the_version_are_ignored() -> None:
    judge = Judge(only("errors"))
    feed(
        judge,
        [
            error(True, error=ErrorKind.CLIENT_DISCONNECT),
            request(True, status=413, error=ErrorKind.BODY_TOO_LARGE),
            error(True, weight=0.0),  # nothing to compare at weight 0 or 100
            error(True, weight=100.0),
        ],
    )
    assert now(judge, "errors")["canary"] == {"events": 0, "requests": 0}
    judge.observe(request(True, status=0, error=ErrorKind.RESET))  # an upstream fault does count
    assert now(judge, "errors")["canary"] == {"events": 1, "requests": 1}


def test_events_per_sticky_key_are_capped() -> None:
    # One canary user fails 50 times in a row (a client retrying a crashing prompt) among healthy
    # requests of other users of both versions.
    def burst(canary_failure: Outcome) -> list[Outcome]:
        return [o for _ in range(50) for o in (canary_failure, request(True, 50.0), request(False, 50.0))]

    capped = Judge(only("errors"))
    feed(capped, burst(error(True, 50.0, key_hash=42)))
    assert verdict(capped, "errors").status is Status.PASS
    assert now(capped, "errors")["canary"] == {"events": 3, "requests": 100}
    assert now(capped, "errors")["dropped_by_key_cap"] == 47

    keyless = Judge(only("errors"))  # the same 50 failures from independent requests
    feed(keyless, burst(error(True, 50.0)))
    assert verdict(keyless, "errors").status is Status.FAIL


def test_one_users_capped_burst_stays_below_the_threshold_at_a_5_percent_share() -> None:
    # Three canary failures from one key, no stable failure in between, in blocks where the
    # canary serves 5 of every 100 requests: the most one user can add at this share.
    judge = Judge(only("errors"))
    feed(judge, [
        (error(True, key_hash=7) if i < 60 else request(True)) if i % 20 == 0 else request(False)
        for i in range(2_000)
    ])
    assert now(judge, "errors")["canary"]["events"] == 3
    # log(sum(π * (th(0.05, r)/0.05)**3)) < log(1/0.006) = 5.116
    assert now(judge, "errors")["log_e_value"] == pytest.approx(4.889172726582839, rel=1e-12)
    assert verdict(judge, "errors").status is Status.PASS


def test_key_counts_live_in_two_bounded_generations() -> None:
    judge = Judge(only("errors", max_events_per_key=1, key_memory=2))

    def canary_events_after(*keys: int) -> int:
        feed(judge, [error(True, 50.0, key_hash=key) for key in keys])
        return now(judge, "errors")["canary"]["events"]

    assert canary_events_after(1, 1) == 1  # the second event of key 1 is over the cap
    assert canary_events_after(2, 3) == 3  # key 3 starts a new generation; key 1 is the previous
    assert canary_events_after(1) == 3  # still remembered, and carried into the current generation
    assert canary_events_after(4, 5, 6) == 6  # two generations without key 1
    assert canary_events_after(1) == 7  # forgotten: it counts again


# --- latency ----------------------------------------------------------------------------------


def test_latency_test_is_inactive_until_a_threshold_is_set() -> None:
    judge = Judge(only("latency", warmup_seconds=0.0))
    feed(judge, [request(True, 50.0, latency=30.0) for _ in range(50)])
    inactive = verdict(judge, "latency")
    assert inactive.status is Status.PASS
    assert inactive.reason == "judge: slow requests test inactive until latency thresholds are set"
    assert judge.summary()["tests"]["latency"]["active"] is False

    judge.set_latency_thresholds(2.5, 4.0)
    feed(judge, [error(True, 50.0, latency=30.0) for _ in range(50)])  # failures are not latency events
    feed(judge, [request(False, 50.0, latency=1.0) for _ in range(50)])
    assert now(judge, "latency")["canary"] == {"events": 0, "requests": 0}
    feed(judge, [o for _ in range(15) for o in (request(True, 50.0, latency=3.0), request(False, 50.0))])
    failed = verdict(judge, "latency")
    assert failed.status is Status.FAIL
    assert failed.reason.startswith("judge: requests slower than 2.5 s on canary only (e-value ")


def test_latency_tests_skip_the_warm_up_after_each_weight_increase_and_errors_do_not() -> None:
    judge = Judge(only("errors", "latency", "log_latency", warmup_seconds=20.0))
    judge.set_latency_thresholds(2.0, 4.0)

    def slow_canary(started: float, weight: float = 5.0, **fields) -> Outcome:
        return request(True, weight, started=started, latency=5.0, **fields)

    def latency_requests() -> int:
        return now(judge, "latency")["canary"]["requests"]

    feed(judge, [slow_canary(100.0 + i) for i in range(20)])  # a cold canary's first 20 s
    judge.observe(slow_canary(119.9, status=500))
    assert latency_requests() == 0
    assert now(judge, "errors")["canary"] == {"events": 1, "requests": 21}  # failures still count
    judge.observe(slow_canary(120.0))
    assert latency_requests() == 1

    judge.observe(slow_canary(200.0, weight=25.0))  # more canary traffic: a new warm-up
    judge.observe(slow_canary(205.0, weight=5.0))  # routed before the increase, started within it
    assert latency_requests() == 1
    feed(judge, [slow_canary(230.0, weight=5.0), slow_canary(231.0, weight=25.0)])  # back down...
    assert latency_requests() == 3
    judge.observe(slow_canary(240.0, weight=25.0))  # ...and up to a weight seen before: still warm
    assert latency_requests() == 4
    # The mean-latency test skipped the same requests: it has the four warm ones.
    assert judge.summary()["tests"]["log_latency"]["now"]["canary"] == {"samples": 4}


def test_a_slower_tail_is_caught_above_stable_p99_where_the_p95_test_sees_little() -> None:
    # Latencies lognormal (median 2 s, sigma 0.35); the canary's slowest 5% twice as slow, the rest
    # unchanged: above p95 the canary's share is unchanged (5%), above p99 it is 5% instead of 1%.
    rng = random.Random(7)
    p95, p99 = 2.0 * math.exp(0.35 * 1.6449), 2.0 * math.exp(0.35 * 2.3263)
    judge = Judge(only("latency", "latency_tail", warmup_seconds=0.0))
    judge.set_latency_thresholds(p95, p99)
    canary_requests = 0
    for _ in range(40_000):
        canary = rng.random() < 0.05
        z = rng.gauss(0.0, 1.0)
        latency = 2.0 * math.exp(0.35 * z) * (2.0 if canary and z > 1.6449 else 1.0)
        judge.observe(request(canary, 5.0, latency=latency))
        canary_requests += canary
        if canary_requests % 50 == 0 and verdict(judge, "latency_tail").status is Status.FAIL:
            break
    tail = verdict(judge, "latency_tail")
    assert tail.status is Status.FAIL
    assert tail.reason.startswith(f"judge: requests slower than {p99:.3g} s canary ")
    assert canary_requests < 600
    assert verdict(judge, "latency").status is Status.PASS


def twice_the_failures(started: float, requests: int = 4_000):
    """A canary at 50% failing 20% of its requests to stable's 10%: twice as often."""
    rng = random.Random(11)
    for i in range(requests):
        canary = i % 2 == 0
        failed = rng.random() < (0.2 if canary else 0.1)
        yield request(canary, 50.0, started=started + i * 0.001, status=500 if failed else 200)


def test_in_a_warm_up_a_canary_failing_up_to_the_tolerance_adds_no_evidence() -> None:
    # 4,000 requests within 4 s: all inside a 20 s warm-up, or all after one.
    cold = Judge(only("errors", warmup_seconds=20.0))  # warmup_tolerance: 2 by default
    feed(cold, twice_the_failures(started=0.0))
    assert now(cold, "errors")["log_e_value"] <= 0.0
    assert now(cold, "errors")["canary"]["events"] > 350  # counted, just not held against it

    warm = Judge(only("errors", warmup_seconds=20.0))
    warm.observe(request(False, 50.0, started=0.0))  # the first traffic at 50% starts the warm-up
    feed(warm, twice_the_failures(started=20.0))
    assert verdict(warm, "errors").status is Status.FAIL

    strict = Judge(only("errors", warmup_seconds=20.0, warmup_tolerance=1.0))  # no widening
    feed(strict, twice_the_failures(started=0.0))
    assert verdict(strict, "errors").status is Status.FAIL


def test_in_a_warm_up_a_canary_failing_far_beyond_the_tolerance_is_still_caught() -> None:
    judge = Judge(only("errors", warmup_seconds=20.0))
    rng = random.Random(5)
    canary_requests = 0
    for i in range(2_000):  # 5% weight, the canary fails half its requests, stable 1%
        canary = rng.random() < 0.05
        canary_requests += canary
        failed = rng.random() < (0.5 if canary else 0.01)
        judge.observe(request(canary, 5.0, started=i * 0.01, status=500 if failed else 200))
        if canary and verdict(judge, "errors").status is Status.FAIL:
            break
    assert verdict(judge, "errors").status is Status.FAIL
    assert canary_requests <= 20


@pytest.mark.parametrize("tolerance", [0.5, math.inf, math.nan])
def test_warmup_tolerance_must_be_a_finite_ratio_of_at_least_one(tolerance: float) -> None:
    with pytest.raises(ValueError, match="warmup_tolerance must be a ratio >= 1"):
        JudgeConfig(warmup_tolerance=tolerance)


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
def test_latency_thresholds_must_be_positive_durations(seconds: float) -> None:
    with pytest.raises(ValueError, match="latency threshold p95 must be a positive number of seconds"):
        Judge().set_latency_thresholds(seconds, 1.0)
    with pytest.raises(ValueError, match="latency threshold p99 must be a positive number of seconds"):
        Judge().set_latency_thresholds(1.0, seconds)


def test_latency_thresholds_p99_must_not_be_below_p95() -> None:
    with pytest.raises(ValueError, match=r"latency threshold p99 \(1.0 s\) must not be below p95 \(2.0 s\)"):
        Judge().set_latency_thresholds(2.0, 1.0)


def test_reset_forgets_the_latency_thresholds() -> None:
    judge = Judge(only("latency"))
    judge.set_latency_thresholds(1.0, 2.0)
    assert judge.summary()["latency_thresholds"] == {"p95": 1.0, "p99": 2.0}
    judge.reset()
    assert judge.summary()["latency_thresholds"] is None
    assert "inactive" in verdict(judge, "latency").reason


# --- confidence sequence ----------------------------------------------------------------------


def test_no_worse_once_the_upper_bound_is_below_the_tolerance() -> None:
    judge = Judge(only("errors"))
    assert not judge.no_worse(1.2)
    feed(judge, traffic(seed=3, weight=50.0, ratio=0.8, requests=1_000))
    assert not judge.no_worse(1.2)  # not enough evidence yet
    feed(judge, traffic(seed=4, weight=50.0, ratio=0.8, requests=40_000))
    bound = judge.summary()["tests"]["errors"]["ratio_upper_bound"]
    assert 0.8 < bound <= 1.2
    assert judge.no_worse(1.2)
    assert not judge.no_worse(0.8)


def test_upper_bound_stays_above_a_worse_canarys_ratio() -> None:
    judge = Judge(only("errors", tests={"errors": TestConfig(alpha=0.006, r0=2.0)}))
    for seed in range(10):  # the bound is checked along the way, as the controller would
        feed(judge, traffic(seed=seed, weight=50.0, ratio=1.5, requests=4_000))
        assert judge.summary()["tests"]["errors"]["ratio_upper_bound"] > 1.5
    assert verdict(judge, "errors").status is Status.PASS  # within the tolerance r0 = 2
    assert not judge.no_worse(1.2)


def test_no_worse_needs_every_event_test_active() -> None:
    judge = Judge(only("errors", "latency", warmup_seconds=0.0))
    feed(judge, traffic(seed=5, weight=50.0, ratio=0.5, requests=30_000))
    assert not judge.no_worse(2.0)  # the latency test has no threshold, so no bound
    judge.set_latency_thresholds(10.0, 20.0)
    feed(judge, [request(i % 2 == 0, 50.0, latency=20.0 if i % 4 == 1 else 1.0) for i in range(12_000)])
    assert judge.no_worse(2.0)


def test_no_worse_rejects_a_nonsense_tolerance() -> None:
    with pytest.raises(ValueError, match="no_worse tolerance must be a positive ratio, got 0"):
        Judge().no_worse(0)


# --- amount tests -----------------------------------------------------------------------------


def test_normal_mixture_matches_reference() -> None:
    judge = Judge(only("tokens"))
    feed(judge, [request(False, prompt_tokens=100 + 3 * i) for i in range(150)])
    feed(judge, [request(True, prompt_tokens=150 + 4 * i) for i in range(100)])
    # xs, xc = log1p(100 + 3*arange(150)), log1p(150 + 4*arange(100)); V = xc.var(ddof=1)/100 +
    # xs.var(ddof=1)/150; d = xc.mean() - xs.mean(); s, v = d/V, 1/V; sig2 = pooled variance;
    # L = log(2000); rho = (200/sig2)/(2L + log(1 + 2L));
    # 0.5*log(4*rho/(v+rho)) + s*s/(2*(v+rho)) + log_ndtr(s/sqrt(v+rho))
    tokens = now(judge, "tokens")
    assert tokens["log_e_value"] == pytest.approx(1.4865618409197539, rel=1e-9)
    assert tokens["sigma2"] == pytest.approx(0.18053337270078598, rel=1e-12)
    assert tokens["rho"] == pytest.approx(61.59075305972616, rel=1e-12)
    assert tokens["ratio"] == pytest.approx(math.exp(0.10704165731768445), rel=1e-12)
    assert verdict(judge, "tokens").reason == (
        "judge: tokens per request canary 1.1× stable, no evidence it is worse "
        "(e-value 4.42 < 2,000; canary 100 req, stable 150 req)"
    )


def test_amount_test_waits_for_the_burn_in() -> None:
    judge = Judge(only("output_length"))
    rng = random.Random(11)
    feed(judge, [request(False, output_chars=int(rng.lognormvariate(6, 0.3))) for _ in range(500)])
    feed(judge, [request(True, output_chars=int(rng.lognormvariate(8, 0.3))) for _ in range(99)])
    in_burn_in = verdict(judge, "output_length")
    assert in_burn_in.status is Status.PASS
    assert in_burn_in.reason == (
        "judge: output length in burn-in, no stratum has 100 samples per version yet "
        "(canary 99 req, stable 500 req)"
    )
    judge.observe(request(True, output_chars=int(rng.lognormvariate(8, 0.3))))
    failed = verdict(judge, "output_length")
    assert failed.status is Status.FAIL
    assert failed.reason.startswith("judge: output length canary 7.")
    assert failed.details["canary"] == {"samples": 100}


def test_tolerance_shifts_the_amount_test_by_log_r0() -> None:
    def tokens_verdict(r0: float) -> Status:
        judge = Judge(only("tokens", tests={"tokens": TestConfig(alpha=0.001, r0=r0)}))
        rng = random.Random(5)
        for _ in range(20_000):
            canary = rng.random() < 0.25
            scale = 1.5 if canary else 1.0
            judge.observe(request(canary, 25.0, completion_tokens=round(scale * rng.lognormvariate(6, 0.5))))
        return verdict(judge, "tokens").status

    assert tokens_verdict(1.0) is Status.FAIL
    assert tokens_verdict(2.0) is Status.PASS  # canary 1.5×, tolerance 2×


def test_amount_tests_compare_like_with_like_across_weights() -> None:
    # Prompts grow between the 5% and the 50% stage for both versions. Pooled means would put the
    # canary (mostly sampled at 50%) at 1.5× stable; strata per weight see no difference.
    judge = Judge(only("tokens", "log_latency"))
    rng = random.Random(2)
    for weight, log_mean in ((5.0, 5.0), (50.0, 5.5)):
        w = weight / 100
        for _ in range(4_000):
            tokens = round(rng.lognormvariate(log_mean, 0.4))
            latency = rng.uniform(0.5, 1.0)
            judge.observe(request(rng.random() < w, weight, prompt_tokens=tokens, latency=latency))
    tokens = verdict(judge, "tokens")
    assert tokens.status is Status.PASS
    assert tokens.details["strata"] == 2
    assert 0.95 < tokens.details["ratio"] < 1.05
    assert verdict(judge, "log_latency").status is Status.PASS


def test_samples_per_sticky_key_are_capped_and_failures_are_not_samples() -> None:
    judge = Judge(only("tokens", "cost"))
    feed(judge, [request(True, key_hash=9, prompt_tokens=100, cost_usd=0.002) for _ in range(20)])
    feed(judge, [error(True, prompt_tokens=100, cost_usd=0.002) for _ in range(20)])
    feed(judge, [request(True, prompt_tokens=100) for _ in range(5)])  # no key: always a sample
    assert now(judge, "tokens")["canary"] == {"samples": 1 + 5}
    assert now(judge, "cost")["canary"] == {"samples": 1}


# --- configuration and summary ----------------------------------------------------------------


def test_unknown_test_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as raised:
        JudgeConfig(tests={"erors": TestConfig(alpha=0.01)})
    assert str(raised.value) == (
        "judge.tests: unknown test 'erors'; known tests: errors, latency, latency_tail, guardrail, "
        "schema, truncation, tokens, output_length, cost, log_latency"
    )


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"tests": {"errors": TestConfig(alpha=0.0)}}, "tests.errors.alpha must be between 0 and 1, got 0.0"),
        ({"tests": {"cost": TestConfig(alpha=0.01, r0=-1.0)}}, "tests.cost.r0 must be a positive number"),
        ({"tests": {"schema": TestConfig(alpha=0.01, r0=29.0)}},
         "tests.schema.r0 must be below max_ratio / 1.4 = 28.6"),
        ({"tests": {"errors": TestConfig(alpha=0.997)}}, "the enabled tests' alphas sum to 1; must be"),
        ({"warmup_seconds": -1.0}, "warmup_seconds must be a finite number of seconds >= 0, got -1.0"),
        ({"burn_in": 99}, "burn_in must be at least 100"),
        ({"alternatives": 0}, "alternatives must be at least 1, got 0"),
    ],
)
def test_invalid_config_says_what_is_wrong(settings: dict, problem: str) -> None:
    with pytest.raises(ValueError, match="invalid judge config: .*" + problem.replace(".", r"\.")):
        JudgeConfig(**settings)


def test_named_tests_override_defaults_and_disabled_tests_give_no_verdict() -> None:
    config = JudgeConfig(
        tests={"errors": TestConfig(alpha=0.005, r0=1.2), "cost": TestConfig(alpha=0.00005, enabled=False)}
    )
    assert config.tests["errors"] == TestConfig(alpha=0.005, r0=1.2)
    assert config.tests["latency"] == DEFAULT_TESTS["latency"]
    assert config.family_alpha == pytest.approx(0.01 - 0.001 - 0.00005)
    assert JudgeConfig().family_alpha == pytest.approx(0.01)
    judge = Judge(config)
    sources = [v.source for v in judge.verdicts()]
    assert "judge:cost" not in sources
    assert len(sources) == 9
    assert judge.summary()["disabled"] == ["cost"]


def test_summary_is_json_safe_after_a_canary_only_failure() -> None:
    judge = Judge(JudgeConfig(warmup_seconds=0.0))
    judge.set_latency_thresholds(1.0, 2.0)
    # No stable events: the ratio is unbounded.
    feed(judge, [o for _ in range(20) for o in (error(True, 50.0), request(False, 50.0))])
    summary = json.loads(json.dumps(judge.summary(), allow_nan=False))
    errors = summary["tests"]["errors"]
    assert errors["status"] == "fail"
    assert errors["evidence"]["ratio"] is None
    assert errors["reason"].startswith("judge: failed requests on canary only (e-value ")
    assert summary["tests"]["tokens"]["now"]["log_e_value"] is None
