"""The judge's amount tests, its configuration and its summary.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from canaryproxy.core.judge import DEFAULT_TESTS, Judge, JudgeConfig, TestConfig
from canaryproxy.core.types import Status
from tests.core.judge_support import error, feed, now, only, request, verdict


# --- amount tests -----------------------------------------------------------------------------


def test_normal_mixture_matches_reference() -> None:
    judge = Judge(only("tokens", tests={"tokens": TestConfig(alpha=0.0005)}))
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
        "schema, truncation, tokens, estimated_tokens, output_length, cost, log_latency, negative_feedback, "
        "downstream_errors"
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
    assert len(sources) == 10
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


# --- like with like: token sources ---------------------------------------------------------------


def test_a_canary_without_usage_is_tested_on_the_proxys_count_never_against_reported_counts() -> None:
    judge = Judge(only("tokens", "estimated_tokens"))
    rng = random.Random(3)

    def reply(canary: bool, tokens: int):
        if canary:  # the canary's server sends no usage: completion is the estimate, no prompt
            return request(True, completion_tokens=tokens, estimated_tokens=tokens, usage_missing=True)
        return request(False, prompt_tokens=400, completion_tokens=tokens + 1, estimated_tokens=tokens)

    # Healthy: the same answers on both sides. Reported prompt + completion (~500) against the
    # canary's estimate (~100) would be a "5x better" canary; neither test compares them.
    feed(judge, [reply(i % 2 == 0, int(rng.lognormvariate(4.6, 0.3))) for i in range(600)])
    assert now(judge, "tokens")["canary"] == {"samples": 0}
    assert now(judge, "estimated_tokens")["canary"] == {"samples": 300}
    assert {verdict(judge, name).status for name in ("tokens", "estimated_tokens")} == {Status.PASS}
    assert 0.9 < now(judge, "estimated_tokens")["ratio"] < 1.1
    # A real regression: the canary's answers x1.5, caught on the proxy's count.
    feed(judge, [reply(i % 2 == 0, int(rng.lognormvariate(4.6, 0.3) * (1.5 if i % 2 == 0 else 1)))
                 for i in range(600)])
    assert verdict(judge, "estimated_tokens").status is Status.FAIL
    assert verdict(judge, "tokens").status is Status.PASS
