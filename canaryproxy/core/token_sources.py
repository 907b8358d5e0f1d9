"""Like with like: which token metric a rule compares between the versions.

Token counts have two sources: the usage a model server reports, and the proxy's estimate where a
response had none (`Outcome.usage_missing`). A rule that compares the canary with stable on
reported counts on one side and estimates on the other measures the two ways of counting, not
the two versions: an estimate a quarter low rolls back nothing that is worse and hides a canary
that is, and prompt tokens exist only where usage is. That happens whenever a release changes the
serving stack (vLLM to llama.cpp) or a server upgrade drops the usage chunk.

So a relative rule (`above_stable`, `below_stable`) on a token metric first looks at both
windows' share of estimated counts (`tokens_estimated_rate`). When both are entirely reported it
compares the metric as written. Otherwise the proxy sees both streams and counts both the same
way (`Outcome.estimated_tokens`, on every inspected response whatever usage says), so the means
are compared on that count on both sides (`COUNTERPARTS`). Prompt tokens, which the estimator
does not see, and quantiles, for which the windows keep no histogram of the estimate, have no
counterpart: the rule is then inconclusive, with that reason. Constant-threshold rules compare
one version with a number and are left as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from canaryproxy.core.metrics import MetricValue
from canaryproxy.core.types import Role

SHARE_METRIC = "tokens_estimated_rate"
# What a token metric is compared as when the versions' sources differ; None: nothing comparable.
COUNTERPARTS: dict[str, str | None] = {
    "tokens_per_request": "estimated_tokens_per_request",
    "output_tokens_per_request": "estimated_tokens_per_request",
    "prompt_tokens_per_request": None,
    "output_tokens_p95": None,
}


class _Source(Protocol):
    def metric(self, role: Role, name: str, window: float, t: float, same_weight: bool = False) -> MetricValue: ...


@dataclass(frozen=True, slots=True)
class TokenComparison:
    """The metric to compare on both sides, or None (inconclusive), and why."""

    metric: str | None
    canary_share: float | None  # share of the canary's token counts that are estimates
    stable_share: float | None

    @property
    def substituted(self) -> bool:
        return self.canary_share is not None

    def sources_text(self) -> str:
        return (f"token counts estimated on canary {_percent(self.canary_share)}, "
                f"stable {_percent(self.stable_share)}")


def compared_metric(metric: str, source: _Source, window: float, t: float) -> TokenComparison:
    """What a relative rule on `metric` compares: the metric itself unless the versions' token
    sources differ (module docstring)."""
    if metric not in COUNTERPARTS:
        return TokenComparison(metric, None, None)
    canary = source.metric(Role.CANARY, SHARE_METRIC, window, t, same_weight=True).value
    stable = source.metric(Role.STABLE, SHARE_METRIC, window, t, same_weight=True).value
    if not canary and not stable:  # all reported, or no counts yet (the rule's own check says so)
        return TokenComparison(metric, None, None)
    return TokenComparison(COUNTERPARTS[metric], canary or 0.0, stable or 0.0)


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"
