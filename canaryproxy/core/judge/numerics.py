"""The judge's arithmetic: log Φ, the normal mixture, log-sum-exp, the event-label likelihoods.

Pure functions of floats, so each is checked against reference numbers (tests/core/test_judge*).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

STABLE, CANARY = 0, 1  # indexes of per-role pairs
_SQRT_2 = math.sqrt(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_10 = math.log(10.0)
MIXTURE_TUNED_FOR = 200  # canary requests at which the normal mixture has the most power


def log_normal_cdf(z: float) -> float:
    """log Φ(z), accurate everywhere: erfc down to z = −30, the asymptotic series below it.

    log(0.5 · erfc(−z/√2)) would underflow to log 0 near z = −38; the series (relative error below
    1e-14 for z ≤ −30) keeps full precision however negative z is.
    """
    if z > 0.0:
        return math.log1p(-0.5 * math.erfc(z / _SQRT_2))
    if z > -30.0:
        return math.log(0.5 * math.erfc(-z / _SQRT_2))
    t = 1.0 / (z * z)
    series = 1.0 - t * (1.0 - 3.0 * t * (1.0 - 5.0 * t * (1.0 - 7.0 * t * (1.0 - 9.0 * t))))
    return -0.5 * z * z - math.log(-z) - _HALF_LOG_2PI + math.log(series)


def normal_mixture_log_e(s: float, v: float, rho: float) -> float:
    """Log e-value of the one-sided normal mixture (half-normal prior of precision ρ on Δ > 0).

    s = Δ/V is the score and v = 1/V the information of the estimated shift Δ with variance V.
    """
    total = v + rho
    return 0.5 * math.log(4.0 * rho / total) + s * s / (2.0 * total) + log_normal_cdf(s / math.sqrt(total))


def mixture_precision(sigma2: float, alpha: float) -> float:
    """ρ that makes the normal-mixture boundary tightest at about `MIXTURE_TUNED_FOR` canary
    requests."""
    log_inv_alpha = math.log(1.0 / alpha)
    return (MIXTURE_TUNED_FOR / sigma2) / (2.0 * log_inv_alpha + math.log1p(2.0 * log_inv_alpha))


def log_mixture(log_values: Sequence[float], log_weights: Sequence[float]) -> float:
    """log Σ_j π_j·exp(v_j) for log weights log π_j that sum to one in probability."""
    top = max(log_values)
    return top + math.log(
        math.fsum(math.exp(value + log_weight - top) for value, log_weight in zip(log_values, log_weights))
    )


def mixture_log_weights(ratios: Sequence[float]) -> tuple[float, ...]:
    """Prior weights ∝ 1/r: more mass on the small ratios, where evidence comes slowly and the
    mixture's cost (log 1/π of the weight near the true ratio) delays detection the most; a large
    ratio earns its evidence so fast that its smaller weight hardly matters."""
    log_total = math.log(math.fsum(1.0 / ratio for ratio in ratios))
    return tuple(-math.log(ratio) - log_total for ratio in ratios)


def log_mean_exp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(math.fsum(math.exp(value - top) for value in values) / len(values))


def geometric_range(low: float, high: float, count: int) -> tuple[float, ...]:
    """`count` values from `low` to `high`, evenly spaced in log."""
    if count == 1:
        return (low,)
    step = math.log(high / low) / (count - 1)
    return tuple(low * math.exp(step * i) for i in range(count))


def canary_share(w: float, ratio: float) -> float:
    """θ: the chance an event came from the canary when its rate is `ratio` × stable's and the
    canary serves a share `w` of the requests."""
    return w * ratio / (w * ratio + 1.0 - w)


def log_likelihood_ratios(
    counts: Mapping[float, Sequence[int]], null_ratio: float, ratios: Sequence[float]
) -> list[float]:
    """log L_j of each alternative ratio against `null_ratio`, from event counts per share,
    [stable, canary]."""
    totals = [0.0] * len(ratios)
    for w, (stable_events, canary_events) in counts.items():
        theta0 = canary_share(w, null_ratio)
        for j, ratio in enumerate(ratios):
            theta = canary_share(w, ratio)
            totals[j] += canary_events * math.log(theta / theta0) + stable_events * (
                math.log1p(-theta) - math.log1p(-theta0)
            )
    return totals


def ratio_estimate(counts: Mapping[float, Sequence[int]]) -> float | None:
    """Conditional MLE of the rate ratio from the event labels; None when no stable events.

    Newton's method on log r, kept inside a bracket that always holds the root: the log-likelihood
    is concave in log r, so a few steps suffice where bisection took 60 passes over the counts (one
    per share seen) at every evaluation.
    """
    canary = sum(pair[CANARY] for pair in counts.values())
    stable = sum(pair[STABLE] for pair in counts.values())
    if stable == 0:
        return None
    if canary == 0:
        return 0.0
    low, high = -30.0, 30.0
    log_ratio = 0.0
    for _ in range(100):
        ratio = math.exp(log_ratio)
        score = slope = 0.0  # d log-likelihood / d log r, and its derivative (negative)
        for share, (stable_events, canary_events) in counts.items():
            theta = canary_share(share, ratio)
            score += canary_events * (1.0 - theta) - stable_events * theta
            slope -= (canary_events + stable_events) * theta * (1.0 - theta)
        if score > 0.0:
            low = log_ratio
        else:
            high = log_ratio
        following = log_ratio - score / slope
        if not low < following < high:
            following = 0.5 * (low + high)
        if abs(following - log_ratio) < 1e-12:
            break
        log_ratio = following
    return math.exp(log_ratio)


def format_e(log_e: float) -> str:
    """An e-value for people: "0.31", "142", "2,857", "3.2e15" (it can exceed a float)."""
    if log_e < math.log(1e9):
        value = math.exp(log_e)
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    exponent = math.floor(log_e / _LOG_10)
    return f"{math.exp(log_e - exponent * _LOG_10):.1f}e{exponent}"


def e_value(log_e: float) -> float | None:
    """The e-value as a float for JSON, or None when it is beyond a float's range."""
    return math.exp(log_e) if log_e < 709.0 else None
