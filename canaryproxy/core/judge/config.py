"""The judge's settings: which tests run, each one's share α of the false-rollback budget and its
tolerance r₀, and the settings every test shares. Validated once, when built.

The α split (Bonferroni, valid under continuous monitoring) of the default 1% family budget:

    errors 0.6%   latency 0.2%   latency_tail 0.04%   guardrail 0.06%   schema 0.02%
    tokens 0.025%   estimated_tokens 0.025%   truncation 0.01%   output_length 0.01%
    cost 0.005%   log_latency 0.005%

The tests with goals keep most of it; the threshold is log(1/α), so every halving of a test's α
costs only log 2 ≈ 0.7 nats of evidence. Truncation is inside `errors` already (a truncated body
is a failed request), length and cost move with tokens, and mean log latency overlaps the
exceedance test: they are cross-checks and get little; tokens fire at the burn-in for a large
change even at 0.05%. The token budget is split between two tests that never mix sources: `tokens`
takes only responses with reported usage (prompt plus completion), `estimated_tokens` the proxy's own
count of completion tokens on every inspected response of both versions (core/token_sources.py says
why comparing reported counts with estimates is no test); a canary whose server stops reporting
usage is still tested, on the estimate. `latency_tail` gets a small α: a tail regression is large when it is there
at all. A disabled test's share is simply not spent; `JudgeConfig.family_alpha` is the sum over
the enabled tests.

**Feedback.** The two feedback tests (`negative_feedback`, `downstream_errors`: feedback.py) run
only with `JudgeConfig.feedback` (the server sets it from `feedback.enabled`). Without it the split
above is the one in force, to the digit, and the feedback tests are off whatever `tests` says. With
it the family budget stays what the operator set: the feedback tests take a fifth of it,

    negative_feedback 0.1%   downstream_errors 0.1%

and every other test keeps 80% of its share (`FEEDBACK_DEFAULT_TESTS`): errors 0.48%, latency
0.16%, ... That costs each of them log(1/0.8) = 0.22 nats of evidence, a few percent more requests
to a detection; a fifth is what the users' verdict is worth where it is collected, and the two
share it equally because neither is a cross-check of the other or of a request test: a canary
can fail its users or its consumers with every response a 200.

**Shadow stages.** The paired tests (paired.py: one request answered by both versions) are a
family of their own, `JudgeConfig.shadow_tests`, with its own default 1% budget:

    failed 0.4%   schema 0.15%   guardrail 0.1%   truncation 0.05%
    completion_tokens 0.1%   output_length 0.05%   latency 0.1%   ttft 0.05%

They see pairs only in shadow stages, where the live tests see no canary request (weight 0), and
the live tests see requests only in live stages, where no pair is made: the two families never
judge the same stage, so neither takes from the other's budget. The chance of a false rollback
over a whole rollout with both kinds of stages is at most the sum, `family_alpha +
shadow_family_alpha` (2% at the defaults). Failures keep most of the shadow budget (the
regression that hurts most), truncation is inside `failed` and output length moves with tokens:
cross-checks; TTFT overlaps latency. Each amount test also has a `margin` (default 10%): a pair
is discordant only when one side's amount exceeds the other's by more than it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

# × r0: the smallest alternative ratio of an event test; smaller ratios take longer than a
# rollout to show at a few percent of the traffic, so they are not worth prior mass.
SMALLEST_ALTERNATIVE = 1.4


@dataclass(frozen=True, slots=True, kw_only=True)
class TestConfig:
    """One test: whether it runs, its share α of the false-rollback budget, its tolerance r₀.

    r₀ = 1.2 means "a canary up to 1.2× stable's event rate (or mean) is acceptable".
    """

    __test__ = False  # not a pytest test class, despite the name

    alpha: float
    enabled: bool = True
    r0: float = 1.0


EVENT_TESTS: Mapping[str, str] = MappingProxyType(
    {
        "errors": "failed requests",
        "latency": "slow requests",
        "latency_tail": "very slow requests",
        "guardrail": "guardrail interventions",
        "schema": "schema failures",
        "truncation": "truncated responses",
    }
)
AMOUNT_TESTS: Mapping[str, str] = MappingProxyType(
    {
        "tokens": "tokens per request",
        "estimated_tokens": "completion tokens per request as the proxy counts them",
        "output_length": "output length",
        "cost": "cost per request",
        "log_latency": "latency",
    }
)
FEEDBACK_TESTS: Mapping[str, str] = MappingProxyType(
    {
        "negative_feedback": "negative user feedback",
        "downstream_errors": "downstream failures",
    }
)
# The tests a cold start fails, which skip the requests routed during a warm-up.
WARM_UP_TESTS = frozenset({"latency", "latency_tail", "log_latency"})
# The event tests that wait for stable's latency quantiles (p95, p99: set_latency_thresholds).
LATENCY_EVENT_TESTS = ("latency", "latency_tail")
DEFAULT_TESTS: Mapping[str, TestConfig] = MappingProxyType(
    {
        "errors": TestConfig(alpha=0.006),
        "latency": TestConfig(alpha=0.002),
        "latency_tail": TestConfig(alpha=0.0004),
        "guardrail": TestConfig(alpha=0.0006),
        "schema": TestConfig(alpha=0.0002),
        "truncation": TestConfig(alpha=0.0001),
        "tokens": TestConfig(alpha=0.00025),
        "estimated_tokens": TestConfig(alpha=0.00025),
        "output_length": TestConfig(alpha=0.0001),
        "cost": TestConfig(alpha=0.00005),
        "log_latency": TestConfig(alpha=0.00005),
        # Run only with JudgeConfig.feedback, with the others at FEEDBACK_DEFAULT_TESTS (docstring).
        "negative_feedback": TestConfig(alpha=0.001),
        "downstream_errors": TestConfig(alpha=0.001),
    }
)
FEEDBACK_SHARE_KEPT = 0.8  # of each other test's α when the feedback tests run
FEEDBACK_DEFAULT_TESTS: Mapping[str, TestConfig] = MappingProxyType(
    {
        name: test if name in FEEDBACK_TESTS else TestConfig(alpha=test.alpha * FEEDBACK_SHARE_KEPT)
        for name, test in DEFAULT_TESTS.items()
    }
)
DEFAULT_FEEDBACK_SETTLE = 120.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PairedTestConfig:
    """One paired test of the shadow stages (paired.py): whether it runs, its share α of the
    shadow family's budget, its tolerance r₀ on the odds that the canary is the worse side of a
    discordant pair (1: no more often than stable), and for amounts the `margin`: a pair is
    discordant when one side exceeds the other by more than this fraction (0.1: 10% larger)."""

    __test__ = False  # not a pytest test class, despite the name

    alpha: float
    enabled: bool = True
    r0: float = 1.0
    margin: float = 0.1


PAIRED_EVENT_TESTS: Mapping[str, str] = MappingProxyType(
    {
        "failed": "failed requests",
        "schema": "schema failures",
        "guardrail": "guardrail interventions",
        "truncation": "truncated responses",
    }
)
PAIRED_AMOUNT_TESTS: Mapping[str, str] = MappingProxyType(
    {
        "completion_tokens": "completion tokens",
        "output_length": "output length",
        "latency": "latency",
        "ttft": "time to first token",
    }
)
PAIRED_TESTS: Mapping[str, str] = MappingProxyType({**PAIRED_EVENT_TESTS, **PAIRED_AMOUNT_TESTS})
DEFAULT_SHADOW_TESTS: Mapping[str, PairedTestConfig] = MappingProxyType(
    {
        "failed": PairedTestConfig(alpha=0.004),
        "schema": PairedTestConfig(alpha=0.0015),
        "guardrail": PairedTestConfig(alpha=0.001),
        "truncation": PairedTestConfig(alpha=0.0005),
        "completion_tokens": PairedTestConfig(alpha=0.001),
        "output_length": PairedTestConfig(alpha=0.0005),
        "latency": PairedTestConfig(alpha=0.001),
        "ttft": PairedTestConfig(alpha=0.0005),
    }
)  # seconds after a response by which its feedback has arrived


def default_tests(feedback: bool) -> Mapping[str, TestConfig]:
    """The default α split without or with the feedback tests (module docstring)."""
    return FEEDBACK_DEFAULT_TESTS if feedback else DEFAULT_TESTS


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeConfig:
    """Settings of the judge. Tests not named in `tests` keep their defaults (`default_tests`).

    `feedback`: whether the feedback tests run (only then; without it they are disabled whatever
    `tests` says). `feedback_settle`: seconds after a response by which its feedback is expected
    to have arrived; until the requests at the current weight are that old, the feedback tests
    say INCONCLUSIVE (feedback.py).
    """

    tests: Mapping[str, TestConfig] = field(default_factory=dict)  # by name; the others: defaults
    alternatives: int = 16  # J: alternative ratios in each event-test mixture
    max_ratio: float = 40.0  # the largest alternative ratio
    max_events_per_key: int = 3
    max_samples_per_key: int = 1
    key_memory: int = 50_000  # keys per generation of a per-key count (two generations kept)
    burn_in: int = 100  # samples per version in a stratum before an amount test may fire
    warmup_seconds: float = 20.0  # after each weight increase, the latency tests skip this long
    # ...and the other event tests accept a canary up to this many times worse (× r0) meanwhile.
    warmup_tolerance: float = 2.0
    feedback: bool = False
    feedback_settle: float = DEFAULT_FEEDBACK_SETTLE
    # The paired tests of the shadow stages, by name; the others: DEFAULT_SHADOW_TESTS.
    shadow_tests: Mapping[str, PairedTestConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tests) - set(DEFAULT_TESTS))
        if unknown:
            raise ValueError(
                f"judge.tests: unknown test {', '.join(map(repr, unknown))}; "
                f"known tests: {', '.join(DEFAULT_TESTS)}"
            )
        merged = {name: self.tests.get(name, default) for name, default in default_tests(self.feedback).items()}
        if not self.feedback:  # the feedback tests need feedback: off, so their α is not spent
            merged.update({name: replace(merged[name], enabled=False) for name in FEEDBACK_TESTS})
        object.__setattr__(self, "tests", MappingProxyType(merged))
        unknown = sorted(set(self.shadow_tests) - set(PAIRED_TESTS))
        if unknown:
            raise ValueError(
                f"judge.shadow_tests: unknown test {', '.join(map(repr, unknown))}; "
                f"known tests: {', '.join(PAIRED_TESTS)}"
            )
        shadow = {name: self.shadow_tests.get(name, default) for name, default in DEFAULT_SHADOW_TESTS.items()}
        object.__setattr__(self, "shadow_tests", MappingProxyType(shadow))
        problems = self._test_problems() + self._shadow_problems() + self._setting_problems()
        if problems:
            raise ValueError("invalid judge config: " + "; ".join(problems))

    @property
    def family_alpha(self) -> float:
        """The chance of any false rollback: the sum of the enabled tests' α (Bonferroni)."""
        return math.fsum(test.alpha for test in self.tests.values() if test.enabled)

    @property
    def shadow_family_alpha(self) -> float:
        """The chance of any false rollback in the shadow stages: the enabled paired tests' α."""
        return math.fsum(test.alpha for test in self.shadow_tests.values() if test.enabled)

    def enabled(self, kind: Mapping[str, str]) -> tuple[str, ...]:
        """The enabled tests of one kind (`EVENT_TESTS`, `AMOUNT_TESTS` or `FEEDBACK_TESTS`), in
        config order."""
        return tuple(name for name, test in self.tests.items() if test.enabled and name in kind)

    def _test_problems(self) -> list[str]:
        problems = []
        for name, test in self.tests.items():
            if not 0.0 < test.alpha < 1.0:
                problems.append(f"tests.{name}.alpha must be between 0 and 1, got {test.alpha!r}")
            if not 0.0 < test.r0 < math.inf:
                problems.append(f"tests.{name}.r0 must be a positive number, got {test.r0!r}")
            elif (name in EVENT_TESTS or name in FEEDBACK_TESTS) and SMALLEST_ALTERNATIVE * test.r0 >= self.max_ratio:
                problems.append(
                    f"tests.{name}.r0 must be below max_ratio / {SMALLEST_ALTERNATIVE:g} = "
                    f"{self.max_ratio / SMALLEST_ALTERNATIVE:.3g} (alternatives run from "
                    f"{SMALLEST_ALTERNATIVE:g} × r0 to max_ratio), got {test.r0!r}"
                )
        if not self.family_alpha < 1.0:
            problems.append(f"the enabled tests' alphas sum to {self.family_alpha:.3g}; must be below 1")
        return problems

    def _shadow_problems(self) -> list[str]:
        problems = []
        for name, test in self.shadow_tests.items():
            if not 0.0 < test.alpha < 1.0:
                problems.append(f"shadow_tests.{name}.alpha must be between 0 and 1, got {test.alpha!r}")
            if not 0.0 < test.r0 < math.inf:
                problems.append(f"shadow_tests.{name}.r0 must be a positive number, got {test.r0!r}")
            elif SMALLEST_ALTERNATIVE * test.r0 >= self.max_ratio:
                problems.append(f"shadow_tests.{name}.r0 must be below max_ratio / {SMALLEST_ALTERNATIVE:g} = "
                                f"{self.max_ratio / SMALLEST_ALTERNATIVE:.3g}, got {test.r0!r}")
            if not 0.0 <= test.margin < math.inf:
                problems.append(f"shadow_tests.{name}.margin must be a fraction >= 0 (0.1: 10% larger), "
                                f"got {test.margin!r}")
        if not self.shadow_family_alpha < 1.0:
            problems.append(f"the enabled shadow tests' alphas sum to {self.shadow_family_alpha:.3g}; must be below 1")
        return problems

    def _setting_problems(self) -> list[str]:
        problems = []
        for name in ("alternatives", "max_events_per_key", "max_samples_per_key", "key_memory"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not 1.0 <= self.warmup_tolerance < math.inf:
            problems.append(f"warmup_tolerance must be a ratio >= 1, got {self.warmup_tolerance!r}")
        if not 0.0 <= self.warmup_seconds < math.inf:
            problems.append(
                f"warmup_seconds must be a finite number of seconds >= 0, got {self.warmup_seconds!r}"
            )
        if not 0.0 < self.feedback_settle < math.inf:
            problems.append(
                f"feedback_settle must be a positive number of seconds, got {self.feedback_settle!r}"
            )
        if self.burn_in < 100:
            problems.append(
                f"burn_in must be at least 100 (the normal approximation needs it), got {self.burn_in!r}"
            )
        return problems
