"""The evidence of an event test: the conditional-label mixture e-process over closed blocks, and
its confidence sequence for the rate ratio. See decision-engine.md, section 2.

Each event is labelled Z = 1 when the canary served it. If the canary's event rate per request is
at most r₀ times stable's and the canary serves a share q of a block's requests, P(Z = 1) ≤ θ₀ =
q·r₀ / (q·r₀ + 1 − q) whatever the traffic level does, so bursts and outages that hit both
versions cancel out. The intake (intake.py) cuts the requests into blocks and counts q per block;
this module folds the closed blocks.

* **Blocks.** Under the null every request of a block is equally likely to carry an event, so
  given the block's requests and its number of events the canary's count is hypergeometric, and
  the binomial likelihood ratio at the block's own share q is a valid e-value for it (sampling
  without replacement is less spread than with: Hoeffding, 1963). Nothing is estimated. A block
  in which only one version served says nothing and is dropped. Only a canary event can raise the
  e-value (a stable event lowers every likelihood ratio), so the rejection check runs on blocks
  with canary events only. Folding is a sum per alternative, so blocks from many processes'
  requests compose: one intake over all of them, one evidence.
* **The mixture.** J alternatives (`alternatives`, 16) log-spaced from 1.4·r₀ to `max_ratio`
  (40), with prior weight ∝ 1/r: the mixture's cost is log(1/π) of the weight near the true ratio,
  paid in the currency of evidence, which comes slowly for small ratios and fast for large ones.
  Ratios below 1.4× are not worth prior mass: at a few percent of the traffic they need more
  requests than a rollout has.
* **Warm-up blocks** are judged against a null widened to r₀ × `warmup_tolerance`: a cold canary
  failing somewhat more often adds no evidence, one failing far more still does.
* **Confidence sequence.** `ratio_upper_bound` inverts the test: for each ratio g on a grid (1/4
  to 16, 8 steps per doubling) an e-process against "ratio ≥ g", with alternatives below g, is
  evaluated when asked; a g whose e-value reaches 1/α stays excluded until reset. The upper bound
  is the grid point just above the largest g never excluded, so the true ratio is below it with
  probability at least 1 − α at every time at once.

The rate ratio shown is the conditional maximum-likelihood estimate from the labels (the r whose
θ_q(r) fits the canary share of events in the blocks of each share q), which, like the test, does
not depend on the traffic level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from canaryproxy.core.judge import state as saved
from canaryproxy.core.judge.config import SMALLEST_ALTERNATIVE, JudgeConfig, TestConfig
from canaryproxy.core.judge.blocks import Block, EventSeen
from canaryproxy.core.judge.numerics import (
    CANARY,
    STABLE,
    canary_share,
    e_value,
    format_e,
    geometric_range,
    log_likelihood_ratios,
    log_mean_exp,
    log_mixture,
    mixture_log_weights,
    ratio_estimate,
)
from canaryproxy.core.types import Status, Verdict

CS_GRID = tuple(2.0 ** (k / 8) for k in range(-16, 33))  # 1/4 .. 16, 8 steps per doubling
Steps = tuple[tuple[float, ...], tuple[float, ...]]  # log L_j's steps for a stable, a canary event


class EventEvidence:
    """The e-process of one event test, folded from closed blocks, and its confidence sequence."""

    __slots__ = (
        "name", "alpha", "r0", "log_threshold", "_ratios", "_log_weights", "_cold_null", "_cs_shrinks",
        "_log_l", "_steps", "counts", "rejection", "_cs_index",
    )  # fmt: skip

    def __init__(self, name: str, test: TestConfig, config: JudgeConfig) -> None:
        self.name = name
        self.alpha = test.alpha
        self.r0 = test.r0
        self.log_threshold = math.log(1.0 / test.alpha)
        self._ratios = geometric_range(SMALLEST_ALTERNATIVE * test.r0, config.max_ratio, config.alternatives)
        self._cold_null = test.r0 * config.warmup_tolerance  # the null ratio of a warm-up's blocks
        self._log_weights = mixture_log_weights(self._ratios)
        self._cs_shrinks = geometric_range(1.1, config.max_ratio, config.alternatives)
        self._log_l = [0.0] * config.alternatives
        # log L_j's steps for one stable and one canary event at each (canary share, warm-up): a
        # block's share is k / n for its n <= 100 requests, so there are few of them.
        self._steps: dict[tuple[float, bool], Steps] = {}
        # Events of the folded blocks per canary share, [stable, canary]: sufficient for the
        # e-value, the ratio estimate and the confidence sequence.
        self.counts: dict[float, list[int]] = {}
        self.rejection: Verdict | None = None
        self._cs_index = len(CS_GRID)  # every grid ratio from here up is excluded

    def fold(self, block: Block) -> float | None:
        """Take a closed block's events into the e-value, labelled against the block's own share.

        Returns the log e-value when this block makes the test cross 1/α and no rejection is
        recorded yet (the caller records it with `reject`); None otherwise.
        """
        stable_requests, canary_requests = block.stable_requests, block.canary_requests
        stable_events, canary_events = block.stable_events, block.canary_events
        if not (stable_events or canary_events) or not (stable_requests and canary_requests):
            return None
        share = canary_requests / (stable_requests + canary_requests)
        return self.fold_events(share, stable_events, canary_events, block.cold)

    def fold_events(self, share: float, stable_events: int, canary_events: int, cold: bool = False
                    ) -> float | None:
        """Take events labelled against the canary's share `share` (0 < share < 1) of the requests
        they came from: a block's, or the share at routing of a late record (feedback.py).
        Returns what `fold` does."""
        pair = self.counts.get(share)
        if pair is None:
            pair = self.counts[share] = [0, 0]
        pair[STABLE] += stable_events
        pair[CANARY] += canary_events
        stable_step, canary_step = self._steps_at(share, cold)
        log_l = self._log_l = [
            value + stable_events * stable + canary_events * canary
            for value, stable, canary in zip(self._log_l, stable_step, canary_step, strict=True)
        ]
        # Only canary events can raise the e-value; mixture ≤ max spares the log-sum-exp mostly.
        if canary_events and self.rejection is None and max(log_l) >= self.log_threshold:
            log_e = log_mixture(log_l, self._log_weights)
            if log_e >= self.log_threshold:
                return log_e
        return None

    def reject(self, verdict: Verdict) -> None:
        """Record the FAIL (sticky until reset): the evidence at the moment it crossed."""
        if self.rejection is None:
            self.rejection = verdict

    def _steps_at(self, share: float, cold: bool) -> Steps:
        """Per alternative r_j, log L_j's step for one stable and one canary event in a block.

        In a warm-up block the null is widened to r0 × warmup_tolerance. Alternatives at or below
        the widened null step by 0; the others by their likelihood ratio against it. Under the
        real null (ratio ≤ r0) either step has expectation ≤ 1, so the product stays an
        e-process: for θ_j > θ_null the expected ratio grows with the true θ and is 1 at θ_null.
        """
        cached = self._steps.get((share, cold))
        if cached is None:
            null = self._cold_null if cold else self.r0  # warmup_tolerance >= 1: never below r0
            theta0 = canary_share(share, null)
            thetas = [canary_share(share, ratio) if ratio > null else theta0 for ratio in self._ratios]
            stable = tuple(math.log1p(-theta) - math.log1p(-theta0) for theta in thetas)
            canary = tuple(math.log(theta / theta0) for theta in thetas)
            cached = self._steps[share, cold] = (stable, canary)
        return cached

    def log_e(self) -> float:
        return log_mixture(self._log_l, self._log_weights)

    def ratio(self) -> float | None:
        return ratio_estimate(self.counts)

    def ratio_upper_bound(self) -> float | None:
        """r such that the true ratio is below r (anytime, probability 1 − α); None: no bound yet."""
        while self._cs_index > 0 and self._excludes(CS_GRID[self._cs_index - 1]):
            self._cs_index -= 1
        return CS_GRID[self._cs_index] if self._cs_index < len(CS_GRID) else None

    def _excludes(self, ratio: float) -> bool:
        """Whether the e-process against "true ratio ≥ `ratio`" has reached 1/α."""
        alternatives = tuple(ratio / shrink for shrink in self._cs_shrinks)
        log_l = log_likelihood_ratios(self.counts, ratio, alternatives)
        return log_mean_exp(log_l) >= self.log_threshold

    # --- saving -------------------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        """The evidence as plain data; the counts as [share, stable, canary] in folding order."""
        return {
            "log_l": list(self._log_l),
            "counts": [[share, stable, canary] for share, (stable, canary) in self.counts.items()],
            "rejection": saved.verdict_state(self.rejection),
            "cs_index": self._cs_index,
        }

    def restoring(self, state: object, where: str) -> Callable[[], None]:
        """Check `state` against this test; return what puts it in force (nothing changes before)."""
        fields = saved.mapping(state, where, ("log_l", "counts", "rejection", "cs_index"))
        log_l = [
            saved.number(value, f"{where}.log_l[{j}]")
            for j, value in enumerate(saved.sequence(fields["log_l"], f"{where}.log_l", len(self._log_l)))
        ]
        counts = saved.side_counts(fields["counts"], f"{where}.counts", 1.0, "canary share")
        cs_index = saved.count(fields["cs_index"], f"{where}.cs_index")
        if cs_index > len(CS_GRID):
            raise saved.fail(f"{where}.cs_index", f"expected at most {len(CS_GRID)}, got {cs_index}")
        rejection = saved.verdict_from(fields["rejection"], f"{where}.rejection")

        def commit() -> None:
            self._log_l, self.counts, self.rejection, self._cs_index = log_l, counts, rejection, cs_index

        return commit


# --- what it says -----------------------------------------------------------------------------


def event_verdict(
    evidence: EventEvidence, label: str, seen: EventSeen, observed: Mapping[str, int], log_e: float
) -> Verdict:
    """The verdict of an event test at `log_e`: the evidence, and what the intake counted."""
    status = Status.FAIL if log_e >= evidence.log_threshold else Status.PASS
    ratio = evidence.ratio()
    details = event_details(evidence, seen, observed, log_e, ratio)
    canary_events, stable_events = seen.events[CANARY], seen.events[STABLE]
    comparison = _rate_comparison(ratio, canary_events, stable_events)
    qualifiers = "" if evidence.r0 == 1.0 else f", tolerance {evidence.r0:g}×"
    if status is Status.FAIL:
        relation = "≥"
    else:
        relation = "<"
        if canary_events + stable_events:
            qualifiers += ", no evidence it is worse"
    reason = (
        f"judge: {label}{comparison}{qualifiers} "
        f"(e-value {format_e(log_e)} {relation} {format_e(evidence.log_threshold)}; "
        f"canary {canary_events:,} events / {seen.requests[CANARY]:,} req, "
        f"stable {stable_events:,} / {seen.requests[STABLE]:,})"
    )
    return Verdict(source=f"judge:{evidence.name}", status=status, reason=reason, details=details)


def event_details(
    evidence: EventEvidence, seen: EventSeen, observed: Mapping[str, int], log_e: float,
    ratio: float | None,
) -> dict[str, object]:
    return {
        "statistic": "conditional-label mixture e-value",
        "log_e_value": log_e,
        "e_value": e_value(log_e),
        "threshold": 1.0 / evidence.alpha,
        "alpha": evidence.alpha,
        "r0": evidence.r0,
        "ratio": ratio,
        "canary": {"events": seen.events[CANARY], "requests": seen.requests[CANARY]},
        "stable": {"events": seen.events[STABLE], "requests": seen.requests[STABLE]},
        "dropped_by_key_cap": seen.dropped_by_key_cap,
        "observed": dict(observed),
    }


def _rate_comparison(ratio: float | None, canary_events: int, stable_events: int) -> str:
    if canary_events + stable_events == 0:
        return ": none yet"
    if ratio is None:
        return " on canary only"
    return f" canary {ratio:.1f}× stable"

