"""The paired tests of a shadow stage: one request answered by stable and by the canary in the
shadow (`ShadowPair`), compared, anytime-valid like the judge's other tests (e-processes: Ville's
inequality bounds the chance one ever reaches 1/α by α).

* **Why a sign test.** For each compared quantity a pair is *discordant* when exactly one side is
  worse: for an event (failed, schema failure, guardrail intervention, truncation) when exactly
  one answer has it; for an amount (completion tokens, output length, latency, TTFT) when one
  side's exceeds the other's by more than the test's `margin` (10%: "more than 10% larger"),
  concordant (ignored) otherwise. The rule is symmetric in the two sides, so under "the canary is
  no worse" — at each pair, the canary is not more likely than stable to be the worse side — the
  canary is the worse side of a discordant pair with probability at most 1/2, whatever the
  request, its length or the load at that moment: both answers share all of it. That is exactly
  the event tests' conditional-label null (events.py) at a canary share q = 1/2, so the same
  mixture e-process is valid here, labelling each discordant pair Z = 1 when the canary is the
  worse side; it needs no estimate of stable's rate, and concordant pairs, which carry no
  information about which side is worse, cost nothing. r₀ widens the null to "the canary is the
  worse side at most r₀ times as often as stable". The amounts need no normal approximation and
  no burn-in, and a pair removes the between-request variation an unpaired comparison must
  outlast: this is why a shadow stage needs far fewer requests than a live one.
* **What is compared.** A pair in which either side did not reach a verdict on its version (a
  client that hung up, a body refused: `counts_for_version`) is dropped whole: the user leaving
  is never the canary's failure. Amounts come from pairs in which neither side failed (a failure
  has its own test), and only when both sides have the value; completion tokens compare the
  reported counts when both report usage and the proxy's own estimates otherwise, never one
  with the other (core/token_sources.py). A schema is compared when both answers were checked.
* **Per-key caps**, as in the live tests, since a user's prompts are correlated: each event test
  takes at most `max_events_per_key` discordant pairs per sticky key, the amount tests together
  `max_samples_per_key` pairs per key (latency and TTFT, which skip the warm-up, have a cap of
  their own). Pairs without a key are never capped.
* **Warm-up.** A canary that just started answering shadow requests may run cold: for
  `warmup_seconds` after the first pair (by the stable side's `routed_at`) the latency and TTFT
  tests skip pairs and the other tests judge against the null widened by `warmup_tolerance`.
* **Shown no worse** (`no_worse`): for each test that has compared pairs, either the confidence
  sequence of its discordant odds (canary worse : stable worse, events.py) is below the
  tolerance, or the canary has been shown to be the worse side in fewer than `negligible` more
  of the compared pairs than stable is (a betting e-process on the paired difference, at the
  test's α: `PairedLane.shown_within`). The odds alone need hundreds of discordant pairs, which
  a rare quantity (2% failures: 3% of the pairs discordant) takes many thousand pairs to give,
  and a quantity on which the versions never disagree (no guardrail ever fires) never gives.
  A test with no compared pair (TTFT of non-streaming traffic, no schema) says nothing and holds
  nothing; `failed` compares every pair.

The α split of the shadow family is in config.py. Key caps are not saved, as in the judge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from canaryproxy.core.judge import state as saved
from canaryproxy.core.judge.config import (
    PAIRED_AMOUNT_TESTS, PAIRED_EVENT_TESTS, PAIRED_TESTS, JudgeConfig, PairedTestConfig, TestConfig,
)  # fmt: skip
from canaryproxy.core.judge.events import EventEvidence
from canaryproxy.core.judge.keycap import KeyCap
from canaryproxy.core.judge.numerics import CANARY, STABLE, e_value, format_e, geometric_range, log_mean_exp
from canaryproxy.core.types import Observed, Role, ShadowPair, Status, Verdict

SIGN_SHARE = 0.5  # the canary's share of the discordant pairs under the null: a sign test
NEGLIGIBLE = 0.01  # default: canary worse in at most 1% more of the compared pairs than stable: no harm
# The bets of `shown_within`: from ~δ/(discordant share) at many discordant pairs to nearly all-in
# when the versions never disagree; averaging 16 costs log 16 nats of evidence.
_BETS = geometric_range(0.005, 0.9, 16)
_WARM_UP_QUANTITIES = frozenset({"latency", "ttft"})


def _event(name: str, o: Observed) -> bool | None:
    if name == "failed":
        return o.failed
    if name == "schema":
        return None if o.schema_ok is None else o.schema_ok is False
    if name == "guardrail":
        return bool(o.guardrails)
    return o.truncated


def _amounts(stable: Observed, shadow: Observed) -> dict[str, tuple[float, float] | None]:
    """Per amount quantity, (stable's, the canary's), or None when not both have it."""
    if stable.usage_missing or shadow.usage_missing:  # never a reported count against an estimate
        tokens = stable.estimated_tokens, shadow.estimated_tokens
    else:
        tokens = stable.completion_tokens, shadow.completion_tokens
    values = {
        "completion_tokens": tokens,
        "output_length": (stable.output_chars, shadow.output_chars),
        "latency": (stable.latency, shadow.latency),
        "ttft": (stable.ttft, shadow.ttft),
    }
    return {name: None if a is None or b is None else (float(a), float(b)) for name, (a, b) in values.items()}


def worse_side(stable: float, canary: float, margin: float) -> int | None:
    """CANARY or STABLE when that side's amount exceeds the other's by more than `margin`."""
    if canary > stable * (1.0 + margin):
        return CANARY
    if stable > canary * (1.0 + margin):
        return STABLE
    return None


class PairedLane:
    """One paired test: what it compared, which side was worse, its key cap and its evidence."""

    __slots__ = ("name", "test", "evidence", "compared", "worse", "dropped_by_key_cap", "_keys")

    def __init__(self, name: str, test: PairedTestConfig, config: JudgeConfig) -> None:
        self.name = name
        self.test = test
        self.evidence = EventEvidence(f"shadow_{name}", TestConfig(alpha=test.alpha, r0=test.r0), config)
        self.compared = 0  # pairs this test compared
        self.worse = [0, 0]  # discordant pairs counted (under the key cap), [stable worse, canary worse]
        self.dropped_by_key_cap = 0
        self._keys = KeyCap(config.max_events_per_key, config.key_memory)

    def take(self, worse: int | None, key: int | None, cold: bool, capped: bool) -> None:
        """Count one compared pair; `worse` the side that is worse, None when concordant. With
        `capped`, each key's discordant pairs are capped here (the event tests)."""
        self.compared += 1
        if worse is None:
            return
        if capped and key is not None and not self._keys.admit(key):
            self.dropped_by_key_cap += 1
            return
        self.worse[worse] += 1
        crossed = self.evidence.fold_events(SIGN_SHARE, 1 - worse, worse, cold)
        if crossed is not None:
            self.evidence.reject(paired_verdict(self, crossed))

    def shown_within(self, negligible: float) -> bool:
        """Whether the canary is shown to be the worse side in fewer than `negligible` more of the
        compared pairs than stable is: P(canary worse) − P(stable worse) < negligible.

        Per compared pair X = +1 (canary worse), −1 (stable worse), 0; under "the difference is at
        least δ" E[1 − λ(X − δ)] ≤ 1 for every bet 0 ≤ λ < 1/(1 − δ), so the product over pairs,
        averaged over the bets `_BETS`, is an e-process against it; it depends on the counts only.
        Capped pairs count as canary-worse here: caution only delays a promotion.
        """
        delta = negligible
        canary, stable = self.worse[CANARY] + self.dropped_by_key_cap, self.worse[STABLE]
        rest = self.compared - canary - stable
        log_e = log_mean_exp([canary * math.log1p(-bet * (1.0 - delta)) + stable * math.log1p(bet * (1.0 + delta))
                              + rest * math.log1p(bet * delta) for bet in _BETS])
        return log_e >= self.evidence.log_threshold

    def state(self) -> dict[str, object]:
        return {"compared": self.compared, "worse": list(self.worse), "dropped_by_key_cap": self.dropped_by_key_cap,
                "evidence": self.evidence.state()}

    def restoring(self, state: object, where: str) -> Callable[[], None]:
        fields = saved.mapping(state, where, ("compared", "worse", "dropped_by_key_cap", "evidence"))
        compared = saved.count(fields["compared"], f"{where}.compared")
        worse = saved.counts(fields["worse"], f"{where}.worse", 2)
        dropped = saved.count(fields["dropped_by_key_cap"], f"{where}.dropped_by_key_cap")
        if sum(worse) + dropped > compared:
            raise saved.fail(where, f"more discordant pairs ({sum(worse) + dropped}) than compared ({compared})")
        evidence = self.evidence.restoring(fields["evidence"], f"{where}.evidence")

        def commit() -> None:
            self.compared, self.worse, self.dropped_by_key_cap = compared, worse, dropped
            evidence()

        return commit


