"""The paired tests of the shadow stages: one request answered by stable and by the canary in the
shadow, compared with sign tests on the discordant pairs (core/judge/paired.py).

Pairs are simulated as real ones are correlated: both answers share the request's length
(lognormal, σ = 0.6) and its latency, and a hard prompt fails (or breaks the schema) on both now
and then; each answer adds its own noise (tokens lognormal σ = 0.3). Seeds are fixed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest

from canaryproxy.core.judge import Judge, JudgeConfig, PairedTestConfig
from canaryproxy.core.judge.config import DEFAULT_SHADOW_TESTS, PAIRED_TESTS
from canaryproxy.core.judge.paired import worse_side
from canaryproxy.core.judge.numerics import CANARY, STABLE
from canaryproxy.core.types import ErrorKind, Outcome, Role, ShadowPair, Status, Verdict

T0 = 1_800_000_000.0


def answer(role: Role, rng: random.Random, tokens: float, latency: float, failed: bool, schema_bad: bool,
           routed_at: float, key: int | None) -> Outcome:
    if failed:
        return Outcome(role=role, started=0.0, status=500, latency=latency / 10, routed_at=routed_at, key_hash=key)
    count = max(1, round(tokens * rng.lognormvariate(0.0, 0.3)))
    return Outcome(role=role, started=0.0, status=200, routed_at=routed_at, key_hash=key,
                   latency=latency * rng.lognormvariate(0.0, 0.2) * (1 + count / 500),
                   ttft=0.2 * rng.lognormvariate(0.0, 0.3), completion_tokens=count, prompt_tokens=400,
                   estimated_tokens=count, output_chars=4 * count, schema_ok=not schema_bad)


def both_or_own(rng: random.Random, rate: float, factor: float) -> tuple[bool, bool]:
    """(stable, canary) events: 30% of stable's rate shared by both (the prompt's doing), the rest
    each side's own; the canary's own share scaled so that its rate is `factor` × stable's."""
    shared = rng.random() < 0.3 * rate
    return (shared or rng.random() < 0.7 * rate,
            shared or rng.random() < 0.7 * rate + (factor - 1.0) * rate)


def shadow_pairs(seed: int, n: int, tokens: float = 1.0, failures: float = 1.0, schema: float = 1.0,
                 users: int = 0) -> Iterator[ShadowPair]:
    """`n` pairs, 10 per second; 2% failures and 1% schema failures on stable. With `users`, half
    the pairs come from that many sticky keys."""
    rng = random.Random(seed)
    hashes = [rng.getrandbits(64) for _ in range(users)]
    for i in range(n):
        key = hashes[rng.randrange(users)] if users and rng.random() < 0.5 else None
        length, latency = 250 * rng.lognormvariate(0.0, 0.6), rng.lognormvariate(0.0, 0.4)
        stable_failed, canary_failed = both_or_own(rng, 0.02, failures)
        stable_bad, canary_bad = both_or_own(rng, 0.01, schema)
        t = T0 + i / 10
        yield ShadowPair(answer(Role.STABLE, rng, length, latency, stable_failed, stable_bad, t, key),
                         answer(Role.SHADOW, rng, length * tokens, latency, canary_failed, canary_bad, t, key),
                         key_hash=key)


def config(**settings: object) -> JudgeConfig:
    settings.setdefault("warmup_seconds", 0.0)
    return JudgeConfig(**settings)


def pairs_to_fail(judge: Judge, pairs: Iterator[ShadowPair]) -> tuple[int | None, set[str]]:
    """Pairs taken in when the first paired test failed (checked every 10), and which failed."""
    for i, pair in enumerate(pairs, 1):
        judge.observe_pair(pair)
        if i % 10 == 0:
            failed = {v.source for v in judge.shadow_verdicts() if v.status is Status.FAIL}
            if failed:
                return i, failed
    return None, set()


def shadow_verdict(judge: Judge, name: str) -> Verdict:
    (found,) = [v for v in judge.shadow_verdicts() if v.source == f"judge:shadow_{name}"]
    return found


