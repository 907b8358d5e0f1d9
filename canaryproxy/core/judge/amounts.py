"""The evidence of an amount test: a one-sided normal mixture on x = log(1 + y), stratified by
weight. See decision-engine.md, section 2.

The amounts (intake.py reads them) are in units whose typical values are much larger than 1:
tokens per request, output characters, micro-USD, milliseconds. Then log(1 + y) ≈ log y, a
difference of means of x is a log ratio, and the tolerance r₀ ("a canary mean up to r₀× stable's
is fine") is a shift of Δ by log r₀. The shown ratio is exp(Δ̂): the ratio of the geometric means
of 1 + y.

* **Asymptotically valid only**, so a stratum may not contribute before `burn_in` (at least 100)
  samples of each version.
* **Stratified by weight.** Welford moments per (weight, role), the strata combined with
  inverse-variance weights: s = Σ Δ_k/V_k, v = Σ 1/V_k, the sufficient statistics of a common
  shift across strata. With one weight this is exactly Δ/V and 1/V. Pooling across weights would
  compare a canary sampled mostly late (high weight) with a stable sampled mostly early, and a
  daily drift in prompt length would look like a regression.
* **σ² for the mixture precision ρ** is the pooled variance of the first stratum to finish its
  burn-in, then fixed until reset: ρ must not follow the data it tests; it only tunes power (for
  about 200 canary requests), never validity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from canaryproxy.core.judge import state as saved
from canaryproxy.core.judge.config import AMOUNT_TESTS, JudgeConfig, TestConfig
from canaryproxy.core.judge.numerics import (
    CANARY, STABLE, e_value, format_e, mixture_precision, normal_mixture_log_e,
)  # fmt: skip
from canaryproxy.core.types import Status, Verdict

_LOG_2 = math.log(2.0)


class Moments:
    """Running count, mean and sum of squared deviations (Welford: stable over millions)."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self, n: int = 0, mean: float = 0.0, m2: float = 0.0) -> None:
        self.n = n
        self.mean = mean
        self.m2 = m2

    def add(self, x: float) -> None:
        n = self.n = self.n + 1
        delta = x - self.mean
        self.mean += delta / n
        self.m2 += delta * (x - self.mean)


class Stratum:
    """The samples of both roles routed at one weight."""

    __slots__ = ("roles",)

    def __init__(self, stable: Moments | None = None, canary: Moments | None = None) -> None:
        self.roles = (stable or Moments(), canary or Moments())  # stable, canary

    def information(self, burn_in: int, shift: float) -> tuple[float, float] | None:
        """(s, v) = (Δ/V, 1/V) for Δ = mean_c − mean_s − shift, or None before the burn-in."""
        stable, canary = self.roles
        if stable.n < burn_in or canary.n < burn_in:
            return None
        variance = stable.m2 / ((stable.n - 1) * stable.n) + canary.m2 / ((canary.n - 1) * canary.n)
        if variance <= 0.0:
            return None
        return (canary.mean - stable.mean - shift) / variance, 1.0 / variance

    def pooled_variance(self) -> float:
        stable, canary = self.roles
        return (stable.m2 + canary.m2) / (stable.n + canary.n - 2)