class PairedTests:
    """Every enabled paired test, over the pairs of the shadow stages. O(J) per discordant pair."""

    __slots__ = ("config", "pairs", "_events", "_amounts", "_sample_keys", "_timing_keys", "_warm_until")

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        tests = config.shadow_tests
        enabled = [name for name, test in tests.items() if test.enabled]
        self._events = {name: PairedLane(name, tests[name], config) for name in enabled if name in PAIRED_EVENT_TESTS}
        self._amounts = {name: PairedLane(name, tests[name], config) for name in enabled if name in PAIRED_AMOUNT_TESTS}
        self._sample_keys = KeyCap(config.max_samples_per_key, config.key_memory)
        # Latency and TTFT skip the warm-up: a cap of their own, so a user first seen while the canary
        # is cold still gives them a pair later (one shared cap spent the busiest users' only one).
        self._timing_keys = KeyCap(config.max_samples_per_key, config.key_memory)
        self.pairs = [0, 0]  # [pairs taken in, pairs dropped (a side that reached no verdict)]
        self._warm_until: float | None = None  # the stable side's routed_at before which pairs are cold

    def observe(self, pair: ShadowPair) -> None:
        """Take one pair into every enabled paired test. ValueError when its roles are not
        (stable, shadow): a canary's answer to a user is no shadow answer."""
        stable, shadow = pair.stable, pair.shadow
        if stable.role is not Role.STABLE or shadow.role is not Role.SHADOW:
            raise ValueError(f"a shadow pair is (stable, shadow), got ({stable.role}, {shadow.role})")
        if not (stable.counts_for_version and shadow.counts_for_version):
            self.pairs[1] += 1
            return
        self.pairs[0] += 1
        if self._warm_until is None:
            self._warm_until = stable.routed_at + self.config.warmup_seconds
        cold = stable.routed_at < self._warm_until
        key = pair.key_hash
        for name, lane in self._events.items():
            on_stable, on_canary = _event(name, stable), _event(name, shadow)
            if on_stable is not None and on_canary is not None:
                lane.take(None if on_stable is on_canary else CANARY if on_canary else STABLE, key, cold, True)
        if not self._amounts or stable.failed or shadow.failed:
            return
        sizes = key is None or self._sample_keys.admit(key)
        timing = not cold and (key is None or self._timing_keys.admit(key))
        values = _amounts(stable, shadow)
        for name, lane in self._amounts.items():
            compared = values[name]
            if compared is not None and (timing if name in _WARM_UP_QUANTITIES else sizes):
                lane.take(worse_side(*compared, lane.test.margin), key, cold, False)

    def lanes(self) -> dict[str, PairedLane]:
        return {**self._events, **self._amounts}

    def verdicts(self) -> list[Verdict]:
        """One verdict per enabled paired test, `judge:shadow_<name>`: FAIL once rejected, else PASS."""
        lanes = self.lanes().values()
        return [lane.evidence.rejection or paired_verdict(lane, lane.evidence.log_e()) for lane in lanes]

    def no_worse(self, tolerance: float, negligible: float = NEGLIGIBLE) -> bool:
        """True when every paired test that compared pairs shows the canary no worse (module
        docstring): discordant odds below `tolerance`, or canary worse in fewer than `negligible`
        of the pairs. False while any has failed, and before any pair was compared."""
        if not 0.0 < tolerance < math.inf:
            raise ValueError(f"no_worse tolerance must be a positive ratio, got {tolerance!r}")
        if not 0.0 < negligible < 1.0:
            raise ValueError(f"no_worse negligible must be a share in (0, 1), got {negligible!r}")
        lanes = self.lanes().values()
        if any(lane.evidence.rejection is not None for lane in lanes) or self.pairs[0] == 0:
            return False
        for lane in lanes:
            if lane.compared == 0 or lane.shown_within(negligible):
                continue
            bound = lane.evidence.ratio_upper_bound()
            if bound is None or bound > tolerance:
                return False
        return True

    def summary(self) -> dict[str, object]:
        tests: dict[str, object] = {}
        for name, lane in self.lanes().items():
            verdict = lane.evidence.rejection or paired_verdict(lane, lane.evidence.log_e())
            tests[name] = {"status": str(verdict.status), "reason": verdict.reason, "evidence": dict(verdict.details),
                           "odds_upper_bound": lane.evidence.ratio_upper_bound()}
        return {"family_alpha": self.config.shadow_family_alpha, "pairs": self.pairs[0], "pairs_dropped": self.pairs[1],
                "tests": tests}

    # --- saving -------------------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        return {
            "config": _config_state(self.config.shadow_tests),
            "pairs": list(self.pairs),
            "warm_until": self._warm_until,
            "lanes": {name: lane.state() for name, lane in self.lanes().items()},
        }

    def restoring(self, state: object, where: str) -> Callable[[], None]:
        """Check `state` against these tests; return what puts it in force (nothing changes before)."""
        fields = saved.mapping(state, where, ("config", "pairs", "warm_until", "lanes"))
        expected = _config_state(self.config.shadow_tests)
        if saved.plain(fields["config"]) != expected:
            raise saved.fail(f"{where}.config", f"saved under other shadow tests: {fields['config']!r}, "
                             f"this config has {expected!r}")
        pairs = saved.counts(fields["pairs"], f"{where}.pairs", 2)
        warm_until = saved.optional_number(fields["warm_until"], f"{where}.warm_until")
        lanes = self.lanes()
        found = saved.mapping(fields["lanes"], f"{where}.lanes", tuple(lanes))
        commits = [lane.restoring(found[name], f"{where}.lanes.{name}") for name, lane in lanes.items()]

        def commit() -> None:
            self.pairs, self._warm_until = pairs, warm_until
            for each in commits:
                each()

        return commit


