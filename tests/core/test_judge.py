"""The sequential judge: its statistics against reference numbers, and its behaviour on streams.

Reference numbers were computed once with scipy/numpy (not a project dependency); each carries
the expression that produced it. Random streams use fixed seeds, so every test is deterministic.
"""

from __future__ import annotations

import dataclasses
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
from canaryproxy.core.types import Arm, ErrorKind, Outcome, Status

# r = np.geomspace(1.1, 20, 40): the default alternatives for r0 = 1
ERRORS_THRESHOLD = 1 / 0.0035


def only(*names: str, tests: dict[str, TestConfig] | None = None, **settings) -> JudgeConfig:
    """A config with just the named tests enabled: at their default settings unless in `tests`."""
    chosen = {**DEFAULT_TESTS, **(tests or {})}
    enabled = {name: dataclasses.replace(test, enabled=name in names) for name, test in chosen.items()}
    return JudgeConfig(tests=enabled, **settings)


def request(canary: bool, weight: float = 5.0, **fields) -> Outcome:
    fields.setdefault("status", 200)
    return Outcome(arm=Arm.CANARY if canary else Arm.STABLE, started=0.0, weight=weight, **fields)


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


def event_stream(seed: int, weight: float, ratio: float, events: int):
    """Error events whose canary share is θ = w·r / (w·r + 1 − w): a canary r× as error-prone."""
    rng = random.Random(seed)
    w = weight / 100
    theta = w * ratio / (w * ratio + 1 - w)
    return (error(rng.random() < theta, weight) for _ in range(events))


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
    feed(judge, [error(True, 50.0), error(False, 50.0), error(True, 50.0), error(True, 50.0)])
    # t = r / (r + 1); log(mean((t / 0.5)**3 * ((1 - t) / 0.5)))
    assert now(judge, "errors")["log_e_value"] == pytest.approx(0.2721122397187512, rel=1e-12)


def test_theta_is_taken_at_each_events_weight() -> None:
    judge = Judge(only("errors"))
    sequence = [(5.0, True), (5.0, False), (50.0, False), (25.0, True), (50.0, True), (5.0, True),
                (25.0, False)]  # (weight, from the canary)
    feed(judge, [error(canary, weight) for weight, canary in sequence])
    # th = lambda w, r: w*r/(w*r + 1 - w); ll = sum over events of log(th(w, r)/th(w, 1)) for a
    # canary event, log((1 - th(w, r))/(1 - th(w, 1))) for a stable one; log(mean(exp(ll)))
    assert now(judge, "errors")["log_e_value"] == pytest.approx(1.9701760345224035, rel=1e-12)


def test_healthy_stream_of_100000_events_does_not_reject() -> None:
    judge = Judge(only("errors"))
    feed(judge, event_stream(seed=7, weight=5.0, ratio=1.0, events=100_000))
    result = verdict(judge, "errors")
    assert result.status is Status.PASS
    assert result.details["canary"]["events"] + result.details["stable"]["events"] == 100_000
    assert 0.9 < result.details["ratio"] < 1.1


def test_threefold_regression_is_detected_within_a_few_thousand_events() -> None:
    judge = Judge(only("errors"))
    feed(judge, event_stream(seed=7, weight=5.0, ratio=3.0, events=3_000))
    result = verdict(judge, "errors")
    assert result.status is Status.FAIL
    events = result.details["canary"]["events"] + result.details["stable"]["events"]
    assert events < 1_000  # the evidence at the crossing, not at the end of the stream
    assert result.details["ratio"] > 1.5


def test_weight_ramp_with_a_healthy_canary_does_not_reject() -> None:
    # The canary's share of events jumps from 5% to 50%: only θ taken per event keeps this quiet.
    judge = Judge(only("errors"))
    for seed, weight in enumerate((5.0, 50.0, 25.0)):
        feed(judge, event_stream(seed=seed, weight=weight, ratio=1.0, events=3_000))
    result = verdict(judge, "errors")
    assert result.status is Status.PASS
    assert 0.85 < result.details["ratio"] < 1.15


# --- event tests: what counts -----------------------------------------------------------------


