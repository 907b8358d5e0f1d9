"""The judge's event tests: the statistic against reference numbers, and what counts as an event.
"""

from __future__ import annotations

import itertools

import pytest

from canaryproxy.core.judge import Judge
from canaryproxy.core.types import ErrorKind, Outcome, Status
from tests.core.judge_support import (
    ERRORS_THRESHOLD, error, feed, now, only, request, traffic, verdict,
)  # fmt: skip


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
