"""The sequential statistical judge: is the canary worse than stable? Anytime-valid.

Both versions serve the same traffic at the same time: the splitter sends each user (sticky key)
to the canary with probability w, the canary weight. The judge compares them after every request
and says FAIL as soon as the evidence that the canary is worse is strong, while the chance of a
false rollback stays below α however often it is looked at: each test is an e-process (a
nonnegative supermartingale under "the canary is no worse") and Ville's inequality bounds the
chance it ever reaches 1/α by α. The formulas are in decision-engine.md, section 2.

Two kinds of tests
------------------
*Event tests* (conditional-label mixture; O(1) per request and O(J) per block of requests with
an event, J alternatives): failed requests (`errors`), requests slower than stable's p95
(`latency`) and than stable's p99 (`latency_tail`), both fixed before the test looks,
guardrail interventions (`guardrail`), schema failures (`schema`), truncated responses
(`truncation`). Each event is labelled Z = 1 when the canary served it. If
the canary's event rate per request is at most r₀ times stable's and the canary serves a share q
of the requests, P(Z = 1) ≤ θ₀ = q·r₀ / (q·r₀ + 1 − q) whatever the traffic level does, so
bursts and outages that hit both versions cancel out.
The e-value is a weighted mixture over alternatives r_j of the likelihood ratios, with q, and so
θ, taken for each block of requests (below). Requests routed at w = 0 or w = 1 carry no
information and are skipped. Only a canary event can raise the e-value (a stable event lowers
every likelihood ratio), so the rejection check runs on blocks with canary events only.

*Amount tests* (normal mixture on x = log(1 + y); O(1) per request): tokens per request
(`tokens`), output length in characters (`output_length`), cost (`cost`, in micro-USD) and latency
(`log_latency`, in milliseconds). Units are chosen so that typical values are much larger than 1:
then log(1 + y) ≈ log y, a difference of means of x is a log ratio, and the tolerance r₀ ("a
canary mean up to r₀× stable's is fine") is a shift of Δ by log r₀. The test is only
asymptotically valid, so it may not fire before `burn_in` (at least 100) samples per version.

Choices worth knowing
---------------------
* **The canary's share q is counted, not assumed.** Routing is per user, so the canary's share
  of the *requests* is w only on average over which users land on it: with realistic (Zipf)
  activity one busy user on the canary can make it 8% of the traffic at w = 5%, and without
  one it is nearer 4%. θ₀ from w would then roll a healthy canary back (its share of events is
  above w) or miss a bad one (below w): in bench/detection.py (5,000 Zipf users) 9 of 200 healthy
  canaries were rolled back within 30 minutes at α = 1%, 8 of them by event tests. So each event test cuts the requests
  it looks at into blocks of `_BLOCK_REQUESTS` (100) consecutive ones — a block also ends at a
  weight change and at every verdict, so none waits long at low traffic — and labels a block's
  events against the block's own canary share q = n_c / (n_c + n_s). Given a block's requests
  and its number of events, under the null every request is equally likely to carry one, so the
  canary's count is hypergeometric, and the binomial likelihood ratio at q is a valid e-value
  for it (sampling without replacement is less spread than with: Hoeffding, 1963). Nothing is
  estimated: bursts, drifts and users coming and going change q between blocks, never within
  the comparison. A block in which only one version served says nothing and is dropped. Events
  are taken into the e-value when their block ends, at most 100 requests later. The assumption
  left is that within a version, which request carries an event does not depend on who sent it
  beyond what the per-key cap bounds (the cap itself changes a block only when a key reaches it).
* **Sticky keys.** One user's requests all go to one role and are correlated: a client retrying a
  failed request (the OpenAI SDK does twice) sends the same failure two more times. Each event
  test counts at most `max_events_per_key` (3) events per sticky key and stops counting the key's
  requests once it has them. Three canary events with no stable event in between are then the
  most one user can add: at a canary share of 5%, an e-value of 133, below 1/α = 167 for errors
  (a cap of 5 would allow 13,000: one user retrying a crashing prompt would roll the canary back).
  The price is power when busy users reach the cap and their requests stop counting: with 5,000
  Zipf users regressions of 2× and 3× take 25% and 13% longer to detect than with a cap of 6, 44%
  and 18% longer than with none — and with none, 3% of healthy canaries were rolled back when one
  user in 50 fails 10× as often on both versions (bench/README.md, "The per-key cap"). The amount
  tests take one sample per key (`max_samples_per_key`, default 1; one shared count: a request sampled for
  tokens is also sampled for length and cost): a user's prompts share a typical length, so three
  samples of one user are worth much less than three users, and the normal approximation would
  overstate the evidence (measured: 4 of 800 healthy canaries rolled back by tokens or output
  length at three per key, from an α of 0.15%). Requests without a key are always counted. The counts live in two
  generations of dicts of at most `key_memory` keys each: when the current one fills it becomes
  the previous one, and a key still active is carried forward with its count. Memory is bounded
  by 2 × `key_memory` keys per count (one count per event test, one for the samples; about 8 MB
  each when full at the default 50,000); a key unseen for two generations is forgotten and may
  count again.
* **The mixture.** J = 16 alternatives log-spaced from 1.4·r₀ to `max_ratio` = 40, with prior
  weight ∝ 1/r: the mixture's cost is log(1/π) of the weight near the true ratio, paid in the
  currency of evidence, which comes slowly for small ratios and fast for large ones. Ratios
  below 1.4× are not worth prior mass: at 5% weight they need more traffic than a rollout has.
* **Warm-up.** After each weight increase (the first traffic included) the canary may run on
  cold instances: slow while caches and compiled kernels warm up, and failing a little more while
  they do. For the requests that start within `warmup_seconds` (default 20 s) of the first
  request at the new weight, the latency tests (`latency`, `latency_tail`, `log_latency`:
  `WARM_UP_TESTS`) skip them, and the other event tests judge their blocks against a null widened
  to r₀ × `warmup_tolerance` (default 2): a cold canary failing up to twice as often adds no
  evidence, one failing far more (half its requests) still adds plenty and is rolled back within
  the warm-up. Measured (bench/detection.py, 1,000 rollouts each): a cold start with latency ×3
  and failures ×2 for 20 s was rolled back in 1.9% of rollouts without the tolerance and 0.6%
  with it; the price is the warm-up's evidence on mild regressions — errors ×3 is caught after a
  median of 672 canary requests instead of 560 (about 20 s later at 5 canary requests/s), 50%
  failing after 13 instead of 10. Skipping the warm-up entirely for errors would lose the fast
  catch of a canary that fails outright. Amount tests other than latency keep counting: a longer
  answer is the version's doing, warm or cold.
* **Stratified by weight.** The amount tests keep Welford moments per (weight, role) and combine the
  strata with inverse-variance weights: s = Σ Δ_k/V_k, v = Σ 1/V_k, the sufficient statistics of a
  common shift across strata. With one weight this is exactly Δ/V and 1/V. Pooling across weights
  would compare a canary sampled mostly late (high weight) with a stable sampled mostly early, and
  a daily drift in prompt length would look like a regression. A stratum contributes once each of
  its roles has `burn_in` samples. The event tests' blocks end at a weight change for the same
  reason.
* **σ² for the mixture precision ρ** is the pooled variance of the first stratum to finish its
  burn-in, then fixed until `reset()`: ρ must not follow the data it tests; it only tunes power
  (for about 200 canary requests), never validity.
* **Only requests that say something about the version** (`Outcome.counts_for_version`) are
  observed. Latency events and every amount test look at requests that did not fail: a failure has
  its own test, and its duration (a quick 502, a 60 s timeout) says nothing about serving speed.
* **α split (Bonferroni, valid under continuous monitoring).** The default 1% family budget:

      errors 0.6%   latency 0.2%   latency_tail 0.04%   guardrail 0.06%   schema 0.02%
      tokens 0.05%   truncation 0.01%   output_length 0.01%   cost 0.005%   log_latency 0.005%

  The tests with goals keep most of it; the threshold is log(1/α), so every halving of a test's α
  costs only log 2 ≈ 0.7 nats of evidence. Truncation is inside `errors` already (a truncated body
  is a failed request), length and cost move with tokens, and mean log latency overlaps the
  exceedance test: they are cross-checks and get little. Tokens fire at the burn-in for a 1.5×
  change even at 0.05%. A disabled test's share is simply not spent; `JudgeConfig.family_alpha` is
  the sum over enabled tests.
* **Latency thresholds.** `set_latency_thresholds` takes stable's p95 and p99 fixed before the
  canary gets traffic or taken from stable's window at a stage start, never re-estimated from the
  data under test. Until they are set the two latency event tests are inactive. Evidence gathered
  under an earlier threshold is kept: the null ("canary exceeds at most r₀× as often as stable")
  is checked per event under the threshold in force then.
* **The tail.** A canary whose slowest few percent get much slower (a long-context path, a
  retry inside the server) barely moves the share above stable's p95: its slow requests were
  above it already. `latency_tail` counts the requests above stable's p99 instead, where such a
  canary goes from 1% to several times that (bench/detection.py, "latency tail x2": detected in
  under 1% of rollouts by the p95 test alone). Any fixed threshold keeps the test valid; a noisy
  p99 only costs power. It gets a small α: a tail regression is large when it is there at all.
* **Confidence sequence.** `no_worse(tolerance)` inverts the event tests: for each ratio g on a grid
  (1/4 to 16, 8 steps per doubling) an e-process against "ratio ≥ g", with alternatives below g, is
  evaluated when asked; a g whose e-value reaches 1/α stays excluded until `reset()`. The upper
  bound is the grid point just above the largest g never excluded, so the true ratio is below it
  with probability at least 1 − α at every time at once. Early promotion is off by default in the
  product; the controller decides whether to call it.
* **Verdicts** are PASS or FAIL, never INCONCLUSIVE: "too little data" belongs to the operator
  rules. FAIL is sticky until `reset()` and reports the evidence at the moment it crossed,
  including `observed`: the requests of each version the judge had taken in by then.

The rate ratio shown for an event test is the conditional maximum-likelihood estimate from the
labels (the r whose θ_q(r) fits the canary share of events in the blocks of each share q),
which, like the test, does not depend on traffic level. For an amount test it is exp(Δ̂): the
ratio of the geometric means of 1 + y.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from canaryproxy.core.types import Role, Outcome, Status, Verdict

_STABLE, _CANARY = 0, 1  # indexes of per-role pairs
_LOG_2 = math.log(2.0)
_SQRT_2 = math.sqrt(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_MIXTURE_TUNED_FOR = 200  # canary requests at which the normal mixture has the most power
_SMALLEST_ALTERNATIVE = 1.4  # × r0: smaller ratios take longer than a rollout to show
# Requests per block of an event test: small enough that the canary's share cannot drift within
# one, large enough that a block rarely lacks either version (at a 3% share, one in twenty).
_BLOCK_REQUESTS = 100
_CS_GRID = tuple(2.0 ** (k / 8) for k in range(-16, 33))  # 1/4 .. 16, 8 steps per doubling


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
        "output_length": "output length",
        "cost": "cost per request",
        "log_latency": "latency",
    }
)
# The tests a cold start fails, which skip the requests that start during a warm-up.
WARM_UP_TESTS = frozenset({"latency", "latency_tail", "log_latency"})
# The event tests that wait for stable's latency quantiles (set_latency_thresholds).
_LATENCY_EVENT_TESTS = ("latency", "latency_tail")
DEFAULT_TESTS: Mapping[str, TestConfig] = MappingProxyType(
    {
        "errors": TestConfig(alpha=0.006),
        "latency": TestConfig(alpha=0.002),
        "latency_tail": TestConfig(alpha=0.0004),
        "guardrail": TestConfig(alpha=0.0006),
        "schema": TestConfig(alpha=0.0002),
        "truncation": TestConfig(alpha=0.0001),
        "tokens": TestConfig(alpha=0.0005),
        "output_length": TestConfig(alpha=0.0001),
        "cost": TestConfig(alpha=0.00005),
        "log_latency": TestConfig(alpha=0.00005),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeConfig:
    """Settings of the judge. Tests not named in `tests` keep their defaults (`DEFAULT_TESTS`)."""

    tests: Mapping[str, TestConfig] = field(default_factory=lambda: DEFAULT_TESTS)
    alternatives: int = 16  # J: alternative ratios in each event-test mixture
    max_ratio: float = 40.0  # the largest alternative ratio
    max_events_per_key: int = 3
    max_samples_per_key: int = 1
    key_memory: int = 50_000  # keys per generation of a per-key count (two generations kept)
    burn_in: int = 100  # samples per version in a stratum before an amount test may fire
    warmup_seconds: float = 20.0  # after each weight increase, the latency tests skip this long
    # ...and the other event tests accept a canary up to this many times worse (× r0) meanwhile.
    warmup_tolerance: float = 2.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tests) - set(DEFAULT_TESTS))
        if unknown:
            raise ValueError(
                f"judge.tests: unknown test {', '.join(map(repr, unknown))}; "
                f"known tests: {', '.join(DEFAULT_TESTS)}"
            )
        merged = {name: self.tests.get(name, default) for name, default in DEFAULT_TESTS.items()}
        object.__setattr__(self, "tests", MappingProxyType(merged))
        problems = self._problems()
        if problems:
            raise ValueError("invalid judge config: " + "; ".join(problems))

    @property
    def family_alpha(self) -> float:
        """The chance of any false rollback: the sum of the enabled tests' α (Bonferroni)."""
        return math.fsum(test.alpha for test in self.tests.values() if test.enabled)

    def _problems(self) -> list[str]:
        problems = []
        for name, test in self.tests.items():
            if not 0.0 < test.alpha < 1.0:
                problems.append(f"tests.{name}.alpha must be between 0 and 1, got {test.alpha!r}")
            if not 0.0 < test.r0 < math.inf:
                problems.append(f"tests.{name}.r0 must be a positive number, got {test.r0!r}")
            elif name in EVENT_TESTS and _SMALLEST_ALTERNATIVE * test.r0 >= self.max_ratio:
                problems.append(
                    f"tests.{name}.r0 must be below max_ratio / {_SMALLEST_ALTERNATIVE:g} = "
                    f"{self.max_ratio / _SMALLEST_ALTERNATIVE:.3g} (alternatives run from "
                    f"{_SMALLEST_ALTERNATIVE:g} × r0 to max_ratio), got {test.r0!r}"
                )
        if not self.family_alpha < 1.0:
            problems.append(f"the enabled tests' alphas sum to {self.family_alpha:.3g}; must be below 1")
        for name in ("alternatives", "max_events_per_key", "max_samples_per_key", "key_memory"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not 1.0 <= self.warmup_tolerance < math.inf:
            problems.append(f"warmup_tolerance must be a ratio >= 1, got {self.warmup_tolerance!r}")
        if not 0.0 <= self.warmup_seconds < math.inf:
            problems.append(
                f"warmup_seconds must be a finite number of seconds >= 0, got {self.warmup_seconds!r}"
            )
        if self.burn_in < 100:
            problems.append(
                f"burn_in must be at least 100 (the normal approximation needs it), got {self.burn_in!r}"
            )
        return problems


# --- numerics ---------------------------------------------------------------------------------


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
    """ρ that makes the normal-mixture boundary tightest at about 200 canary requests."""
    log_inv_alpha = math.log(1.0 / alpha)
    return (_MIXTURE_TUNED_FOR / sigma2) / (2.0 * log_inv_alpha + math.log1p(2.0 * log_inv_alpha))


def _log_mixture(log_values: list[float], log_weights: tuple[float, ...]) -> float:
    """log Σ_j π_j·exp(v_j) for log weights log π_j that sum to one in probability."""
    top = max(log_values)
    return top + math.log(
        math.fsum(math.exp(value + log_weight - top) for value, log_weight in zip(log_values, log_weights))
    )


def _mixture_log_weights(ratios: tuple[float, ...]) -> tuple[float, ...]:
    """Prior weights ∝ 1/r: more mass on the small ratios, where evidence comes slowly and the
    mixture's cost (log 1/π of the weight near the true ratio) delays detection the most; a large
    ratio earns its evidence so fast that its smaller weight hardly matters."""
    log_total = math.log(math.fsum(1.0 / ratio for ratio in ratios))
    return tuple(-math.log(ratio) - log_total for ratio in ratios)


def _log_mean_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(math.fsum(math.exp(value - top) for value in values) / len(values))


def _geometric_range(low: float, high: float, count: int) -> tuple[float, ...]:
    if count == 1:
        return (low,)
    step = math.log(high / low) / (count - 1)
    return tuple(low * math.exp(step * i) for i in range(count))


def _canary_share(w: float, ratio: float) -> float:
    """θ: the chance an event came from the canary when its rate is `ratio` × stable's."""
    return w * ratio / (w * ratio + 1.0 - w)


def _log_likelihood_ratios(
    counts: Mapping[float, list[int]], null_ratio: float, ratios: tuple[float, ...]
) -> list[float]:
    """log L_j of each alternative ratio against `null_ratio`, from event counts per weight."""
    totals = [0.0] * len(ratios)
    for w, (stable_events, canary_events) in counts.items():
        theta0 = _canary_share(w, null_ratio)
        for j, ratio in enumerate(ratios):
            theta = _canary_share(w, ratio)
            totals[j] += canary_events * math.log(theta / theta0) + stable_events * (
                math.log1p(-theta) - math.log1p(-theta0)
            )
    return totals


def _ratio_estimate(counts: Mapping[float, list[int]]) -> float | None:
    """Conditional MLE of the rate ratio from the event labels; None when no stable events."""
    canary = sum(pair[_CANARY] for pair in counts.values())
    stable = sum(pair[_STABLE] for pair in counts.values())
    if stable == 0:
        return None
    if canary == 0:
        return 0.0

    # Newton's method on log r, kept inside a bracket that always holds the root: the
    # log-likelihood is concave in log r, so a few steps suffice where bisection took 60 passes
    # over the counts (one per share seen) at every evaluation.
    low, high = -30.0, 30.0
    log_ratio = 0.0
    for _ in range(100):
        ratio = math.exp(log_ratio)
        score = slope = 0.0  # d log-likelihood / d log r, and its derivative (negative)
        for share, (stable_events, canary_events) in counts.items():
            theta = _canary_share(share, ratio)
            score += canary_events * (1.0 - theta) - stable_events * theta
            slope -= (canary_events + stable_events) * theta * (1.0 - theta)
        if score > 0.0:
            low = log_ratio
        else:
            high = log_ratio
        step = -score / slope
        following = log_ratio + step
        if not low < following < high:
            following = 0.5 * (low + high)
        if abs(following - log_ratio) < 1e-12:
            break
        log_ratio = following
    return math.exp(log_ratio)


def _format_e(log_e: float) -> str:
    """An e-value for people: "0.31", "142", "2,857", "3.2e15" (it can exceed a float)."""
    if log_e < math.log(1e9):
        value = math.exp(log_e)
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    exponent = math.floor(log_e / math.log(10.0))
    return f"{math.exp(log_e - exponent * math.log(10.0)):.1f}e{exponent}"


def _e_value(log_e: float) -> float | None:
    """The e-value as a float for JSON, or None when it is beyond a float's range."""
    return math.exp(log_e) if log_e < 709.0 else None


def _observed(observed: list[int]) -> dict[str, int]:
    """The judge's request counts for a verdict's details: at a FAIL, how much traffic the canary
    had served when the evidence crossed (what the decision record and the benchmark report)."""
    return {"canary": observed[_CANARY], "stable": observed[_STABLE]}


def _rate_comparison(ratio: float | None, canary_events: int, stable_events: int) -> str:
    if canary_events + stable_events == 0:
        return ": none yet"
    if ratio is None:
        return " on canary only"
    return f" canary {ratio:.1f}× stable"


# --- sticky-key caps --------------------------------------------------------------------------


class _KeyCap:
    """Admits at most `limit` per sticky key, in bounded memory (two generations of dicts).

    `full` is asked for every request a test looks at, so the keys at the limit are also kept in
    a set: for the many keys below it, the answer is one set lookup.
    """

    __slots__ = ("_limit", "_generation_size", "_current", "_previous", "_at_limit")

    def __init__(self, limit: int, generation_size: int) -> None:
        self._limit = limit
        self._generation_size = generation_size
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._at_limit: set[int] = set()  # the keys of either generation whose count is the limit

    def full(self, key: int) -> bool:
        """Whether `key` has reached the limit. A key at the limit stays remembered while active."""
        if key not in self._at_limit:
            return False
        if key not in self._current:
            self._remember(key, self._limit)
        return True

    def admit(self, key: int) -> bool:
        """Count one for `key` if it is below the limit; say whether it was."""
        count = self._current.get(key)
        if count is None:
            count = self._previous.get(key, 0)
        if count >= self._limit:
            self._remember(key, count)
            return False
        self._remember(key, count + 1)
        return True

    def _remember(self, key: int, count: int) -> None:
        current = self._current
        if key not in current and len(current) >= self._generation_size:
            # A new generation: keys not seen during the last two are forgotten.
            self._previous = current
            self._current = current = {}
            limit = self._limit
            self._at_limit = {k for k, c in self._previous.items() if c >= limit}
        current[key] = count
        if count >= self._limit:
            self._at_limit.add(key)


# --- event tests ------------------------------------------------------------------------------

EventOf = Callable[[Outcome, bool], bool | None]  # (outcome, failed) -> event?; None: not eligible


def _failed(outcome: Outcome, failed: bool) -> bool:
    return failed


def _guardrail(outcome: Outcome, failed: bool) -> bool:
    return bool(outcome.guardrails)


def _schema_failed(outcome: Outcome, failed: bool) -> bool | None:
    schema_ok = outcome.schema_ok
    return None if schema_ok is None else not schema_ok


def _truncated(outcome: Outcome, failed: bool) -> bool:
    return outcome.truncated


def _not_eligible(outcome: Outcome, failed: bool) -> None:
    return None


def _slower_than(threshold: float) -> EventOf:
    def slower(outcome: Outcome, failed: bool) -> bool | None:
        return None if failed else outcome.latency > threshold

    return slower


_EVENT_OF: Mapping[str, EventOf] = MappingProxyType(
    {
        "errors": _failed,
        "latency": _not_eligible,  # until set_latency_thresholds
        "latency_tail": _not_eligible,
        "guardrail": _guardrail,
        "schema": _schema_failed,
        "truncation": _truncated,
    }
)


class _EventTest:
    """The conditional-label mixture for one kind of event, in blocks, and its confidence sequence."""

    __slots__ = (
        "name", "label", "event_of", "active", "alpha", "r0", "log_threshold", "_ratios", "_log_weights",
        "_cs_shrinks", "_log_l", "_increments", "counts", "_block", "_block_w", "_block_cold", "requests",
        "events", "dropped_by_key_cap", "_keys", "rejection", "_cs_index", "observed", "_cold_null",
    )  # fmt: skip

    def __init__(self, name: str, test: TestConfig, config: JudgeConfig, observed: list[int]) -> None:
        self.name = name
        self.label = EVENT_TESTS[name]
        self.event_of = _EVENT_OF[name]
        self.active = name not in _LATENCY_EVENT_TESTS
        self.alpha = test.alpha
        self.r0 = test.r0
        self.log_threshold = math.log(1.0 / test.alpha)
        self._ratios = _geometric_range(_SMALLEST_ALTERNATIVE * test.r0, config.max_ratio, config.alternatives)
        self._cold_null = test.r0 * config.warmup_tolerance  # the null ratio of a warm-up's blocks
        self._log_weights = _mixture_log_weights(self._ratios)
        self._cs_shrinks = _geometric_range(1.1, config.max_ratio, config.alternatives)
        self._log_l = [0.0] * config.alternatives
        # Increments of log L_j for one stable and one canary event at each (canary share, warm-up):
        # a block's share is k / n for its n <= _BLOCK_REQUESTS requests, so there are few of them.
        self._increments: dict[tuple[float, bool], tuple[tuple[float, ...], tuple[float, ...]]] = {}
        # Events of the closed blocks per canary share, [stable, canary]: sufficient for the e-value,
        # the ratio estimate and the confidence sequence.
        self.counts: dict[float, list[int]] = {}
        # The open block: [stable requests, canary requests, stable events, canary events], all
        # routed at weight _block_w, from keys under the cap, all in a warm-up (_block_cold) or none.
        self._block = [0, 0, 0, 0]
        self._block_w = -1.0
        self._block_cold = False
        self.requests = [0, 0]  # requests this test looks at, [stable, canary]
        self.events = [0, 0]  # events counted (under the key cap), [stable, canary]
        self.dropped_by_key_cap = 0
        self._keys = _KeyCap(config.max_events_per_key, config.key_memory)
        self.rejection: Verdict | None = None
        self._cs_index = len(_CS_GRID)  # every grid ratio from here up is excluded
        self.observed = observed  # the judge's requests taken in, [stable, canary]: shared, live

    def observe(self, outcome: Outcome, failed: bool, side: int, w: float, key: int | None,
                cold: bool) -> None:
        event = self.event_of(outcome, failed)
        if event is None:
            return
        self.requests[side] += 1
        if key is not None and self._keys.full(key):
            if event:
                self.dropped_by_key_cap += 1
            return
        if w != self._block_w or cold is not self._block_cold:
            self.close_block()
            self._block_w = w
            self._block_cold = cold
        block = self._block
        block[side] += 1
        if event:
            if key is not None:
                self._keys.admit(key)
            self.events[side] += 1
            block[2 + side] += 1
        if block[_STABLE] + block[_CANARY] >= _BLOCK_REQUESTS:
            self.close_block()

    def close_block(self) -> None:
        """Take the open block's events into the e-value, labelled against the block's own share.

        Under the null every request of a block is equally likely to carry an event, so given the
        block's requests and its number of events the canary's events are hypergeometric; the
        binomial likelihood ratio at the block's canary share is a valid e-value for that (sampling
        without replacement is less spread than with, Hoeffding 1963). A block where only one
        version served says nothing and is dropped.
        """
        stable_requests, canary_requests, stable_events, canary_events = self._block
        self._block = [0, 0, 0, 0]
        if not (stable_events or canary_events) or not (stable_requests and canary_requests):
            return
        share = canary_requests / (stable_requests + canary_requests)
        pair = self.counts.get(share)
        if pair is None:
            pair = self.counts[share] = [0, 0]
        pair[_STABLE] += stable_events
        pair[_CANARY] += canary_events
        stable_step, canary_step = self._increments_at(share, self._block_cold)
        log_l = self._log_l = [
            value + stable_events * stable + canary_events * canary
            for value, stable, canary in zip(self._log_l, stable_step, canary_step, strict=True)
        ]
        # Only canary events can raise the e-value; mixture ≤ max spares the log-sum-exp mostly.
        if canary_events and self.rejection is None and max(log_l) >= self.log_threshold:
            log_e = _log_mixture(log_l, self._log_weights)
            if log_e >= self.log_threshold:
                self.rejection = self.verdict(log_e)

    def _increments_at(self, share: float, cold: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per alternative r_j, log L_j's step for one stable and one canary event in a block.

        In a warm-up block the null is widened to r0 × warmup_tolerance: a cold canary that fails
        somewhat more often adds no evidence, one that fails far more still does. Alternatives at or
        below the widened null step by 0; the others by their likelihood ratio against it. Under
        the real null (ratio ≤ r0) either step has expectation ≤ 1, so the product stays an
        e-process: for θ_j > θ_null the expected ratio grows with the true θ and is 1 at θ_null.
        """
        cached = self._increments.get((share, cold))
        if cached is None:
            null = self._cold_null if cold else self.r0  # warmup_tolerance >= 1: never below r0
            theta0 = _canary_share(share, null)
            thetas = [_canary_share(share, ratio) if ratio > null else theta0 for ratio in self._ratios]
            stable = tuple(math.log1p(-theta) - math.log1p(-theta0) for theta in thetas)
            canary = tuple(math.log(theta / theta0) for theta in thetas)
            cached = self._increments[share, cold] = (stable, canary)
        return cached

    def log_e(self) -> float:
        return _log_mixture(self._log_l, self._log_weights)

    def ratio_upper_bound(self) -> float | None:
        """r such that the true ratio is below r (anytime, probability 1 − α); None: no bound yet."""
        while self._cs_index > 0 and self._excludes(_CS_GRID[self._cs_index - 1]):
            self._cs_index -= 1
        return _CS_GRID[self._cs_index] if self._cs_index < len(_CS_GRID) else None

    def _excludes(self, ratio: float) -> bool:
        """Whether the e-process against "true ratio ≥ `ratio`" has reached 1/α."""
        alternatives = tuple(ratio / shrink for shrink in self._cs_shrinks)
        log_l = _log_likelihood_ratios(self.counts, ratio, alternatives)
        return _log_mean_exp(log_l) >= self.log_threshold

    def verdict(self, log_e: float) -> Verdict:
        status = Status.FAIL if log_e >= self.log_threshold else Status.PASS
        details = self.details(log_e)
        canary, stable = details["canary"], details["stable"]
        comparison = _rate_comparison(details["ratio"], canary["events"], stable["events"])
        qualifiers = "" if self.r0 == 1.0 else f", tolerance {self.r0:g}×"
        if status is Status.FAIL:
            relation = "≥"
        else:
            relation = "<"
            if canary["events"] + stable["events"]:
                qualifiers += ", no evidence it is worse"
        reason = (
            f"judge: {self.label}{comparison}{qualifiers} "
            f"(e-value {_format_e(log_e)} {relation} {_format_e(self.log_threshold)}; "
            f"canary {canary['events']:,} events / {canary['requests']:,} req, "
            f"stable {stable['events']:,} / {stable['requests']:,})"
        )
        return Verdict(source=f"judge:{self.name}", status=status, reason=reason, details=details)

    def details(self, log_e: float) -> dict[str, Any]:
        return {
            "statistic": "conditional-label mixture e-value",
            "log_e_value": log_e,
            "e_value": _e_value(log_e),
            "threshold": 1.0 / self.alpha,
            "alpha": self.alpha,
            "r0": self.r0,
            "ratio": _ratio_estimate(self.counts),
            "canary": {"events": self.events[_CANARY], "requests": self.requests[_CANARY]},
            "stable": {"events": self.events[_STABLE], "requests": self.requests[_STABLE]},
            "dropped_by_key_cap": self.dropped_by_key_cap,
            "observed": _observed(self.observed),
        }


# --- amount tests -----------------------------------------------------------------------------

ValueOf = Callable[[Outcome], float | None]


def _tokens(outcome: Outcome) -> float | None:
    prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
    if prompt is None and completion is None:
        return None
    return (prompt or 0) + (completion or 0)


def _output_chars(outcome: Outcome) -> float | None:
    return outcome.output_chars


def _micro_usd(outcome: Outcome) -> float | None:
    cost = outcome.cost_usd
    return None if cost is None else cost * 1e6


def _milliseconds(outcome: Outcome) -> float:
    return outcome.latency * 1000.0


_VALUE_OF: Mapping[str, ValueOf] = MappingProxyType(
    {"tokens": _tokens, "output_length": _output_chars, "cost": _micro_usd, "log_latency": _milliseconds}
)


class _Moments:
    """Running count, mean and sum of squared deviations (Welford: stable over millions)."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: float) -> None:
        n = self.n = self.n + 1
        delta = x - self.mean
        self.mean += delta / n
        self.m2 += delta * (x - self.mean)


class _Stratum:
    """The samples of both roles routed at one weight."""

    __slots__ = ("roles",)

    def __init__(self) -> None:
        self.roles = (_Moments(), _Moments())  # stable, canary

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


class _AmountTest:
    """The normal-mixture test on log(1 + y) for one per-request amount, stratified by weight."""

    __slots__ = (
        "name", "label", "value_of", "alpha", "r0", "shift", "log_threshold", "burn_in", "strata",
        "_stratum", "_stratum_w", "_other_s", "_other_v", "sigma2", "rho", "rejection", "observed",
    )  # fmt: skip

    def __init__(self, name: str, test: TestConfig, config: JudgeConfig, observed: list[int]) -> None:
        self.name = name
        self.label = AMOUNT_TESTS[name]
        self.value_of = _VALUE_OF[name]
        self.alpha = test.alpha
        self.r0 = test.r0
        self.shift = math.log(test.r0)
        self.log_threshold = math.log(1.0 / test.alpha)
        self.burn_in = config.burn_in
        self.strata: dict[float, _Stratum] = {}  # one per weight (0.01% steps from the splitter)
        self._stratum = _Stratum()  # a placeholder: no weight equals -1, so the first sample enters
        self._stratum_w = -1.0
        self._other_s = 0.0  # s and v of the strata other than the current one
        self._other_v = 0.0
        self.sigma2: float | None = None
        self.rho: float | None = None
        self.rejection: Verdict | None = None
        self.observed = observed

    def observe(self, outcome: Outcome, side: int, w: float) -> None:
        y = self.value_of(outcome)
        if y is None or y < 0.0:  # a negative amount is a bug upstream; a sink must not raise
            return
        stratum = self._stratum if w == self._stratum_w else self._enter(w)
        stratum.roles[side].add(math.log1p(y))
        if self.rejection is not None:
            return
        information = stratum.information(self.burn_in, self.shift)
        if information is None:
            return
        rho = self.rho
        if rho is None:
            self.sigma2 = stratum.pooled_variance()
            rho = self.rho = mixture_precision(self.sigma2, self.alpha)
        s = self._other_s + information[0]
        v = self._other_v + information[1]
        # The e-value is at most 1 for s ≤ 0 and at most 2·exp(s²/2(v+ρ)): skip the exact form
        # (erfc, logs) when even that bound is below the threshold.
        if s <= 0.0 or _LOG_2 + s * s / (2.0 * (v + rho)) < self.log_threshold:
            return
        log_e = normal_mixture_log_e(s, v, rho)
        if log_e >= self.log_threshold:
            self.rejection = self.verdict(log_e)

    def _enter(self, w: float) -> _Stratum:
        """Make the stratum of weight w current, summing the others once (they do not change)."""
        stratum = self.strata.get(w)
        if stratum is None:
            stratum = self.strata[w] = _Stratum()
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

    def verdict(self, log_e: float | None) -> Verdict:
        details = self.details(log_e)
        canary, stable = details["canary"]["samples"], details["stable"]["samples"]
        source = f"judge:{self.name}"
        if log_e is None:
            reason = (
                f"judge: {self.label} in burn-in, no stratum has {self.burn_in} samples per version "
                f"yet (canary {canary:,} req, stable {stable:,} req)"
            )
            return Verdict(source=source, status=Status.PASS, reason=reason, details=details)
        status = Status.FAIL if log_e >= self.log_threshold else Status.PASS
        qualifiers = "" if self.r0 == 1.0 else f", tolerance {self.r0:g}×"
        if status is Status.FAIL:
            relation = "≥"
        else:
            relation = "<"
            qualifiers += ", no evidence it is worse"
        reason = (
            f"judge: {self.label} canary {details['ratio']:.1f}× stable{qualifiers} "
            f"(e-value {_format_e(log_e)} {relation} {_format_e(self.log_threshold)}; "
            f"canary {canary:,} req, stable {stable:,} req)"
        )
        return Verdict(source=source, status=status, reason=reason, details=details)

    def details(self, log_e: float | None) -> dict[str, Any]:
        statistics = self.statistics()
        return {
            "statistic": "normal-mixture e-value on log(1 + y)",
            "log_e_value": log_e,
            "e_value": None if log_e is None else _e_value(log_e),
            "threshold": 1.0 / self.alpha,
            "alpha": self.alpha,
            "r0": self.r0,
            # s/v estimates Δ − log r0: add the shift back for the ratio itself.
            "ratio": None if statistics is None else math.exp(statistics[0] / statistics[1] + self.shift),
            "canary": {"samples": self.samples(_CANARY)},
            "stable": {"samples": self.samples(_STABLE)},
            "strata": len(self.strata),
            "sigma2": self.sigma2,
            "rho": self.rho,
            "observed": _observed(self.observed),
        }


# --- the judge --------------------------------------------------------------------------------


class Judge:
    """Runs every enabled test on every outcome; says which have found the canary worse.

    Lives on the event loop: `observe` is O(1) per request and O(J) per event, never raises on a
    well-formed outcome, and is not thread-safe.
    """

    __slots__ = (
        "config", "_event_tests", "_amount_tests", "_warm_event_tests", "_warm_amount_tests",
        "_sample_keys", "_latency_thresholds", "_observed", "_top_weight", "_warm_from",
    )  # fmt: skip

    def __init__(self, config: JudgeConfig | None = None) -> None:
        self.config = config if config is not None else JudgeConfig()
        self.reset()

    def reset(self) -> None:
        """Forget everything, FAILs and the latency thresholds included: a new rollout starts."""
        config = self.config
        enabled = {name: test for name, test in config.tests.items() if test.enabled}
        self._observed = [0, 0]  # requests taken in, [stable, canary]
        self._event_tests = tuple(
            _EventTest(name, test, config, self._observed)
            for name, test in enabled.items()
            if name in EVENT_TESTS
        )
        self._amount_tests = tuple(
            _AmountTest(name, test, config, self._observed)
            for name, test in enabled.items()
            if name in AMOUNT_TESTS
        )
        # During a warm-up only these run: a cold canary is slow, which says nothing about the version.
        self._warm_event_tests = tuple(t for t in self._event_tests if t.name not in WARM_UP_TESTS)
        self._warm_amount_tests = tuple(t for t in self._amount_tests if t.name not in WARM_UP_TESTS)
        self._sample_keys = _KeyCap(config.max_samples_per_key, config.key_memory)
        self._latency_thresholds: tuple[float, float] | None = None
        self._top_weight = 0.0  # the highest weight seen since the reset
        self._warm_from = -math.inf  # requests started before this are in a warm-up

    @property
    def latency_thresholds(self) -> tuple[float, float] | None:
        """(slow, very slow) in seconds: the `latency` and `latency_tail` events; None until set."""
        return self._latency_thresholds

    def set_latency_thresholds(self, p95: float, p99: float) -> None:
        """Count a request slower than `p95` as a `latency` event and one slower than `p99` as a
        `latency_tail` event from now on.

        Take stable's quantiles from before the canary got traffic, or from stable's window at a
        stage start; never from the data being tested.
        """
        for name, seconds in (("p95", p95), ("p99", p99)):
            if not 0.0 < seconds < math.inf:
                raise ValueError(f"latency threshold {name} must be a positive number of seconds, got {seconds!r}")
        if p99 < p95:
            raise ValueError(f"latency threshold p99 ({p99!r} s) must not be below p95 ({p95!r} s)")
        self._latency_thresholds = (p95, p99)
        thresholds = dict(zip(_LATENCY_EVENT_TESTS, (p95, p99)))
        for test in self._event_tests:
            seconds = thresholds.get(test.name)
            if seconds is not None:
                test.event_of = _slower_than(seconds)
                test.label = f"requests slower than {seconds:.3g} s"
                test.active = True

    def observe(self, outcome: Outcome) -> None:
        """Take one finished request into every enabled test."""
        if not outcome.counts_for_version:
            return
        w = outcome.weight / 100.0
        if not 0.0 < w < 1.0:  # all traffic on one version: nothing to compare
            return
        side = _CANARY if outcome.role is Role.CANARY else _STABLE
        self._observed[side] += 1
        if w > self._top_weight:  # more canary traffic than ever: new instances may start cold
            self._top_weight = w
            self._warm_from = outcome.started + self.config.warmup_seconds
        cold = outcome.started < self._warm_from
        if cold:
            event_tests, amount_tests = self._warm_event_tests, self._warm_amount_tests
        else:
            event_tests, amount_tests = self._event_tests, self._amount_tests
        key = outcome.key_hash
        failed = outcome.failed
        for event_test in event_tests:
            event_test.observe(outcome, failed, side, w, key, cold)
        if failed or not amount_tests:
            return
        if key is not None and not self._sample_keys.admit(key):
            return
        for amount_test in amount_tests:
            amount_test.observe(outcome, side, w)

    def verdicts(self) -> list[Verdict]:
        """One verdict per enabled test: FAIL once rejected (until `reset`), else PASS.

        The event tests' open blocks are closed first, so the verdicts cover every request observed
        (at low traffic, a block is then at most one evaluation long).
        """
        self._close_blocks()
        verdicts = []
        for event_test in self._event_tests:
            verdicts.append(event_test.rejection or self._event_verdict(event_test))
        for amount_test in self._amount_tests:
            verdicts.append(amount_test.rejection or amount_test.verdict(amount_test.log_e()))
        return verdicts

    def _close_blocks(self) -> None:
        # A block may end at any time that does not depend on the events in it: the evaluations do.
        for event_test in self._event_tests:
            event_test.close_block()

    @staticmethod
    def _event_verdict(test: _EventTest) -> Verdict:
        if not test.active:
            reason = f"judge: {test.label} test inactive until latency thresholds are set"
            return Verdict(source=f"judge:{test.name}", status=Status.PASS, reason=reason)
        return test.verdict(test.log_e())

    def no_worse(self, tolerance: float) -> bool:
        """True when every enabled event test shows, anytime-valid, a ratio below `tolerance`.

        The confidence bound is strict (true ratio < bound), so a bound equal to the tolerance
        suffices. False while any test has failed or the latency test is inactive. Early promotion
        on this is off by default in the product.
        """
        if not 0.0 < tolerance < math.inf:
            raise ValueError(f"no_worse tolerance must be a positive ratio, got {tolerance!r}")
        self._close_blocks()
        rejections = [test.rejection for test in self._event_tests]
        rejections += [test.rejection for test in self._amount_tests]
        if any(rejection is not None for rejection in rejections):
            return False
        for test in self._event_tests:
            bound = test.ratio_upper_bound() if test.active else None
            if bound is None or bound > tolerance:
                return False
        return True

    def summary(self) -> dict[str, Any]:
        """Everything the judge knows, JSON-safe, for the admin API.

        Per test: the verdict (the evidence at the crossing once FAIL), the numbers now, and for
        event tests the confidence bound on the rate ratio.
        """
        self._close_blocks()
        tests: dict[str, Any] = {}
        for event_test in self._event_tests:
            current = self._event_verdict(event_test)
            tests[event_test.name] = {
                **self._test_summary(event_test.rejection, current),
                "active": event_test.active,
                "ratio_upper_bound": event_test.ratio_upper_bound() if event_test.active else None,
            }
        for amount_test in self._amount_tests:
            current = amount_test.verdict(amount_test.log_e())
            tests[amount_test.name] = self._test_summary(amount_test.rejection, current)
        config = self.config
        return {
            "family_alpha": config.family_alpha,
            "latency_thresholds": (
                None if self._latency_thresholds is None
                else dict(zip(("p95", "p99"), self._latency_thresholds))
            ),
            "max_events_per_key": config.max_events_per_key,
            "max_samples_per_key": config.max_samples_per_key,
            "burn_in": config.burn_in,
            "warmup_seconds": config.warmup_seconds,
            "warmup_tolerance": config.warmup_tolerance,
            "disabled": [name for name, test in config.tests.items() if not test.enabled],
            "tests": tests,
        }

    @staticmethod
    def _test_summary(rejection: Verdict | None, current: Verdict) -> dict[str, Any]:
        verdict = rejection or current
        return {
            "status": str(verdict.status),
            "reason": verdict.reason,
            "evidence": dict(verdict.details),
            "now": dict(current.details),
        }