def test_fail_reason_carries_the_evidence_at_the_crossing() -> None:
    judge = Judge(only("errors"))
    feed(judge, [request(True) for _ in range(1_009)])
    feed(judge, [error(False) if i % 100 == 0 else request(False) for i in range(19_800)])
    feed(judge, [error(True) for _ in range(40)])
    # First k: logsumexp(k*log(tj/t0) + 198*log((1-tj)/(1-t0))) - log(40) >= log(1/0.0035),
    # tj = w*r/(w*r + 1 - w), w = 0.05: k = 26, log e = 5.8882986420490955 (e-value 360.8).
    # Ratio: 26*0.95 / (0.05*198) = 2.4949...
    result = verdict(judge, "errors")
    assert result.status is Status.FAIL
    assert result.reason == (
        "judge: failed requests canary 2.5× stable (e-value 361 ≥ 286; "
        "canary 26 events / 1,035 req, stable 198 / 19,800)"
    )
    assert result.details["statistic"] == "conditional-label mixture e-value"
    assert result.details["log_e_value"] == pytest.approx(5.8882986420490955, rel=1e-12)
    assert result.details["threshold"] == pytest.approx(ERRORS_THRESHOLD)
    assert result.details["ratio"] == pytest.approx(26 * 0.95 / (0.05 * 198), rel=1e-9)
    assert result.details["canary"] == {"events": 26, "requests": 1_035}
    assert result.details["stable"] == {"events": 198, "requests": 19_800}


def test_fail_is_sticky_until_reset() -> None:
    judge = Judge(only("errors"))
    feed(judge, [error(True, 50.0) for _ in range(12)])
    failed = verdict(judge, "errors")
    assert failed.status is Status.FAIL
    feed(judge, [error(False, 50.0) for _ in range(200)])  # the e-value falls far below 1/α
    assert now(judge, "errors")["log_e_value"] < 0
    assert verdict(judge, "errors") == failed
    judge.reset()
    assert verdict(judge, "errors").status is Status.PASS
    assert now(judge, "errors")["canary"] == {"events": 0, "requests": 0}


def test_pass_reason_says_there_is_no_evidence() -> None:
    judge = Judge(only("errors", "guardrail"))
    feed(judge, [error(False, 50.0), error(True, 50.0), request(False, 50.0)])
    # t = r / (r + 1); mean(t * (1 - t) / 0.25) = 0.5909919668189818
    assert verdict(judge, "errors").reason == (
        "judge: failed requests canary 1.0× stable, no evidence it is worse "
        "(e-value 0.591 < 286; canary 1 events / 1 req, stable 1 / 2)"
    )
    assert verdict(judge, "guardrail").reason == (
        "judge: guardrail interventions: none yet (e-value 1 < 1,000; canary 0 events / 1 req, stable 0 / 2)"
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
    capped = Judge(only("errors"))
    feed(capped, [error(True, 50.0, key_hash=42) for _ in range(50)])
    assert verdict(capped, "errors").status is Status.PASS
    assert now(capped, "errors")["canary"] == {"events": 3, "requests": 50}
    assert now(capped, "errors")["dropped_by_key_cap"] == 47

    keyless = Judge(only("errors"))  # the same 50 events from independent requests
    feed(keyless, [error(True, 50.0) for _ in range(50)])
    assert verdict(keyless, "errors").status is Status.FAIL


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
    judge = Judge(only("latency"))
    feed(judge, [request(True, 50.0, latency=30.0) for _ in range(50)])
    inactive = verdict(judge, "latency")
    assert inactive.status is Status.PASS
    assert inactive.reason == "judge: slow requests test inactive until a latency threshold is set"
    assert judge.summary()["tests"]["latency"]["active"] is False

    judge.set_latency_threshold(2.5)
    feed(judge, [error(True, 50.0, latency=30.0) for _ in range(50)])  # failures are not latency events
    feed(judge, [request(False, 50.0, latency=1.0) for _ in range(50)])
    assert now(judge, "latency")["canary"] == {"events": 0, "requests": 0}
    feed(judge, [request(True, 50.0, latency=3.0) for _ in range(15)])
    failed = verdict(judge, "latency")
    assert failed.status is Status.FAIL
    assert failed.reason.startswith("judge: requests slower than 2.5 s on canary only (e-value ")


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
def test_latency_threshold_must_be_a_positive_duration(seconds: float) -> None:
    with pytest.raises(ValueError, match="latency threshold must be a positive number of seconds"):
        Judge().set_latency_threshold(seconds)


def test_reset_forgets_the_latency_threshold() -> None:
    judge = Judge(only("latency"))
    judge.set_latency_threshold(1.0)
    judge.reset()
    assert judge.summary()["latency_threshold"] is None
    assert "inactive" in verdict(judge, "latency").reason


# --- confidence sequence ----------------------------------------------------------------------


def test_no_worse_once_the_upper_bound_is_below_the_tolerance() -> None:
    judge = Judge(only("errors"))
    assert not judge.no_worse(1.2)
    feed(judge, event_stream(seed=3, weight=50.0, ratio=0.8, events=100))
    assert not judge.no_worse(1.2)  # not enough evidence yet
    feed(judge, event_stream(seed=4, weight=50.0, ratio=0.8, events=4_000))
    bound = judge.summary()["tests"]["errors"]["ratio_upper_bound"]
    assert 0.8 < bound <= 1.2
    assert judge.no_worse(1.2)
    assert not judge.no_worse(0.8)


def test_upper_bound_stays_above_a_worse_canarys_ratio() -> None:
    judge = Judge(only("errors", tests={"errors": TestConfig(alpha=0.0035, r0=2.0)}))
    for seed in range(10):  # the bound is checked along the way, as the controller would
        feed(judge, event_stream(seed=seed, weight=50.0, ratio=1.5, events=500))
        assert judge.summary()["tests"]["errors"]["ratio_upper_bound"] > 1.5
    assert verdict(judge, "errors").status is Status.PASS  # within the tolerance r0 = 2
    assert not judge.no_worse(1.2)


def test_no_worse_needs_every_event_test_active() -> None:
    judge = Judge(only("errors", "latency"))
    feed(judge, event_stream(seed=5, weight=50.0, ratio=0.5, events=3_000))
    assert not judge.no_worse(2.0)  # the latency test has no threshold, so no bound
    judge.set_latency_threshold(10.0)
    feed(judge, [request(i % 3 == 0, 50.0, latency=20.0) for i in range(3_000)])
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
    # L = log(1000); rho = (200/sig2)/(2L + log(1 + 2L));
    # 0.5*log(4*rho/(v+rho)) + s*s/(2*(v+rho)) + log_ndtr(s/sqrt(v+rho))
    tokens = now(judge, "tokens")
    assert tokens["log_e_value"] == pytest.approx(1.4993212370032716, rel=1e-9)
    assert tokens["sigma2"] == pytest.approx(0.18053337270078598, rel=1e-12)
    assert tokens["rho"] == pytest.approx(67.09563249385667, rel=1e-12)
    assert tokens["ratio"] == pytest.approx(math.exp(0.10704165731768445), rel=1e-12)
    assert verdict(judge, "tokens").reason == (
        "judge: tokens per request canary 1.1× stable, no evidence it is worse "
        "(e-value 4.48 < 1,000; canary 100 req, stable 150 req)"
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
    assert now(judge, "tokens")["canary"] == {"samples": 3 + 5}
    assert now(judge, "cost")["canary"] == {"samples": 3}


# --- configuration and summary ----------------------------------------------------------------


def test_unknown_test_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as raised:
        JudgeConfig(tests={"erors": TestConfig(alpha=0.01)})
    assert str(raised.value) == (
        "judge.tests: unknown test 'erors'; known tests: errors, latency, guardrail, schema, "
        "truncation, tokens, output_length, cost, log_latency"
    )


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"tests": {"errors": TestConfig(alpha=0.0)}}, "tests.errors.alpha must be between 0 and 1, got 0.0"),
        ({"tests": {"cost": TestConfig(alpha=0.01, r0=-1.0)}}, "tests.cost.r0 must be a positive number"),
        ({"tests": {"schema": TestConfig(alpha=0.01, r0=19.0)}}, "tests.schema.r0 must be below max_ratio"),
        ({"tests": {"errors": TestConfig(alpha=0.995)}}, "the enabled tests' alphas sum to 1; must be"),
        ({"burn_in": 99}, "burn_in must be at least 100"),
        ({"alternatives": 0}, "alternatives must be at least 1, got 0"),
    ],
)
def test_invalid_config_says_what_is_wrong(settings: dict, problem: str) -> None:
    with pytest.raises(ValueError, match="invalid judge config: .*" + problem.replace(".", r"\.")):
        JudgeConfig(**settings)


