"""The rollout section: stages, operator rules and the sequential judge's settings. Each validates
by building the core value it stands for, so a bad plan is a config error, not a start-up crash."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from canaryproxy.config.fields import Duration, Strict
from canaryproxy.core.judge import DEFAULT_FEEDBACK_SETTLE, DEFAULT_TESTS, JudgeConfig, default_tests
from canaryproxy.core.judge.config import DEFAULT_SHADOW_TESTS, PAIRED_AMOUNT_TESTS, PairedTestConfig
from canaryproxy.core.judge import TestConfig as JudgeTestConfig_
from canaryproxy.core.metrics import METRICS, Unit
from canaryproxy.core.rules import Comparison, Rule
from canaryproxy.core.splitter import check_weight
from canaryproxy.core.stages import Plan, Stage
from canaryproxy.core.units import parse_duration


class RuleConfig(Strict):
    """One operator rule. Exactly one comparison: above, below, above_stable or below_stable."""

    name: str = Field(min_length=1)
    metric: str
    above: float | str | None = None
    below: float | str | None = None
    above_stable: float | None = None
    below_stable: float | None = None
    window: Duration = Field(gt=0)
    for_: Duration = Field(default=0.0, alias="for", ge=0)
    min_samples: int = Field(default=20, ge=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_comparison(self) -> RuleConfig:
        given = [k for k in ("above", "below", "above_stable", "below_stable") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"rule {self.name!r} needs exactly one of above, below, above_stable, below_stable"
                + (f" (got {', '.join(given)})" if given else "")
            )
        self.to_rule()  # unknown metric, bad threshold: reported here, at load time
        return self

    def to_rule(self) -> Rule:
        comparison = next(k for k in ("above", "below", "above_stable", "below_stable")
                          if getattr(self, k) is not None)
        raw = getattr(self, comparison)
        if self.metric in METRICS and METRICS[self.metric].unit is Unit.SECONDS:
            threshold = parse_duration(raw)  # `above: 10s` for latency metrics
        elif isinstance(raw, str):
            try:
                threshold = float(raw)
            except ValueError:
                raise ValueError(f"rule {self.name!r}: {comparison} must be a number, got {raw!r}") from None
        else:
            threshold = float(raw)
        return Rule(self.name, self.metric, Comparison(comparison), threshold, self.window, self.for_,
                    self.min_samples)


class StageConfig(Strict):
    """A live stage, `{weight: 5, hold: 10m}`, or a shadow stage, `{shadow: 20, hold: 10m}`: 20% of
    the requests also sent to the canary, whose answers no user sees (core/stages)."""

    weight: float | None = Field(default=None, gt=0, le=100)
    shadow: float | None = Field(default=None, gt=0, le=100)
    hold: Duration = Field(ge=0)

    # The same smallest step as every other weight: a stage at 0.001% would put 0 buckets in force.
    _one_bucket_resolution = field_validator("weight", "shadow")(check_weight)

    @model_validator(mode="after")
    def _live_or_shadow(self) -> StageConfig:
        if self.weight is not None and self.shadow is not None:
            raise ValueError(
                f"a stage is live ({{weight: N}}) or a shadow stage ({{shadow: N}}), not both: got weight "
                f"{self.weight:g} and shadow {self.shadow:g}; a shadow stage serves no user with the canary"
            )
        if self.weight is None and self.shadow is None:
            raise ValueError("a stage needs a weight (a live stage) or a shadow share (a shadow stage)")
        return self

    def to_stage(self, extra_hold: float = 0.0) -> Stage:
        if self.shadow is not None:
            return Stage(0.0, self.hold + extra_hold, shadow=self.shadow)
        assert self.weight is not None  # _live_or_shadow
        return Stage(self.weight, self.hold + extra_hold)


class JudgeTestConfig(Strict):
    enabled: bool = True
    alpha: float | None = Field(default=None, gt=0, lt=1)
    r0: float = Field(default=1.0, ge=1.0)


class ShadowTestConfig(Strict):
    """One paired test of the shadow stages; `margin` only for the amount tests."""

    enabled: bool = True
    alpha: float | None = Field(default=None, gt=0, lt=1)
    r0: float = Field(default=1.0, ge=1.0)
    margin: float | None = Field(default=None, ge=0)


class JudgeSettings(Strict):
    """The sequential judge (see docs): on by default alongside the operator's rules."""

    enabled: bool = True
    alpha: float = Field(default=0.01, gt=0, lt=0.5)  # total false-rollback budget, split over tests
    tests: dict[str, JudgeTestConfig] = Field(default_factory=dict)
    max_events_per_key: int = Field(default=3, ge=1)
    max_samples_per_key: int = Field(default=1, ge=1)  # amount tests: samples per sticky key
    warmup: Duration = Field(default=20.0, ge=0)  # latency tests skip this long after a weight rise
    # ...and the other event tests accept a canary up to this many times worse meanwhile (x r0).
    warmup_tolerance: float = Field(default=2.0, ge=1.0, allow_inf_nan=False)
    burn_in: int = Field(default=100, ge=100)  # samples per version before an amount test may fire
    # The paired tests of the shadow stages: a family of their own (they never judge a live
    # stage), whose budget follows `alpha` unless set apart.
    shadow_alpha: float | None = Field(default=None, gt=0, lt=0.5)
    shadow_tests: dict[str, ShadowTestConfig] = Field(default_factory=dict)

    @field_validator("tests")
    @classmethod
    def _known_tests(cls, tests: dict[str, JudgeTestConfig]) -> dict[str, JudgeTestConfig]:
        unknown = sorted(set(tests) - set(DEFAULT_TESTS))
        if unknown:
            raise ValueError(f"unknown judge test {unknown[0]!r}; known tests: {', '.join(DEFAULT_TESTS)}")
        return tests

    @field_validator("shadow_tests")
    @classmethod
    def _known_shadow_tests(cls, tests: dict[str, ShadowTestConfig]) -> dict[str, ShadowTestConfig]:
        unknown = sorted(set(tests) - set(DEFAULT_SHADOW_TESTS))
        if unknown:
            raise ValueError(f"unknown shadow test {unknown[0]!r}; known: {', '.join(DEFAULT_SHADOW_TESTS)}")
        for name, test in tests.items():
            if test.margin is not None and name not in PAIRED_AMOUNT_TESTS:
                raise ValueError(f"shadow test {name!r} counts events: margin applies only to the amount "
                                 f"tests ({', '.join(PAIRED_AMOUNT_TESTS)})")
        return tests

    @model_validator(mode="after")
    def _judge_accepts_it(self) -> JudgeSettings:
        # The judge checks what only it knows (r0 against its alternatives, the α sum): ask it now,
        # so a bad value is a config error naming the field, not a traceback at start-up.
        self.to_judge_config()
        return self

    def to_judge_config(self, feedback: bool = False, feedback_settle: float = DEFAULT_FEEDBACK_SETTLE
                        ) -> JudgeConfig:
        """The judge's config; with `feedback` (the server passes `feedback.enabled` and
        `rollout.feedback_settle`) the feedback tests run and take their share of the budget."""
        # The default split is for a 1% budget; scale it to the configured total.
        scale = self.alpha / 0.01
        tests = {}
        for name, default in default_tests(feedback).items():
            given = self.tests.get(name, JudgeTestConfig())
            tests[name] = JudgeTestConfig_(
                alpha=given.alpha if given.alpha is not None else default.alpha * scale,
                enabled=given.enabled,
                r0=given.r0,
            )
        return JudgeConfig(
            tests=tests,
            max_events_per_key=self.max_events_per_key,
            max_samples_per_key=self.max_samples_per_key,
            warmup_seconds=self.warmup,
            warmup_tolerance=self.warmup_tolerance,
            burn_in=self.burn_in,
            feedback=feedback,
            feedback_settle=feedback_settle,
            shadow_tests=self._shadow_test_configs(),
        )

    def _shadow_test_configs(self) -> dict[str, PairedTestConfig]:
        # The default split is for a 1% budget, like the live tests'.
        scale = (self.shadow_alpha if self.shadow_alpha is not None else self.alpha) / 0.01
        tests = {}
        for name, default in DEFAULT_SHADOW_TESTS.items():
            given = self.shadow_tests.get(name, ShadowTestConfig())
            tests[name] = PairedTestConfig(
                alpha=given.alpha if given.alpha is not None else default.alpha * scale,
                enabled=given.enabled, r0=given.r0,
                margin=given.margin if given.margin is not None else default.margin,
            )
        return tests