class AmountEvidence:
    """The normal-mixture e-value of one per-request amount, from its samples, by weight."""

    __slots__ = (
        "name", "alpha", "r0", "shift", "log_threshold", "burn_in", "strata", "_stratum", "_stratum_w",
        "_other_s", "_other_v", "sigma2", "rho", "rejection",
    )  # fmt: skip

    def __init__(self, name: str, test: TestConfig, config: JudgeConfig) -> None:
        self.name = name
        self.alpha = test.alpha
        self.r0 = test.r0
        self.shift = math.log(test.r0)
        self.log_threshold = math.log(1.0 / test.alpha)
        self.burn_in = config.burn_in
        self.strata: dict[float, Stratum] = {}  # one per weight (0.01% steps from the splitter)
        self._stratum = Stratum()  # a placeholder: no weight equals -1, so the first sample enters
        self._stratum_w = -1.0
        self._other_s = 0.0  # s and v of the strata other than the current one
        self._other_v = 0.0
        self.sigma2: float | None = None
        self.rho: float | None = None
        self.rejection: Verdict | None = None

    def add(self, side: int, w: float, y: float) -> float | None:
        """Take one sample y >= 0 of `side` routed at weight w.

        Returns the log e-value when this sample makes the test cross 1/α and no rejection is
        recorded yet (the caller records it with `reject`); None otherwise.
        """
        stratum = self._stratum if w == self._stratum_w else self._enter(w)
        stratum.roles[side].add(math.log1p(y))
        if self.rejection is not None:
            return None
        information = stratum.information(self.burn_in, self.shift)
        if information is None:
            return None
        rho = self.rho
        if rho is None:
            self.sigma2 = stratum.pooled_variance()
            rho = self.rho = mixture_precision(self.sigma2, self.alpha)
        s = self._other_s + information[0]
        v = self._other_v + information[1]
        # The e-value is at most 1 for s ≤ 0 and at most 2·exp(s²/2(v+ρ)): skip the exact form
        # (erfc, logs) when even that bound is below the threshold.
        if s <= 0.0 or _LOG_2 + s * s / (2.0 * (v + rho)) < self.log_threshold:
            return None
        log_e = normal_mixture_log_e(s, v, rho)
        return log_e if log_e >= self.log_threshold else None

    def reject(self, verdict: Verdict) -> None:
        """Record the FAIL (sticky until reset): the evidence at the moment it crossed."""
        if self.rejection is None:
            self.rejection = verdict

    def _enter(self, w: float) -> Stratum:
        """Make the stratum of weight w current, summing the others once (they do not change)."""
        stratum = self.strata.get(w)
        if stratum is None:
            stratum = self.strata[w] = Stratum()
        self._other_s = self._other_v = 0.0
        for other_w, other in self.strata.items():
            information = other.information(self.burn_in, self.shift) if other_w != w else None
            if information is not None:
                self._other_s += information[0]
                self._other_v += information[1]
        self._stratum, self._stratum_w = stratum, w
        return stratum

    def statistics(self) -> tuple[float, float] | None:
        """(s, v) over every stratum past its burn-in, or None while none is."""
        informations = [
            information
            for stratum in self.strata.values()
            if (information := stratum.information(self.burn_in, self.shift)) is not None
        ]
        if not informations:
            return None
        return sum(s for s, _ in informations), sum(v for _, v in informations)

    def log_e(self) -> float | None:
        statistics = self.statistics()
        if statistics is None or self.rho is None:
            return None
        return normal_mixture_log_e(*statistics, self.rho)

    def samples(self, side: int) -> int:
        return sum(stratum.roles[side].n for stratum in self.strata.values())

    # --- saving -------------------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        """The strata as [weight, [n, mean, m2] of stable, ... of canary], in the order they began."""
        strata = [
            [w, *([m.n, m.mean, m.m2] for m in stratum.roles)] for w, stratum in self.strata.items()
        ]
        return {
            "strata": strata,
            "current_weight": None if self._stratum_w < 0.0 else self._stratum_w,
            "sigma2": self.sigma2,
            "rho": self.rho,
            "rejection": saved.verdict_state(self.rejection),
        }

    def restoring(self, state: object, where: str) -> Callable[[], None]:
        """Check `state` against this test; return what puts it in force (nothing changes before)."""
        fields = saved.mapping(state, where, ("strata", "current_weight", "sigma2", "rho", "rejection"))
        strata: dict[float, Stratum] = {}
        for i, entry in enumerate(saved.sequence(fields["strata"], f"{where}.strata")):
            w, stable, canary = saved.sequence(entry, f"{where}.strata[{i}]", 3)
            weight = saved.number(w, f"{where}.strata[{i}][0]")
            if not 0.0 < weight < 1.0 or weight in strata:
                raise saved.fail(f"{where}.strata[{i}][0]", f"expected a new weight in (0, 1), got {w!r}")
            strata[weight] = Stratum(*(_moments(m, f"{where}.strata[{i}][{j + 1}]")
                                       for j, m in enumerate((stable, canary))))
        current = saved.optional_number(fields["current_weight"], f"{where}.current_weight")
        if current is not None and current not in strata:
            raise saved.fail(f"{where}.current_weight", f"{current!r} is not the weight of a stratum")
        sigma2 = saved.optional_number(fields["sigma2"], f"{where}.sigma2")
        rho = saved.optional_number(fields["rho"], f"{where}.rho")
        if (sigma2 is None) is not (rho is None) or (rho is not None and rho <= 0.0):
            raise saved.fail(f"{where}.rho", "sigma2 and rho are set together, rho positive")
        rejection = saved.verdict_from(fields["rejection"], f"{where}.rejection")

        def commit() -> None:
            self.strata, self.sigma2, self.rho, self.rejection = strata, sigma2, rho, rejection
            self._stratum, self._stratum_w = Stratum(), -1.0
            if current is not None:
                self._enter(current)  # sums the other strata as when it was entered: they are unchanged

        return commit


