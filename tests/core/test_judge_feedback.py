"""The judge's feedback tests: negative feedback and downstream failures, labelled against the
canary's share at routing, capped per key, settling after each weight change, saved and restored.

Times are wall-clock seconds, as `routed_at` is; feedback arrives after a lognormal delay (median
30 s, σ = 1) for a share of the responses, as the brief's clients send it.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Iterator

import pytest

from canaryproxy.core.judge import DEFAULT_TESTS, FEEDBACK_TESTS, Judge, JudgeConfig, TestConfig
from canaryproxy.core.judge.feedback import COUNTED_FROM, MAX_WEIGHTS, FeedbackLane, RoutedShares, rounded_up
from canaryproxy.core.judge.numerics import CANARY, STABLE
from canaryproxy.core.types import Feedback, FeedbackKind, Outcome, Role, Status, Verdict
from tests.core.judge_support import only, request

T0 = 1_800_000_000.0
SETTLE = 120.0


def feedback_config(*names: str, **settings: object) -> JudgeConfig:
    return only(*(names or ("negative_feedback",)), feedback=True, feedback_settle=SETTLE, **settings)


def rating(canary: bool, negative: bool, weight: float = 5.0, routed_at: float = T0, key: int | None = None,
           kind: FeedbackKind = FeedbackKind.FEEDBACK) -> Feedback:
    return Feedback(role=Role.CANARY if canary else Role.STABLE, request_id="r", routed_at=routed_at,
                    weight=weight, key_hash=key, name="thumbs", value=not negative, negative=negative,
                    received_at=routed_at + 30.0, kind=kind)


def requests_at(weight: float, canary: int, stable: int, routed_at: float = T0) -> list[Outcome]:
    return ([request(True, weight, routed_at=routed_at) for _ in range(canary)]
            + [request(False, weight, routed_at=routed_at) for _ in range(stable)])


def feedback_verdict(judge: Judge, now: float | None, name: str = "negative_feedback") -> Verdict:
    (found,) = [v for v in judge.verdicts(now) if v.source == f"judge:{name}"]
    return found


def delayed_stream(seed: int, weight: float, negative_factor: float, seconds: int, rate: int = 100,
                   rated: float = 0.1, base_negative: float = 0.1) -> Iterator[tuple[float, object]]:
    """(time, record) in arrival order: requests (done 1 s after routing) and their feedback, on
    `rated` of the responses after a lognormal delay (median 30 s, σ = 1); negative with
    `base_negative` on stable, `negative_factor` times that on the canary. Users without keys."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, int, object]] = []
    for i in range(seconds * rate):
        routed_at = T0 + i / rate
        canary = rng.random() < weight / 100
        heapq.heappush(arrivals, (routed_at + 1.0, i, request(canary, weight, routed_at=routed_at, latency=1.0)))
        if rng.random() < rated:
            negative = rng.random() < base_negative * (negative_factor if canary else 1.0)
            record = rating(canary, negative, weight, routed_at)
            heapq.heappush(arrivals, (routed_at + 30.0 * math.exp(rng.gauss(0.0, 1.0)), i, record))
    while arrivals:
        t, _, record = heapq.heappop(arrivals)
        yield t, record


def run(judge: Judge, stream: Iterator[tuple[float, object]]) -> float:
    t = T0
    for t, record in stream:
        if isinstance(record, Feedback):
            judge.observe_feedback(record)
        else:
            assert isinstance(record, Outcome)
            judge.observe(record)
    return t


# --- detection ------------------------------------------------------------------------------------


def test_a_canary_with_twice_the_negative_feedback_is_failed_and_an_a_a_canary_is_not() -> None:
    bad, same = Judge(feedback_config()), Judge(feedback_config())
    end = run(bad, delayed_stream(seed=7, weight=20.0, negative_factor=2.0, seconds=1200))
    run(same, delayed_stream(seed=7, weight=20.0, negative_factor=1.0, seconds=1200))

    failed = feedback_verdict(bad, end)
    assert failed.status is Status.FAIL
    details = failed.details
    assert details["canary"]["events"] > 0 and details["stable"]["events"] > 0
    assert failed.reason.startswith("judge: negative user feedback canary ")
    assert f"canary {details['canary']['events']:,} events / " in failed.reason
    assert f"stable {details['stable']['events']:,} / " in failed.reason
    assert feedback_verdict(same, end).status is Status.PASS