def pair(stable: dict[str, object] | None = None, shadow: dict[str, object] | None = None,
         key: int | None = None) -> ShadowPair:
    defaults: dict[str, object] = {"status": 200, "routed_at": T0}
    return ShadowPair(Outcome(role=Role.STABLE, started=0.0, **{**defaults, **(stable or {})}),
                      Outcome(role=Role.SHADOW, started=0.0, **{**defaults, **(shadow or {})}),
                      key_hash=key)


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("regression", "test", "within"),
    [
        ({"tokens": 1.5}, "completion_tokens", 100),  # 40 pairs median over 40 seeds, 70 at most
        ({"failures": 2.0}, "failed", 6_000),  # 1,380 median, 3,620 at most
        ({"schema": 3.0}, "schema", 4_000),  # 1,000 median, 2,580 at most
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_a_regressed_canary_fails_its_paired_test(
    regression: dict[str, float], test: str, within: int, seed: int
) -> None:
    found, failed = pairs_to_fail(Judge(config()), shadow_pairs(seed, within, **regression))
    assert found is not None, f"no paired test failed within {within} pairs"
    assert f"judge:shadow_{test}" in failed


def test_a_a_pairs_do_not_fail_over_many_seeds() -> None:
    # 200 runs of 1,000 correlated A/A pairs: at the 1% shadow family budget, two false rollbacks
    # would already be far out (binomial(200, 0.01): P(X >= 6) < 0.02%). 1,000 runs of 3,000
    # pairs are measured outside the suite (report).
    failures = [seed for seed in range(200) if pairs_to_fail(Judge(config()), shadow_pairs(seed, 1_000))[0]]
    assert len(failures) <= 5, failures


def test_the_fail_reason_counts_the_pairs_at_the_crossing() -> None:
    judge = Judge(config())
    found, _ = pairs_to_fail(judge, shadow_pairs(0, 2_000, tokens=1.5))
    assert found is not None
    failed = shadow_verdict(judge, "completion_tokens")
    assert failed.status is Status.FAIL
    canary, stable = failed.details["canary_worse"], failed.details["stable_worse"]
    assert canary > 2 * stable
    assert f"canary worse in {canary:,} pairs, stable worse in {stable:,}" in failed.reason
    assert "differences over 10%" in failed.reason
    for late in shadow_pairs(1, 500, tokens=1.5):
        judge.observe_pair(late)
    assert shadow_verdict(judge, "completion_tokens") == failed  # sticky: the evidence at the crossing


# --- what a pair is -------------------------------------------------------------------------------


def test_a_pair_is_discordant_only_beyond_the_margin() -> None:
    assert worse_side(100.0, 110.0, 0.1) is None
    assert worse_side(100.0, 110.1, 0.1) == CANARY
    assert worse_side(110.1, 100.0, 0.1) == STABLE
    assert worse_side(0.0, 0.0, 0.1) is None
    assert worse_side(100.0, 101.0, 0.0) == CANARY


def test_the_margin_is_configurable_per_test() -> None:
    wide = {"completion_tokens": PairedTestConfig(alpha=0.001, margin=0.6)}
    judge = Judge(config(shadow_tests=wide))
    found, failed = pairs_to_fail(judge, shadow_pairs(0, 2_000, tokens=1.5))
    assert "judge:shadow_completion_tokens" not in failed  # a 50% longer answer is within 60%
    assert shadow_verdict(judge, "completion_tokens").details["margin"] == 0.6


def test_each_quantity_compares_its_own_field() -> None:
    judge = Judge(config())
    judge.observe_pair(pair({"completion_tokens": 100, "output_chars": 400, "latency": 1.0, "ttft": 0.2},
                            {"completion_tokens": 200, "output_chars": 400, "latency": 0.5, "ttft": None}))
    judge.observe_pair(pair({"schema_ok": True, "guardrails": ("moderation",)},
                            {"schema_ok": False, "truncated": True}))
    counts = {name: (t["evidence"]["canary_worse"], t["evidence"]["stable_worse"], t["evidence"]["compared"])
              for name, t in judge.shadow_summary()["tests"].items()}  # type: ignore[union-attr]
    assert counts == {
        "failed": (1, 0, 2),  # a truncated answer is a failed one
        "schema": (1, 0, 1),
        "guardrail": (0, 1, 2),
        "truncation": (1, 0, 2),
        "completion_tokens": (1, 0, 1),
        "output_length": (0, 0, 1),
        "latency": (0, 1, 1),  # the truncated answer failed: that pair's amounts are not compared
        "ttft": (0, 0, 0),
    }


def test_reported_tokens_are_never_compared_with_an_estimate() -> None:
    judge = Judge(config())
    judge.observe_pair(pair({"completion_tokens": 100, "estimated_tokens": 100},
                            {"completion_tokens": 300, "estimated_tokens": 100, "usage_missing": True}))
    tokens = shadow_verdict(judge, "completion_tokens").details
    assert (tokens["compared"], tokens["canary_worse"]) == (1, 0)  # the estimates, 100 and 100


def test_a_pair_whose_user_left_is_no_canary_failure() -> None:
    judge = Judge(config())
    for _ in range(200):
        judge.observe_pair(pair({"error": ErrorKind.CLIENT_DISCONNECT, "status": 0},
                                {"error": ErrorKind.FIRST_BYTE_TIMEOUT, "status": 0}))
    assert shadow_verdict(judge, "failed").details["compared"] == 0
    assert judge.shadow_summary()["pairs_dropped"] == 200


def test_the_roles_must_be_stable_and_shadow() -> None:
    judge = Judge(config())
    canary = Outcome(role=Role.CANARY, started=0.0, status=200)
    with pytest.raises(ValueError, match=r"\(stable, shadow\), got \(stable, canary\)"):
        judge.observe_pair(ShadowPair(Outcome(role=Role.STABLE, started=0.0), canary))
    with pytest.raises(ValueError, match="shadow"):
        judge.observe(Outcome(role=Role.SHADOW, started=0.0, weight=5.0))  # the live tests refuse it


def test_pairs_never_reach_the_live_tests() -> None:
    judge = Judge(config())
    for each in shadow_pairs(0, 500, failures=10.0):
        judge.observe_pair(each)
    assert judge.summary()["tests"]["errors"]["now"]["observed"] == {"stable": 0, "canary": 0}
    assert all(v.status is Status.PASS for v in judge.verdicts())


def test_a_cold_canary_is_not_judged_on_latency() -> None:
    judge = Judge(JudgeConfig(warmup_seconds=20.0))
    for i in range(150):  # 15 s, 10 per second: all in the warm-up
        at = T0 + i / 10
        judge.observe_pair(pair({"latency": 1.0, "routed_at": at}, {"latency": 3.0, "routed_at": at}))
    assert shadow_verdict(judge, "latency").details["compared"] == 0
    for i in range(150, 300):
        at = T0 + i / 10
        judge.observe_pair(pair({"latency": 1.0, "routed_at": at}, {"latency": 3.0, "routed_at": at}))
    assert shadow_verdict(judge, "latency").status is Status.FAIL


# --- per-key caps ---------------------------------------------------------------------------------


def test_one_users_discordant_pairs_are_capped() -> None:
    judge = Judge(config())
    for _ in range(50):  # one user whose prompt breaks the canary, retried
        judge.observe_pair(pair({}, {"status": 500}, key=7))
    failed = shadow_verdict(judge, "failed")
    assert failed.status is Status.PASS
    assert (failed.details["canary_worse"], failed.details["dropped_by_key_cap"]) == (3, 47)


def test_the_amount_tests_take_one_pair_per_user() -> None:
    judge = Judge(config())
    for _ in range(50):
        judge.observe_pair(pair({"completion_tokens": 100}, {"completion_tokens": 300}, key=7))
    assert shadow_verdict(judge, "completion_tokens").details["compared"] == 1
    for _ in range(50):
        judge.observe_pair(pair({"completion_tokens": 100}, {"completion_tokens": 300}))
    assert shadow_verdict(judge, "completion_tokens").status is Status.FAIL  # pairs without a key: uncapped


# --- shown no worse -------------------------------------------------------------------------------


def test_a_healthy_canary_is_shown_no_worse_and_a_regressed_one_is_not() -> None:
    healthy = Judge(config())
    assert not healthy.shadow_no_worse(1.5)  # nothing compared yet
    for each in shadow_pairs(0, 2_000):
        healthy.observe_pair(each)
    # At 2% failures each, 3% of the pairs are discordant on failures: their odds are still far
    # from 1.5 (the bound is 3.1 here), but the difference is shown below 2% of the pairs.
    assert not healthy.shadow_no_worse(1.5, negligible=0.01)
    assert healthy.shadow_no_worse(1.5, negligible=0.02)
    regressed = Judge(config())
    for each in shadow_pairs(0, 2_000, tokens=1.5):
        regressed.observe_pair(each)
    assert not regressed.shadow_no_worse(1.5, negligible=0.02)


def test_a_quantity_the_versions_never_disagree_on_holds_nothing() -> None:
    judge = Judge(config())
    for _ in range(2_000):  # no guardrail ever fires, every schema passes, no TTFT (JSON)
        judge.observe_pair(pair({"schema_ok": True, "completion_tokens": 100, "latency": 1.0},
                                {"schema_ok": True, "completion_tokens": 100, "latency": 1.0}))
    assert judge.shadow_no_worse(1.5)


def test_a_canary_worse_on_a_rare_quantity_is_not_shown_no_worse_early() -> None:
    judge = Judge(config())
    for i in range(2_000):
        guardrails = ("moderation",) if i % 40 == 0 else ()
        judge.observe_pair(pair({"latency": 1.0}, {"latency": 1.0, "guardrails": guardrails}))
    assert not judge.shadow_no_worse(1.5)  # 2.5% of the pairs worse on the canary, none on stable


@pytest.mark.parametrize("tolerance", [0.0, -1.0, float("inf"), float("nan")])
def test_no_worse_needs_a_positive_tolerance(tolerance: float) -> None:
    with pytest.raises(ValueError, match="tolerance must be a positive ratio"):
        Judge(config()).shadow_no_worse(tolerance)


@pytest.mark.parametrize("negligible", [0.0, 1.0, float("nan")])
def test_no_worse_needs_a_negligible_share(negligible: float) -> None:
    with pytest.raises(ValueError, match=r"negligible must be a share in \(0, 1\)"):
        Judge(config()).shadow_no_worse(1.5, negligible)


# --- config and state -----------------------------------------------------------------------------


def test_the_shadow_family_has_its_own_one_percent() -> None:
    judge_config = JudgeConfig()
    assert judge_config.shadow_family_alpha == pytest.approx(0.01)
    assert judge_config.family_alpha == pytest.approx(0.01)  # the live family is unchanged
    assert set(DEFAULT_SHADOW_TESTS) == set(PAIRED_TESTS)
    off = JudgeConfig(shadow_tests={"failed": PairedTestConfig(alpha=0.004, enabled=False)})
    assert off.shadow_family_alpha == pytest.approx(0.006)
    assert "judge:shadow_failed" not in {v.source for v in Judge(off).shadow_verdicts()}


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        ({"nope": PairedTestConfig(alpha=0.001)}, "judge.shadow_tests: unknown test 'nope'"),
        ({"latency": PairedTestConfig(alpha=0.0)}, "shadow_tests.latency.alpha must be between 0 and 1"),
        ({"latency": PairedTestConfig(alpha=0.001, margin=-0.1)}, "shadow_tests.latency.margin must be a fraction"),
        ({"failed": PairedTestConfig(alpha=0.001, r0=30.0)}, "shadow_tests.failed.r0 must be below"),
        ({"failed": PairedTestConfig(alpha=0.999)}, "shadow tests' alphas sum to"),
    ],
)
def test_bad_shadow_tests_are_refused_precisely(tests: dict[str, PairedTestConfig], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JudgeConfig(shadow_tests=tests)


def test_a_restored_judge_continues_with_its_paired_evidence() -> None:
    pairs = list(shadow_pairs(0, 3_000, failures=2.0))
    whole = Judge(config())
    for each in pairs:
        whole.observe_pair(each)
    first = Judge(config())
    for each in pairs[:1_500]:
        first.observe_pair(each)
    restored = Judge.from_state(config(), json.loads(json.dumps(first.state())))
    assert restored.shadow_summary() == first.shadow_summary()
    for each in pairs[1_500:]:
        restored.observe_pair(each)
    assert restored.shadow_verdicts() == whole.shadow_verdicts()
    assert restored.shadow_summary() == whole.shadow_summary()
    assert restored.state() == whole.state()


def test_a_state_from_before_the_paired_tests_restores_them_empty() -> None:
    judge = Judge(config())
    for each in shadow_pairs(0, 100):
        judge.observe_pair(each)
    state = judge.state()
    del state["shadow"]
    judge.restore(state)
    assert judge.shadow_summary()["pairs"] == 0


def test_a_paired_state_under_other_shadow_tests_is_refused_and_changes_nothing() -> None:
    judge = Judge(config())
    for each in shadow_pairs(0, 100):
        judge.observe_pair(each)
    other = Judge(config(shadow_tests={"latency": PairedTestConfig(alpha=0.001, margin=0.2)}))
    before = other.state()
    with pytest.raises(ValueError, match="shadow.config: saved under other shadow tests"):
        other.restore(judge.state())
    assert other.state() == before
    broken = judge.state()
    broken["shadow"]["lanes"]["failed"]["worse"] = [500, 500]  # type: ignore[index]
    expected = r"shadow.lanes.failed: more discordant pairs \(10\d\d\) than compared \(100\)"
    with pytest.raises(ValueError, match=expected):
        Judge(config()).restore(broken)


def test_reset_forgets_the_pairs() -> None:
    judge = Judge(config())
    pairs_to_fail(judge, shadow_pairs(0, 500, tokens=1.5))
    judge.reset()
    assert all(v.status is Status.PASS for v in judge.shadow_verdicts())
    assert judge.shadow_summary()["pairs"] == 0


def test_a_user_first_seen_in_the_warm_up_still_gives_a_latency_pair_later():
    judge = Judge(config(warmup_seconds=20.0))
    slow = {"latency": 2.0, "completion_tokens": 10}
    judge.observe_pair(pair({"latency": 1.0, "completion_tokens": 10}, slow, key=7))  # cold: tokens only
    judge.observe_pair(pair({"latency": 1.0, "routed_at": T0 + 30, "completion_tokens": 10},
                            {**slow, "routed_at": T0 + 30}, key=7))  # warm: latency takes it
    tests = judge.shadow_summary()["tests"]
    assert tests["latency"]["evidence"]["compared"] == 1 and tests["completion_tokens"]["evidence"]["compared"] == 1
