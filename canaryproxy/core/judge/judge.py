"""The `Judge`: one intake, and the evidence of every enabled test, joined.

The intake (intake.py) turns requests into closed blocks and amount samples; the evidence (events.py,
amounts.py) folds them. The judge is the intake's sink: it folds what the intake emits and, when a
test's evidence crosses 1/α, records the FAIL with what the intake had counted then. It answers the
controller: `verdicts`, `no_worse`, `summary`; for shadow stages (paired.py) `shadow_verdicts`, `shadow_no_worse`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from canaryproxy.core.judge import state as saved
from canaryproxy.core.judge.amounts import AmountEvidence, amount_verdict
from canaryproxy.core.judge.config import AMOUNT_TESTS, EVENT_TESTS, FEEDBACK_TESTS, JudgeConfig
from canaryproxy.core.judge.events import EventEvidence, event_verdict
from canaryproxy.core.judge.feedback import TEST_OF_KIND, FeedbackLane, RoutedShares, settling_verdict
from canaryproxy.core.judge.intake import AMOUNT_KINDS, Amounts, Block, Intake
from canaryproxy.core.judge.numerics import CANARY, STABLE
from canaryproxy.core.judge.paired import NEGLIGIBLE, PairedTests
from canaryproxy.core.types import Feedback, Observed, Role, ShadowPair, Status, Verdict, live_role

STATE_FORMAT = 1


class Judge:
    """Runs every enabled test on every request; says which have found the canary worse.

    Lives on the event loop: `observe` is O(1) per request and O(J) per closed block with events,
    never raises on a well-formed request, and is not thread-safe.

    Verdicts are PASS or FAIL, and INCONCLUSIVE only for a feedback test whose feedback has not
    had time to arrive (feedback.py): otherwise "too little data" belongs to the operator rules.
    FAIL is sticky until `reset()` and reports the evidence at the moment it crossed,
    including `observed`: the requests of each version the judge had taken in by then.

    **Saving and restoring.** `state()` is the evidence of every test (log L_j, the event counts per
    canary share, the confidence sequence's index, the amount strata, σ², ρ, the FAILs) and the
    intake's small state (the highest weight and the warm-up, the latency thresholds, the counts,
    each open block), as JSON-safe data. It leaves out the per-key caps' memory (up to 2 ×
    `key_memory` keys per test, megabytes): a new leader restores the evidence and rebuilds the
    caps from the records its outcome feed still retains (`prime_key_caps`) — never resets them,
    which would let a key at its cap add events again, and never counts a record twice: records
    the state covers go to `prime_key_caps`, later ones to `observe`. A key whose records the feed
    no longer holds may count again, as a key unseen for two generations of the caps does.
    """

    __slots__ = ("config", "_intake", "_events", "_amounts", "_sampled", "_routed", "_feedback", "_lanes", "_paired")

    def __init__(self, config: JudgeConfig | None = None) -> None:
        self.config = config if config is not None else JudgeConfig()
        self.reset()

    def reset(self) -> None:
        """Forget everything, FAILs, caps and the latency thresholds included: a new rollout."""
        config = self.config
        self._events = {name: EventEvidence(name, config.tests[name], config) for name in config.enabled(EVENT_TESTS)}
        self._amounts = {
            name: AmountEvidence(name, config.tests[name], config) for name in config.enabled(AMOUNT_TESTS)
        }
        self._sampled = tuple((AMOUNT_KINDS.index(name), evidence) for name, evidence in self._amounts.items())
        names = config.enabled(FEEDBACK_TESTS)
        self._feedback = {name: EventEvidence(name, config.tests[name], config) for name in names}
        self._lanes = {name: FeedbackLane(name, config) for name in names}
        self._routed = RoutedShares() if config.feedback else None
        self._intake = Intake(config, self, self._count_routed if config.feedback else None)
        self._paired = PairedTests(config)

    @classmethod
    def from_state(cls, config: JudgeConfig, state: Mapping[str, object]) -> Judge:
        """A judge with `config` that continues from `state` (see `restore`)."""
        judge = cls(config)
        judge.restore(state)
        return judge

    # --- intake -------------------------------------------------------------------------------

    @property
    def latency_thresholds(self) -> tuple[float, float] | None:
        """(slow, very slow) in seconds: the `latency` and `latency_tail` events; None until set."""
        return self._intake.latency_thresholds

    def set_latency_thresholds(self, p95: float, p99: float) -> None:
        """Count a request slower than `p95` as a `latency` event and one slower than `p99` as a
        `latency_tail` event from now on.

        Take stable's quantiles from before the canary got traffic, or from stable's window at a
        stage start; never from the data being tested.
        """
        self._intake.set_latency_thresholds(p95, p99)

    def observe(self, outcome: Observed) -> None:
        """Take one finished request (an `Outcome` or a decoded `Observation`) into every test.

        ValueError for a shadow request: nothing may count it as stable.
        """
        self._intake.observe(outcome)

    def prime_key_caps(self, observations: Iterable[Observed]) -> int:
        """Run records through the intake's per-key caps only — no evidence, no counts — so that
        a restored judge's caps hold what its predecessor's held: with the records the state
        already covers, oldest first. Returns how many were taken in.

        Call it after `restore`: the restored latency thresholds decide which records were latency
        events (primed before, the latency tests' caps are not rebuilt; the others are).
        """
        return self._intake.prime_key_caps(observations)

    def prime_feedback_caps(self, records: Iterable[Feedback]) -> None:
        """`prime_key_caps` for feedback: records the restored state already counted, through
        their test's per-key cap only, so a user's cap holds across the checkpoint."""
        for feedback in records:
            lane = self._lanes.get(TEST_OF_KIND[feedback.kind])
            if lane is not None:
                lane.prime(feedback.negative, feedback.key_hash)

    def observe_feedback(self, feedback: Feedback) -> None:
        """Take one feedback record into its feedback test (feedback.py); nothing when the
        feedback tests are off or its kind's test is disabled. O(J) for a negative record.

        Labelled against the canary's share of the requests routed at the record's weight, not
        the weight now. ValueError for a shadow record, as `observe` for a shadow request.
        """
        name = TEST_OF_KIND[feedback.kind]
        lane = self._lanes.get(name)
        if lane is None or self._routed is None:
            return
        side = CANARY if live_role(feedback.role) is Role.CANARY else STABLE
        if not 0.0 < feedback.weight < 100.0:  # all traffic on one version: nothing to compare
            return
        if not lane.take(side, feedback.negative, feedback.key_hash):
            return
        evidence = self._feedback[name]
        share = lane.shares.share(feedback.weight)
        crossed = evidence.fold_events(share, 1 - side, side)
        if crossed is not None:
            evidence.reject(event_verdict(evidence, FEEDBACK_TESTS[name], lane.seen(self._intake.observed()),
                                          self._intake.observed(), crossed))

    def observe_pair(self, pair: ShadowPair) -> None:
        """Take one shadow pair into the paired tests (paired.py); never into the live tests.
        ValueError unless its roles are (stable, shadow)."""
        self._paired.observe(pair)

    def shadow_verdicts(self) -> list[Verdict]:
        """One verdict per enabled paired test, `judge:shadow_<name>`: what a shadow stage reads."""
        return self._paired.verdicts()

    def shadow_no_worse(self, tolerance: float, negligible: float = NEGLIGIBLE) -> bool:
        """Whether the paired tests show the canary no worse (`PairedTests.no_worse`)."""
        return self._paired.no_worse(tolerance, negligible)

    def shadow_summary(self) -> dict[str, object]:
        return self._paired.summary()

    def _count_routed(self, side: int, weight: float, routed_at: float, key: int | None) -> None:
        """A request the intake took in: the weight clock (settling) counts every one, each
        feedback test those of keys under its cap (feedback.py)."""
        assert self._routed is not None
        self._routed.count(side, weight, routed_at)
        for lane in self._lanes.values():
            lane.count_request(side, weight, routed_at, key)

    # --- evidence: the intake's sink ----------------------------------------------------------

    def fold_block(self, block: Block) -> None:
        """Fold a closed block into its event test's evidence (called by the intake)."""
        name = block.test
        evidence = self._events[name]
        crossed = evidence.fold(block)
        if crossed is not None:
            intake = self._intake
            evidence.reject(event_verdict(evidence, intake.label(name), intake.seen(name), intake.observed(), crossed))

    def fold_samples(self, side: int, w: float, samples: Amounts) -> None:
        """Fold one request's amount samples into the enabled tests' evidence (called by the
        intake; `samples` per test of `AMOUNT_KINDS`, None: no sample)."""
        for position, evidence in self._sampled:
            y = samples[position]
            if y is not None:
                crossed = evidence.add(side, w, y)
                if crossed is not None:
                    evidence.reject(amount_verdict(evidence, self._intake.observed(), crossed))

    # --- verdicts -----------------------------------------------------------------------------

    def verdicts(self, now: float | None = None) -> list[Verdict]:
        """One verdict per enabled test: FAIL once rejected (until `reset`), else PASS; a feedback
        test is INCONCLUSIVE while its feedback is settling (feedback.py).

        `now`: wall-clock seconds, the clock of `routed_at`; None: the latest routing time seen
        (then no request has had any time for its feedback). The event tests' open blocks are
        closed first, so the verdicts cover every request observed (at low traffic, a block is
        then at most one evaluation long).
        """
        self._intake.close_blocks()
        verdicts = [evidence.rejection or self._event_verdict(name) for name, evidence in self._events.items()]
        for evidence in self._amounts.values():
            verdicts.append(evidence.rejection or amount_verdict(evidence, self._intake.observed(), evidence.log_e()))
        verdicts += [self._feedback_verdict(name, now) for name in self._feedback]
        return verdicts

    def _feedback_verdict(self, name: str, now: float | None) -> Verdict:
        evidence = self._feedback[name]
        if evidence.rejection is not None:
            return evidence.rejection  # evidence of harm needs no waiting
        routed = self._routed
        assert routed is not None  # feedback tests run only with the routed shares
        settle = self.config.feedback_settle
        left = routed.settle_left(routed.latest if now is None else now, settle)
        if left > 0.0:
            assert routed.weight is not None  # settle_left is 0 without a current weight
            return settling_verdict(name, FEEDBACK_TESTS[name], left, routed.weight, settle)
        observed = self._intake.observed()
        return event_verdict(evidence, FEEDBACK_TESTS[name], self._lanes[name].seen(observed), observed,
                             evidence.log_e())

    def _event_verdict(self, name: str) -> Verdict:
        """An event test's verdict now (its FAIL, once rejected, is `rejection`)."""
        intake = self._intake
        if not intake.active(name):
            reason = f"judge: {intake.label(name)} test inactive until latency thresholds are set"
            return Verdict(source=f"judge:{name}", status=Status.PASS, reason=reason)
        evidence = self._events[name]
        return event_verdict(evidence, intake.label(name), intake.seen(name), intake.observed(), evidence.log_e())

    def no_worse(self, tolerance: float) -> bool:
        """True when every enabled event test shows, anytime-valid, a ratio below `tolerance`.

        The confidence bound is strict (true ratio < bound), so a bound equal to the tolerance
        suffices. False while any test has failed or a latency test is inactive. Early promotion
        on this is off by default in the product.
        """
        if not 0.0 < tolerance < math.inf:
            raise ValueError(f"no_worse tolerance must be a positive ratio, got {tolerance!r}")
        self._intake.close_blocks()
        events = [*self._events.values(), *self._feedback.values()]
        evidences: list[EventEvidence | AmountEvidence] = [*events, *self._amounts.values()]
        if any(evidence.rejection is not None for evidence in evidences):
            return False
        for evidence in events:
            bound = evidence.ratio_upper_bound() if self._intake.active(evidence.name) else None
            if bound is None or bound > tolerance:
                return False
        return True

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """Everything the judge knows, JSON-safe, for the admin API (`now` as in `verdicts`).

        Per test: the verdict (the evidence at the crossing once FAIL), the numbers now, and for
        event tests the confidence bound on the rate ratio.
        """
        self._intake.close_blocks()
        tests: dict[str, Any] = {}
        for name, evidence in self._events.items():
            active = self._intake.active(name)
            tests[name] = {
                **_test_summary(evidence.rejection, self._event_verdict(name)),
                "active": active,
                "ratio_upper_bound": evidence.ratio_upper_bound() if active else None,
            }
        for name, amount in self._amounts.items():
            current = amount_verdict(amount, self._intake.observed(), amount.log_e())
            tests[name] = _test_summary(amount.rejection, current)
        for name, evidence in self._feedback.items():
            lane = self._lanes[name]
            tests[name] = {
                **_test_summary(evidence.rejection, self._feedback_verdict(name, now)),
                "received": {"canary": lane.received[CANARY], "stable": lane.received[STABLE]},
                "ratio_upper_bound": evidence.ratio_upper_bound(),
            }
        config = self.config
        thresholds = self._intake.latency_thresholds
        return {
            "family_alpha": config.family_alpha,
            "latency_thresholds": None if thresholds is None else dict(zip(("p95", "p99"), thresholds)),
            "max_events_per_key": config.max_events_per_key,
            "max_samples_per_key": config.max_samples_per_key,
            "burn_in": config.burn_in,
            "warmup_seconds": config.warmup_seconds,
            "warmup_tolerance": config.warmup_tolerance,
            **({"feedback_settle": config.feedback_settle} if config.feedback else {}),
            # Without feedback the feedback tests are not "disabled": there is nothing for them.
            "disabled": [name for name, test in config.tests.items()
                         if not test.enabled and (config.feedback or name not in FEEDBACK_TESTS)],
            "tests": tests,
        }

    # --- saving -------------------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        """The evidence and the intake's small state, JSON-safe; not the key caps' memory.

        Reading it changes nothing: open blocks are saved open.
        """
        state: dict[str, object] = {
            "format": STATE_FORMAT,
            "config": _config_state(self.config),
            "intake": self._intake.state(),
            "events": {name: evidence.state() for name, evidence in self._events.items()},
            "amounts": {name: evidence.state() for name, evidence in self._amounts.items()},
            "shadow": self._paired.state(),
        }
        if self._routed is not None:  # only with feedback: a state without it reads as before
            state["feedback"] = {
                "routed": self._routed.state(),
                "lanes": {name: lane.state() for name, lane in self._lanes.items()},
                "evidence": {name: evidence.state() for name, evidence in self._feedback.items()},
            }
        return state

    def restore(self, state: Mapping[str, object]) -> None:
        """Continue from `state` (what `state()` wrote, through JSON or not): the evidence and the
        intake's small state are replaced, the key caps stay as they are (`prime_key_caps`).

        ValueError, naming the field, when the state was saved under another config (tests,
        α, r₀, alternatives, ...) or is not a judge state; the judge is then unchanged. A state from
        before the paired tests (no "shadow") restores them empty.
        """
        keys = ("format", "config", "intake", "events", "amounts") + (("feedback",) if self._routed else ())
        keys += ("shadow",) if isinstance(state, Mapping) and "shadow" in state else ()
        fields = saved.mapping(state, "state", keys)
        if fields["format"] != STATE_FORMAT:
            raise saved.fail("format", f"expected {STATE_FORMAT}, got {fields['format']!r}")
        _check_config(fields["config"], _config_state(self.config))
        events = saved.mapping(fields["events"], "events", tuple(self._events))
        amounts = saved.mapping(fields["amounts"], "amounts", tuple(self._amounts))
        commits = [self._intake.restoring(fields["intake"], "intake")]
        commits += [evidence.restoring(events[name], f"events.{name}") for name, evidence in self._events.items()]
        commits += [evidence.restoring(amounts[name], f"amounts.{name}") for name, evidence in self._amounts.items()]
        if self._routed is not None:
            commits += self._feedback_restoring(fields["feedback"])
        if "shadow" in fields:  # the key caps stay, as the live tests' do
            commits.append(self._paired.restoring(fields["shadow"], "shadow"))
        else:
            commits.append(lambda: setattr(self, "_paired", PairedTests(self.config)))
        for commit in commits:
            commit()


    def _feedback_restoring(self, state: object) -> list[Callable[[], None]]:
        assert self._routed is not None
        fields = saved.mapping(state, "feedback", ("routed", "lanes", "evidence"))
        lanes = saved.mapping(fields["lanes"], "feedback.lanes", tuple(self._lanes))
        evidence = saved.mapping(fields["evidence"], "feedback.evidence", tuple(self._feedback))
        commits = [self._routed.restoring(fields["routed"], "feedback.routed")]
        commits += [lane.restoring(lanes[name], f"feedback.lanes.{name}") for name, lane in self._lanes.items()]
        commits += [test.restoring(evidence[name], f"feedback.evidence.{name}")
                    for name, test in self._feedback.items()]
        return commits


def _test_summary(rejection: Verdict | None, current: Verdict) -> dict[str, Any]:
    verdict = rejection or current
    return {
        "status": str(verdict.status),
        "reason": verdict.reason,
        "evidence": dict(verdict.details),
        "now": dict(current.details),
    }


def _config_state(config: JudgeConfig) -> dict[str, object]:
    """What a state is only valid under: every setting that shapes the evidence or the intake."""
    enabled = {name: test for name, test in config.tests.items() if test.enabled}
    return {
        "tests": {name: {"alpha": test.alpha, "r0": test.r0} for name, test in enabled.items()},
        **{
            name: getattr(config, name)
            for name in ("alternatives", "max_ratio", "max_events_per_key", "max_samples_per_key",
                         "key_memory", "burn_in", "warmup_seconds", "warmup_tolerance")
        },
    }


def _check_config(value: object, expected: dict[str, object]) -> None:
    found = saved.mapping(value, "config", tuple(expected))
    tests = saved.mapping(found["tests"], "config.tests")
    expected_tests = expected["tests"]
    assert isinstance(expected_tests, dict)
    unknown, missing = sorted(set(tests) - set(expected_tests)), sorted(set(expected_tests) - set(tests))
    if unknown or missing:
        parts = [f"test {name!r} is not enabled in this config" for name in unknown]
        parts += [f"enabled test {name!r} is not in the state" for name in missing]
        raise saved.fail("config.tests", "; ".join(parts))
    differences = [
        f"tests.{name}.{setting} is {tests_value!r} in the state, {setting_value!r} in the config"
        for name, settings in expected_tests.items()
        for setting, setting_value in settings.items()
        if (tests_value := saved.mapping(tests[name], f"config.tests.{name}").get(setting)) != setting_value
    ]
    differences += [
        f"{name} is {found[name]!r} in the state, {setting!r} in the config"
        for name, setting in expected.items()
        if name != "tests" and found[name] != setting
    ]
    if differences:
        raise saved.fail("config", "saved under another config: " + "; ".join(differences))