def test_downstream_failures_have_their_own_test() -> None:
    judge = Judge(feedback_config("negative_feedback", "downstream_errors"))
    for outcome in requests_at(5.0, canary=50, stable=950):
        judge.observe(outcome)
    for _ in range(12):  # a canary whose consumers fail on its answers, users none the wiser
        judge.observe_feedback(rating(True, True, kind=FeedbackKind.DOWNSTREAM_ERROR))
        judge.observe_feedback(rating(True, False))
    now = T0 + SETTLE
    assert feedback_verdict(judge, now, "downstream_errors").status is Status.FAIL
    assert feedback_verdict(judge, now, "negative_feedback").status is Status.PASS
    received = judge.summary(now)["tests"]["negative_feedback"]["received"]
    assert received == {"canary": 12, "stable": 0}


# --- the share at routing -------------------------------------------------------------------------


def late_feedback_after_a_weight_cut(judge: Judge, weight_in_records: float | None) -> None:
    """200 requests at 50%, half each; then the weight cut to 5% and 1,000 requests at it; only
    then the feedback on the 50% requests arrives: 10 negative records on each version (a healthy
    canary). `weight_in_records`: what the records say they were routed at (None: the truth)."""
    for outcome in requests_at(50.0, canary=100, stable=100, routed_at=T0):
        judge.observe(outcome)
    for outcome in requests_at(5.0, canary=50, stable=950, routed_at=T0 + 60):
        judge.observe(outcome)
    weight = 50.0 if weight_in_records is None else weight_in_records
    for _ in range(10):
        judge.observe_feedback(rating(True, True, weight=weight, routed_at=T0))
        judge.observe_feedback(rating(False, True, weight=weight, routed_at=T0))


def test_late_feedback_is_judged_by_the_share_at_routing_not_the_weight_now() -> None:
    judge = Judge(feedback_config())
    late_feedback_after_a_weight_cut(judge, weight_in_records=None)
    verdict = feedback_verdict(judge, T0 + 60 + SETTLE)
    assert verdict.status is Status.PASS
    assert verdict.details["canary"]["events"] == verdict.details["stable"]["events"] == 10

    # Judged by the weight in force when it arrived, the same healthy canary would be rolled back:
    # half the negative records from a version serving 5% of the requests.
    misattributed = Judge(feedback_config())
    late_feedback_after_a_weight_cut(misattributed, weight_in_records=5.0)
    assert feedback_verdict(misattributed, T0 + 60 + SETTLE).status is Status.FAIL


def test_the_share_is_counted_per_weight_and_falls_back_to_the_weight() -> None:
    shares = RoutedShares()
    for i in range(COUNTED_FROM - 1):
        shares.count(i % 2, 10.0, T0 + i)  # half the requests on the canary: a busy sticky user
    assert shares.share(10.0) == pytest.approx(0.1)  # too few to trust the count yet
    shares.count(1, 10.0, T0 + 200)
    assert shares.share(10.0) == pytest.approx(0.5)
    assert shares.share(25.0) == pytest.approx(0.25)  # no request at that weight
    for _ in range(COUNTED_FROM):
        shares.count(0, 30.0, T0 + 300)  # stable only: no count to trust
    assert shares.share(30.0) == pytest.approx(0.3)


def test_the_share_is_rounded_up_and_the_weights_are_bounded() -> None:
    assert rounded_up(0.05) == pytest.approx(0.05)
    assert rounded_up(0.050_01) == pytest.approx(0.0501) and rounded_up(0.050_01) >= 0.050_01
    assert rounded_up(0.999_99) < 1.0
    shares = RoutedShares()
    for weight in range(1, MAX_WEIGHTS + 11):
        shares.count(0, float(weight), T0 + weight)
    assert len(shares.counts) == MAX_WEIGHTS and 1.0 not in shares.counts  # the least recent went


# --- settling -------------------------------------------------------------------------------------