class RolloutConfig(Strict):
    start: Literal["auto", "manual"] = "auto"
    stages: tuple[StageConfig, ...] = Field(min_length=1)
    min_requests: int = Field(default=100, ge=1)
    max_hold: Duration = Field(default=3600.0, gt=0)
    evaluate_every: Duration = Field(default=10.0, gt=0)
    rules: tuple[RuleConfig, ...] = ()
    on_stable_breach: Literal["pause", "rollback", "ignore"] = "pause"
    early_promotion: bool = False
    judge: JudgeSettings = JudgeSettings()
    # How long after a response its feedback is expected to have arrived: rules read late metrics
    # (feedback) over windows that end this long before now, and the judge's feedback tests wait
    # this long after each weight change before they may pass.
    feedback_settle: Duration = Field(default=DEFAULT_FEEDBACK_SETTLE, gt=0)

    @model_validator(mode="after")
    def _plan_is_consistent(self) -> RolloutConfig:
        self.to_plan()
        if any(s.shadow is not None for s in self.stages) and not self.judge.enabled:
            raise ValueError(
                "shadow stages need the judge (rollout.judge.enabled: true): only its paired tests can "
                "show the canary no worse in a shadow stage"
            )
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def to_plan(self, feedback: bool = False) -> Plan:
        """With `feedback` on, each stage lasts `feedback_settle` beyond its hold, so the feedback on
        the requests of its hold has had time to arrive before it is judged healthy."""
        extra = self.feedback_settle if feedback else 0.0
        return Plan(
            tuple(s.to_stage(extra) for s in self.stages),
            min_requests=self.min_requests,
            max_hold=self.max_hold,
            on_stable_breach=self.on_stable_breach,
            early_promotion=self.early_promotion,
        )

    def longest_window(self) -> float:
        """The longest span a rule reads back from now: a late metric's window ends
        `feedback_settle` before now, so it reaches that much further back."""
        return max((r.window + (self.feedback_settle if METRICS[r.metric].late else 0.0) for r in self.rules),
                   default=0.0)


