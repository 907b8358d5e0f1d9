"""The judge's latency tests, the warm-up after a weight increase, and the confidence sequence.
"""

from __future__ import annotations

import math
import random

import pytest

from canaryproxy.core.judge import Judge, JudgeConfig, TestConfig
from canaryproxy.core.types import Outcome, Status
from tests.core.judge_support import error, feed, now, only, request, traffic, verdict


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

    def slow_canary(routed_at: float, weight: float = 5.0, **fields) -> Outcome:
        return request(True, weight, routed_at=routed_at, latency=5.0, **fields)

    def latency_requests() -> int:
        return now(judge, "latency")["canary"]["requests"]

    feed(judge, [slow_canary(100.0 + i) for i in range(20)])  # a cold canary's first 20 s
    judge.observe(slow_canary(119.9, status=500))
    assert latency_requests() == 0
    assert now(judge, "errors")["canary"] == {"events": 1, "requests": 21}  # failures still count
    judge.observe(slow_canary(120.0))
    assert latency_requests() == 1

    judge.observe(slow_canary(200.0, weight=25.0))  # more canary traffic: a new warm-up
    judge.observe(slow_canary(205.0, weight=5.0))  # routed at the old weight, within the warm-up
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


def twice_the_failures(routed_at: float, requests: int = 4_000):
    """A canary at 50% failing 20% of its requests to stable's 10%: twice as often."""
    rng = random.Random(11)
    for i in range(requests):
        canary = i % 2 == 0
        failed = rng.random() < (0.2 if canary else 0.1)
        yield request(canary, 50.0, routed_at=routed_at + i * 0.001, status=500 if failed else 200)


def test_in_a_warm_up_a_canary_failing_up_to_the_tolerance_adds_no_evidence() -> None:
    # 4,000 requests within 4 s: all inside a 20 s warm-up, or all after one.
    cold = Judge(only("errors", warmup_seconds=20.0))  # warmup_tolerance: 2 by default
    feed(cold, twice_the_failures(routed_at=0.0))
    assert now(cold, "errors")["log_e_value"] <= 0.0
    assert now(cold, "errors")["canary"]["events"] > 350  # counted, just not held against it

    warm = Judge(only("errors", warmup_seconds=20.0))
    warm.observe(request(False, 50.0, routed_at=0.0))  # the first traffic at 50% starts the warm-up
    feed(warm, twice_the_failures(routed_at=20.0))
    assert verdict(warm, "errors").status is Status.FAIL

    strict = Judge(only("errors", warmup_seconds=20.0, warmup_tolerance=1.0))  # no widening
    feed(strict, twice_the_failures(routed_at=0.0))
    assert verdict(strict, "errors").status is Status.FAIL


def test_in_a_warm_up_a_canary_failing_far_beyond_the_tolerance_is_still_caught() -> None:
    judge = Judge(only("errors", warmup_seconds=20.0))
    rng = random.Random(5)
    canary_requests = 0
    for i in range(2_000):  # 5% weight, the canary fails half its requests, stable 1%
        canary = rng.random() < 0.05
        canary_requests += canary
        failed = rng.random() < (0.5 if canary else 0.01)
        judge.observe(request(canary, 5.0, routed_at=i * 0.01, status=500 if failed else 200))
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