def _config_state(tests: Mapping[str, PairedTestConfig]) -> dict[str, object]:
    return {name: {"alpha": test.alpha, "r0": test.r0, "margin": test.margin}
            for name, test in tests.items() if test.enabled}


def paired_verdict(lane: PairedLane, log_e: float) -> Verdict:
    """A paired test's verdict at `log_e`, with the counts behind it."""
    evidence = lane.evidence
    status = Status.FAIL if log_e >= evidence.log_threshold else Status.PASS
    canary_worse, stable_worse = lane.worse[CANARY], lane.worse[STABLE]
    relation = "≥" if status is Status.FAIL else "<"
    qualifiers = "" if evidence.r0 == 1.0 else f", tolerance {evidence.r0:g}×"
    if lane.name in PAIRED_AMOUNT_TESTS:
        qualifiers += f", differences over {lane.test.margin:.0%}"
    reason = (
        f"judge: shadow {PAIRED_TESTS[lane.name]}: canary worse in {canary_worse:,} pairs, "
        f"stable worse in {stable_worse:,}{qualifiers} "
        f"(e-value {format_e(log_e)} {relation} {format_e(evidence.log_threshold)}; {lane.compared:,} pairs compared)"
    )
    details = {
        "statistic": "paired sign test (conditional-label mixture e-value, q = 1/2)",
        "log_e_value": log_e,
        "e_value": e_value(log_e),
        "threshold": 1.0 / evidence.alpha,
        "alpha": evidence.alpha,
        "r0": evidence.r0,
        **({"margin": lane.test.margin} if lane.name in PAIRED_AMOUNT_TESTS else {}),
        "canary_worse": canary_worse,
        "stable_worse": stable_worse,
        "compared": lane.compared,
        "dropped_by_key_cap": lane.dropped_by_key_cap,
    }
    return Verdict(source=f"judge:{evidence.name}", status=status, reason=reason, details=details)
