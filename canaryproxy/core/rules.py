"""Operator rules: "error_rate above 5% over 1m, for 5m", evaluated like Prometheus alerting rules.

A rule is checked at every evaluation over its own window. When its condition holds, a *streak*
starts (PENDING); the rule fires (FAIL) at the first evaluation where the condition still holds and
the streak is at least `for_` old. An evaluation that has enough samples and does not meet the
condition ends the streak (PASS).

An evaluation with fewer than `min_samples` samples is INCONCLUSIVE. It neither fires nor counts
as healthy: the streak is left exactly as it was, so time keeps counting but the rule cannot fire
at that evaluation. This is CloudWatch's "treat missing data as ignore", chosen because a canary
must not escape a sustained breach by thinning its traffic: a breach, a quiet spell, and the same
breach again is still one streak.

Baseline-relative rules (`above_stable`, `below_stable`) compare the canary with `threshold ×`
stable's value over the same window, so both sides see the same traffic at the same time — and
only over the part of it since the weight last changed. Across a weight rise the canary's samples
crowd the end of the window while stable's spread over all of it, so anything that moves both
versions at once (a slow second of the host, of the network, of a shared dependency) weighs more on
the canary's side and reads as a canary regression: one 0.8 s stall of the demo's event loop right
after 25% -> 50% rolled a healthy canary back on latency_p95. Kayenta avoids this by giving its
baseline the canary's share; comparing within one weight does it without a third deployment. They need
`min_samples` on both roles and a stable value. When stable's value is 0 the limit is 0:
`above_stable` then breaches on any positive canary value (a canary that does something stable
never does is worse by any ratio) and `below_stable` cannot breach a non-negative metric. Users
who want slack around zero should write a constant-threshold rule. A relative rule on a token
metric compares like with like: reported counts with reported counts, or the proxy's own count on
both sides when either version's counts are estimates (core/token_sources.py).

Rules on late metrics (`MetricSpec.late`: feedback, which arrives after the response and is filed
in the second its request was routed) read a window that ends `late_by` seconds before now (the
source's; `rollout.feedback_settle`, 2m by default: how long after a response its feedback is
expected to have arrived). Over the last minutes the feedback is still on its way, so a window
ending now would read a canary as healthy before its users had time to say otherwise, and a
rise in weight as a fall in the rate. The source holds the clock and the shift, so the rules stay
pure; the verdict says which span it read ("5m ending 2m0s ago"). A relative rule on a late metric
reads the part of that shifted window since the weight changed: nothing, so INCONCLUSIVE, until
the first responses at the new weight are `late_by` old.

Constant-threshold rules are checked on stable as well. When the canary breaches and stable, with
enough samples, breaches the same threshold, the verdict says `also_on_stable`: the stage machine
treats that as an environment problem (see `canaryproxy.core.stages`), not the canary's fault.

Streaks are *not* reset when a stage changes. The windows slide across stage boundaries, so a
reset would only delay a firing rule by up to `for_` per stage without making its data any fresher
(Argo resets analysis per step because its queries are per step; ours are not). The automatic side
only advances when every verdict is PASS, which has already ended every streak; a streak carried
over by an operator's `promote` is still about the same canary, so it should keep counting. The
cost: a breach seen at 5% keeps its age at 25%. `reset()` is for the start of a new rollout, when
the canary is a different version.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from canaryproxy.core.metrics import METRICS, MetricValue, Unit
from canaryproxy.core.token_sources import TokenComparison, compared_metric
from canaryproxy.core.types import Role, Status, Verdict
from canaryproxy.core.units import format_duration


class Comparison(enum.StrEnum):
    ABOVE = "above"
    BELOW = "below"
    ABOVE_STABLE = "above_stable"  # threshold is a ratio to stable's value
    BELOW_STABLE = "below_stable"

    @property
    def relative(self) -> bool:
        return self in (Comparison.ABOVE_STABLE, Comparison.BELOW_STABLE)

    @property
    def upward(self) -> bool:
        return self in (Comparison.ABOVE, Comparison.ABOVE_STABLE)


class MetricSource(Protocol):
    """Where rules read metric values: the per-role windows, or a table in tests.

    With `same_weight`, the value is over the part of the window since the canary's weight last
    changed (the whole window when that is older, or unknown): what relative rules compare. A late
    metric (`MetricSpec.late`) is read over the window that ends `late_by` seconds before `t`.
    """

    late_by: float

    def metric(self, role: Role, name: str, window: float, t: float, same_weight: bool = False) -> MetricValue: ...


@dataclass(frozen=True, slots=True)
class Rule:
    """One operator rule. Times are seconds; `threshold` of a *_stable rule is a ratio."""

    name: str
    metric: str
    comparison: Comparison
    threshold: float
    window: float
    for_: float
    min_samples: int = 20  # on the canary; *_stable rules need them on stable too

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a rule needs a non-empty name, got {self.name!r}")
        where = f"rule {self.name!r}"
        if self.metric not in METRICS:
            raise ValueError(
                f"{where}: unknown metric {self.metric!r}; known metrics: {', '.join(sorted(METRICS))}"
            )
        try:
            # Accept the config's plain string: the frozen field is then always a Comparison.
            object.__setattr__(self, "comparison", Comparison(self.comparison))
        except ValueError:
            known = ", ".join(c.value for c in Comparison)
            raise ValueError(
                f"{where}: unknown comparison {self.comparison!r}; expected one of {known}"
            ) from None
        _require_number(where, "threshold", self.threshold)
        if self.comparison.relative and self.threshold <= 0:
            raise ValueError(
                f"{where}: threshold of {self.comparison} is a ratio to stable's value and must be > 0, "
                f"got {self.threshold}"
            )
        _require_number(where, "window", self.window)
        if self.window <= 0:
            raise ValueError(f"{where}: window must be > 0 seconds, got {self.window}")
        _require_number(where, "for", self.for_)
        if self.for_ < 0:
            raise ValueError(f"{where}: for must be >= 0 seconds, got {self.for_}")
        if not _is_count(self.min_samples) or self.min_samples < 1:
            raise ValueError(f"{where}: min_samples must be an integer >= 1, got {self.min_samples!r}")

    @property
    def unit(self) -> Unit:
        return METRICS[self.metric].unit

    def limit(self, stable_value: float | None) -> float | None:
        """The value the canary is compared with; None when a relative rule has no stable value."""
        if not self.comparison.relative:
            return self.threshold
        return None if stable_value is None else self.threshold * stable_value

    def breached_by(self, value: float, limit: float) -> bool:
        return value > limit if self.comparison.upward else value < limit


class RuleEngine:
    """Evaluates a fixed list of rules, keeping each rule's breach streak between evaluations."""

    __slots__ = ("_rules", "_streak_starts")

    def __init__(self, rules: Sequence[Rule]) -> None:
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        self._rules = tuple(rules)
        self._streak_starts: list[float | None] = [None] * len(self._rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def reset(self) -> None:
        """Forget every streak: for a new rollout, whose canary is a different version."""
        self._streak_starts = [None] * len(self._rules)

    def evaluate(self, source: MetricSource, t: float, stable_in_service: bool = True) -> list[Verdict]:
        """One verdict per rule, in rule order, at monotonic time `t`.

        With `stable_in_service` False (the canary takes all traffic), stable's window holds only
        stale requests or none: comparisons with stable pass with that reason instead of judging
        the canary against the past or blocking the last stage for want of a baseline.
        """
        return [self._evaluate(index, rule, source, t, stable_in_service)
                for index, rule in enumerate(self._rules)]

    def _evaluate(self, index: int, rule: Rule, source: MetricSource, t: float,
                  stable_in_service: bool) -> Verdict:
        relative = rule.comparison.relative
        late_by = source.late_by if METRICS[rule.metric].late else 0.0
        compared = TokenComparison(rule.metric, None, None)
        if relative:
            compared = compared_metric(rule.metric, source, rule.window, t)
        metric = compared.metric or rule.metric
        canary = source.metric(Role.CANARY, metric, rule.window, t, same_weight=relative)
        stable = source.metric(Role.STABLE, metric, rule.window, t, same_weight=relative)
        if rule.comparison.relative and not stable_in_service:
            self._streak_starts[index] = None
            reason = f"{rule.metric}: no comparison with stable while the canary takes all traffic"
            return _verdict(rule, Status.PASS, reason, canary, stable, None, t, compared=compared, late_by=late_by)
        if compared.metric is None:  # the sources differ and nothing comparable counts both alike
            reason = (f"insufficient data: {rule.metric} is compared on reported usage only, and "
                      f"{compared.sources_text()}")
            return _verdict(rule, Status.INCONCLUSIVE, reason, canary, stable, self._streak_starts[index], t,
                            compared=compared, late_by=late_by)
        shortfall = _shortfall(rule, canary, "", metric, late_by)
        if shortfall is None and rule.comparison.relative:
            shortfall = _shortfall(rule, stable, " on stable", metric, late_by)
        if shortfall is not None:
            streak_start = self._streak_starts[index]  # left as it was: see the module docstring
            return _verdict(rule, Status.INCONCLUSIVE, _noted(shortfall, compared), canary, stable,
                            streak_start, t, compared=compared, late_by=late_by)

        assert canary.value is not None  # _shortfall returned None
        limit = rule.limit(stable.value)
        assert limit is not None  # a relative rule got past _shortfall only with a stable value
        if not rule.breached_by(canary.value, limit):
            self._streak_starts[index] = None
            reason = _late(_noted(_pass_reason(rule, canary, stable, limit), compared), rule, late_by)
            return _verdict(rule, Status.PASS, reason, canary, stable, None, t, compared=compared, late_by=late_by)

        streak_start = self._streak_starts[index]
        if streak_start is None:
            streak_start = self._streak_starts[index] = t
        held = t - streak_start
        status = Status.FAIL if held >= rule.for_ else Status.PENDING
        reason = _late(_noted(_breach_reason(rule, canary, stable, limit, held, status), compared), rule, late_by)
        also_on_stable = _also_on_stable(rule, stable, limit)
        return _verdict(rule, status, reason, canary, stable, streak_start, t, also_on_stable, compared, late_by)


def _noted(reason: str, compared: TokenComparison) -> str:
    """`reason`, saying so when the comparison is on the proxy's own token count."""
    if not compared.substituted:
        return reason
    return f"{reason}; compared as {compared.metric} on both versions ({compared.sources_text()})"


def _late(reason: str, rule: Rule, late_by: float) -> str:
    """`reason`, saying which span a late metric was read over."""
    if not late_by:
        return reason
    return f"{reason}; over {format_duration(rule.window)} ending {format_duration(late_by)} ago"


def _require_number(where: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {field} must be a finite number, got {value!r}")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shortfall(rule: Rule, sample: MetricValue, side: str, metric: str, late_by: float) -> str | None:
    """Why `sample` (of `metric`) is too thin to judge, or None when it is enough."""
    window = format_duration(rule.window)
    if late_by:
        window += f" ending {format_duration(late_by)} ago"  # the feedback on the rest is still due
    if rule.comparison.relative:
        window += " at this weight"  # only the part of the window since the weight changed counts
    noun = METRICS[metric].samples
    if sample.samples < rule.min_samples:
        return f"insufficient data{side}: {sample.samples} of {rule.min_samples} {noun} in {window}"
    if sample.value is None:
        return f"insufficient data{side}: no {metric} value from {sample.samples} {noun} in {window}"
    return None


def _also_on_stable(rule: Rule, stable: MetricValue, limit: float) -> bool:
    """Whether stable, with enough samples, breaches the same constant threshold."""
    if rule.comparison.relative or stable.samples < rule.min_samples or stable.value is None:
        return False
    return rule.breached_by(stable.value, limit)


def _limit_text(rule: Rule, stable: MetricValue, limit: float) -> str:
    if not rule.comparison.relative:
        return format_value(limit, rule.unit)
    assert stable.value is not None
    return (
        f"{_number(rule.threshold)}x stable {format_value(stable.value, rule.unit)}"
        f" = {format_value(limit, rule.unit)}"
    )


def _samples_text(rule: Rule, canary: MetricValue, stable: MetricValue) -> str:
    if rule.comparison.relative:
        return f"canary n={canary.samples}; stable n={stable.samples}"
    stable_value = "no value" if stable.value is None else format_value(stable.value, rule.unit)
    return f"canary n={canary.samples}; stable {stable_value}, n={stable.samples}"


def _pass_reason(rule: Rule, canary: MetricValue, stable: MetricValue, limit: float) -> str:
    assert canary.value is not None
    operator = "<=" if rule.comparison.upward else ">="
    return (
        f"{rule.metric} {format_value(canary.value, rule.unit)} {operator} {_limit_text(rule, stable, limit)}"
        f" ({_samples_text(rule, canary, stable)})"
    )


def _breach_reason(
    rule: Rule, canary: MetricValue, stable: MetricValue, limit: float, held: float, status: Status
) -> str:
    assert canary.value is not None
    operator = ">" if rule.comparison.upward else "<"
    duration = format_duration(held)
    if status is Status.PENDING:
        duration += f" of {format_duration(rule.for_)}"
    return (
        f"{rule.metric} {format_value(canary.value, rule.unit)} {operator} {_limit_text(rule, stable, limit)}"
        f" for {duration} ({_samples_text(rule, canary, stable)})"
    )


def _verdict(
    rule: Rule,
    status: Status,
    reason: str,
    canary: MetricValue,
    stable: MetricValue,
    streak_start: float | None,
    t: float,
    also_on_stable: bool = False,
    compared: TokenComparison | None = None,
    late_by: float = 0.0,
) -> Verdict:
    details: dict[str, Any] = {
        "metric": rule.metric,
        "comparison": rule.comparison.value,
        "threshold": rule.threshold,
        "limit": rule.limit(stable.value),
        "window": rule.window,
        "for": rule.for_,
        "min_samples": rule.min_samples,
        "canary_value": canary.value,
        "canary_samples": canary.samples,
        "stable_value": stable.value,
        "stable_samples": stable.samples,
        "streak_start": streak_start,
        "streak_duration": None if streak_start is None else t - streak_start,
    }
    if METRICS[rule.metric].late:
        details["window_ends_before"] = late_by
    if compared is not None and compared.substituted:
        details["compared_metric"] = compared.metric
        details["estimated_share"] = {"canary": compared.canary_share, "stable": compared.stable_share}
    return Verdict(rule.name, status, reason, also_on_stable, details)


def format_value(value: float, unit: Unit) -> str:
    """A metric value for a sentence: seconds as durations (250ms, 10s), other units as short numbers."""
    if unit is Unit.SECONDS:
        return format_duration(value)
    return _number(value)


def _number(value: float) -> str:
    """Three significant digits for small numbers (0.213, 12.5), whole numbers from 100 up."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"