def test_the_feedback_tests_wait_for_feedback_after_each_weight_change() -> None:
    judge = Judge(feedback_config())
    for outcome in requests_at(5.0, canary=10, stable=190, routed_at=T0):
        judge.observe(outcome)
    waiting = feedback_verdict(judge, T0 + 48)
    assert waiting.status is Status.INCONCLUSIVE
    assert waiting.reason == ("judge: negative user feedback: waiting 1m12s more for feedback on requests at 5% "
                              "to arrive (feedback_settle 2m0s)")
    assert feedback_verdict(judge, None).status is Status.INCONCLUSIVE  # now: the latest routing time
    assert feedback_verdict(judge, T0 + SETTLE).status is Status.PASS

    for outcome in requests_at(25.0, canary=50, stable=150, routed_at=T0 + 600):
        judge.observe(outcome)
    judge.observe(request(False, 5.0, routed_at=T0 + 590))  # a slow request from before the change
    assert feedback_verdict(judge, T0 + 610).status is Status.INCONCLUSIVE
    assert "waiting 1m50s more for feedback on requests at 25%" in feedback_verdict(judge, T0 + 610).reason
    assert feedback_verdict(judge, T0 + 600 + SETTLE).status is Status.PASS
    assert judge.verdicts(T0 + 610) and all(  # the request tests are not held up
        v.status is Status.PASS for v in judge.verdicts(T0 + 610) if v.source != "judge:negative_feedback")


def test_a_fail_needs_no_waiting() -> None:
    judge = Judge(feedback_config())
    for outcome in requests_at(5.0, canary=50, stable=950, routed_at=T0):
        judge.observe(outcome)
    for key in range(12):
        judge.observe_feedback(rating(True, True, key=key))
    assert feedback_verdict(judge, T0 + 1).status is Status.FAIL


# --- per-key caps ---------------------------------------------------------------------------------


def test_one_user_adds_at_most_max_events_per_key() -> None:
    capped, separate = Judge(feedback_config()), Judge(feedback_config())
    for judge in (capped, separate):
        for outcome in requests_at(5.0, canary=50, stable=950, routed_at=T0):
            judge.observe(outcome)
    for i in range(12):
        capped.observe_feedback(rating(True, True, key=42))  # one unhappy user, every answer
        separate.observe_feedback(rating(True, True, key=i))
    verdict = feedback_verdict(capped, T0 + SETTLE)
    assert verdict.status is Status.PASS
    assert verdict.details["canary"]["events"] == 3 and verdict.details["dropped_by_key_cap"] == 9
    assert feedback_verdict(separate, T0 + SETTLE).status is Status.FAIL


def test_a_capped_users_later_requests_leave_its_versions_share() -> None:
    """A busy stable user reaches the cap: its negative records stop counting, and so must its
    later requests, or stable's events would look thin against its share and a healthy canary
    worse (without this, 1.1% of the bench's A/A canaries with Zipf users were rolled back)."""
    lane = FeedbackLane("negative_feedback", feedback_config())
    for side in [CANARY] * 50 + [STABLE] * 950:
        lane.count_request(side, 5.0, T0, None)
    busy = 7
    lane.count_request(STABLE, 5.0, T0, busy)
    assert [lane.take(STABLE, True, busy) for _ in range(4)] == [True, True, True, False]  # the cap: 3
    for _ in range(9_000):  # ... and it keeps sending requests to stable
        lane.count_request(STABLE, 5.0, T0 + 1, busy)
    assert lane.shares.counts[5.0] == [951, 50]
    assert lane.shares.share(5.0) == pytest.approx(0.05)  # 50 / 1,001 rounded up


def test_a_restored_judge_primed_with_the_covered_feedback_keeps_a_users_cap() -> None:
    before = Judge(feedback_config())
    for outcome in requests_at(5.0, canary=50, stable=950, routed_at=T0):
        before.observe(outcome)
    covered = [rating(True, True, key=42) for _ in range(3)]  # one user at the cap already
    for record in covered:
        before.observe_feedback(record)
    primed, unprimed = (Judge.from_state(feedback_config(), before.state()) for _ in range(2))
    primed.prime_feedback_caps(covered)
    for judge in (primed, unprimed):
        judge.observe_feedback(rating(True, True, key=42))
    assert feedback_verdict(primed, T0 + SETTLE).details["canary"]["events"] == 3
    assert feedback_verdict(unprimed, T0 + SETTLE).details["canary"]["events"] == 4  # the cap restarted