def test_named_tests_override_defaults_and_disabled_tests_give_no_verdict() -> None:
    config = JudgeConfig(
        tests={"errors": TestConfig(alpha=0.005, r0=1.2), "cost": TestConfig(alpha=0.00025, enabled=False)}
    )
    assert config.tests["errors"] == TestConfig(alpha=0.005, r0=1.2)
    assert config.tests["latency"] == DEFAULT_TESTS["latency"]
    assert config.family_alpha == pytest.approx(0.01 + 0.0015 - 0.00025)
    assert JudgeConfig().family_alpha == pytest.approx(0.01)
    judge = Judge(config)
    sources = [v.source for v in judge.verdicts()]
    assert "judge:cost" not in sources
    assert len(sources) == 8
    assert judge.summary()["disabled"] == ["cost"]


def test_summary_is_json_safe_after_a_canary_only_failure() -> None:
    judge = Judge()
    judge.set_latency_threshold(1.0)
    feed(judge, [error(True, 50.0) for _ in range(20)])  # no stable events: the ratio is unbounded
    summary = json.loads(json.dumps(judge.summary(), allow_nan=False))
    errors = summary["tests"]["errors"]
    assert errors["status"] == "fail"
    assert errors["evidence"]["ratio"] is None
    assert errors["reason"].startswith("judge: failed requests on canary only (e-value ")
    assert summary["tests"]["tokens"]["now"]["log_e_value"] is None