def _moments(value: object, where: str) -> Moments:
    n, mean, m2 = saved.sequence(value, where, 3)
    moments = Moments(saved.count(n, f"{where}[0]"), saved.number(mean, f"{where}[1]"),
                      saved.number(m2, f"{where}[2]"))
    if moments.m2 < 0.0:
        raise saved.fail(f"{where}[2]", f"a sum of squared deviations cannot be negative, got {m2!r}")
    return moments


# --- what it says -----------------------------------------------------------------------------


def amount_verdict(evidence: AmountEvidence, observed: Mapping[str, int], log_e: float | None) -> Verdict:
    """The verdict of an amount test at `log_e` (None: in burn-in)."""
    details = amount_details(evidence, observed, log_e)
    canary, stable = evidence.samples(CANARY), evidence.samples(STABLE)
    label = AMOUNT_TESTS[evidence.name]
    source = f"judge:{evidence.name}"
    if log_e is None:
        reason = (
            f"judge: {label} in burn-in, no stratum has {evidence.burn_in} samples per version "
            f"yet (canary {canary:,} req, stable {stable:,} req)"
        )
        return Verdict(source=source, status=Status.PASS, reason=reason, details=details)
    status = Status.FAIL if log_e >= evidence.log_threshold else Status.PASS
    qualifiers = "" if evidence.r0 == 1.0 else f", tolerance {evidence.r0:g}×"
    if status is Status.FAIL:
        relation = "≥"
    else:
        relation = "<"
        qualifiers += ", no evidence it is worse"
    reason = (
        f"judge: {label} canary {details['ratio']:.1f}× stable{qualifiers} "
        f"(e-value {format_e(log_e)} {relation} {format_e(evidence.log_threshold)}; "
        f"canary {canary:,} req, stable {stable:,} req)"
    )
    return Verdict(source=source, status=status, reason=reason, details=details)


def amount_details(evidence: AmountEvidence, observed: Mapping[str, int], log_e: float | None) -> dict[str, object]:
    statistics = evidence.statistics()
    return {
        "statistic": "normal-mixture e-value on log(1 + y)",
        "log_e_value": log_e,
        "e_value": None if log_e is None else e_value(log_e),
        "threshold": 1.0 / evidence.alpha,
        "alpha": evidence.alpha,
        "r0": evidence.r0,
        # s/v estimates Δ − log r0: add the shift back for the ratio itself.
        "ratio": None if statistics is None else math.exp(statistics[0] / statistics[1] + evidence.shift),
        "canary": {"samples": evidence.samples(CANARY)},
        "stable": {"samples": evidence.samples(STABLE)},
        "strata": len(evidence.strata),
        "sigma2": evidence.sigma2,
        "rho": evidence.rho,
        "observed": dict(observed),
    }