# --- saving ---------------------------------------------------------------------------------------


def test_a_restored_judge_continues_with_its_feedback_evidence_and_shares() -> None:
    stream = list(delayed_stream(seed=3, weight=20.0, negative_factor=2.0, seconds=1200))
    cut = len(stream) // 3
    whole, saving = Judge(feedback_config()), Judge(feedback_config())
    run(whole, iter(stream[:cut]))
    run(saving, iter(stream[:cut]))
    state = json.loads(json.dumps(saving.state(), allow_nan=False))
    assert state["feedback"]["routed"]["counts"] and state["feedback"]["evidence"]["negative_feedback"]["counts"]
    restored = Judge.from_state(feedback_config(), state)
    end = run(whole, iter(stream[cut:]))
    run(restored, iter(stream[cut:]))
    assert restored.verdicts(end) == whole.verdicts(end)
    assert restored.state() == whole.state()
    assert restored.summary(end) == whole.summary(end)


def test_feedback_states_and_others_do_not_mix() -> None:
    without = Judge(only("errors"))
    assert "feedback" not in without.state()  # a judge without feedback saves what it always did
    with pytest.raises(ValueError, match="judge state does not fit: state: unknown feedback"):
        Judge(only("errors")).restore({**without.state(), "feedback": {}})
    with pytest.raises(ValueError, match="judge state does not fit: state: missing feedback"):
        Judge(feedback_config("errors", "negative_feedback")).restore(Judge(only("errors")).state())
    state = Judge(feedback_config()).state()
    state["feedback"]["routed"]["counts"] = [[5.0, 1, 1], [5.0, 2, 2]]
    with pytest.raises(ValueError, match=r"feedback.routed.counts\[1\]\[0\]: expected a new weight"):
        Judge(feedback_config()).restore(state)


# --- configuration --------------------------------------------------------------------------------


def test_without_feedback_nothing_changes() -> None:
    config = JudgeConfig()
    assert config.family_alpha == pytest.approx(0.01)
    assert not any(config.tests[name].enabled for name in FEEDBACK_TESTS)
    assert {name: test.alpha for name, test in config.tests.items() if name not in FEEDBACK_TESTS} == {
        name: test.alpha for name, test in DEFAULT_TESTS.items() if name not in FEEDBACK_TESTS}
    judge = Judge(config)
    judge.observe_feedback(rating(True, True))  # taken by no test
    assert not [v for v in judge.verdicts(T0) if v.source.startswith("judge:negative")]
    assert judge.summary()["disabled"] == []


def test_with_feedback_the_family_budget_is_the_same_and_named_tests_keep_their_alpha() -> None:
    config = JudgeConfig(feedback=True)
    assert config.family_alpha == pytest.approx(0.01)
    assert config.tests["negative_feedback"].alpha == config.tests["downstream_errors"].alpha == 0.001
    assert config.tests["errors"].alpha == pytest.approx(0.8 * DEFAULT_TESTS["errors"].alpha)
    given = JudgeConfig(feedback=True, tests={"errors": TestConfig(alpha=0.006)})
    assert given.tests["errors"].alpha == 0.006
    assert not JudgeConfig(tests={"negative_feedback": TestConfig(alpha=0.01)}).tests["negative_feedback"].enabled


@pytest.mark.parametrize("settle", [0.0, -1.0, math.inf, math.nan])
def test_feedback_settle_must_be_a_positive_number_of_seconds(settle: float) -> None:
    with pytest.raises(ValueError, match="feedback_settle must be a positive number of seconds"):
        JudgeConfig(feedback=True, feedback_settle=settle)


def test_a_shadow_record_is_refused() -> None:
    judge = Judge(feedback_config())
    shadow = Feedback(role=Role.SHADOW, request_id="r", routed_at=T0, weight=5.0, key_hash=None, name="thumbs",
                      value=False, negative=True, received_at=T0)
    with pytest.raises(ValueError, match="shadow"):
        judge.observe_feedback(shadow)
