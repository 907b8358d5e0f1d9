"""The controller in a shadow stage, driven by a manual clock and the memory backends: pairs handed
to the evidence as the data plane would; the stage machine, judge, store and follower are the
product's own."""

from __future__ import annotations

import random

import pytest

from canaryproxy.alerts import Alerter
from canaryproxy.backends.memory import MemoryRolloutStore, SoleLeadership
from canaryproxy.clock import ManualClock
from canaryproxy.control.controller import Controller
from canaryproxy.control.decisions import DecisionRecord
from canaryproxy.control.evidence import Evidence
from canaryproxy.control.follower import Follower
from canaryproxy.core.judge import Judge, JudgeConfig
from canaryproxy.core.rules import Comparison, Rule, RuleEngine
from canaryproxy.core.splitter import Splitter
from canaryproxy.core.stages import Phase, Plan, Stage, shadow_share
from canaryproxy.core.types import Outcome, Role, ShadowPair
from canaryproxy.core.window import Windows

EVERY = 10.0
PLAN = Plan((Stage(0.0, 60.0, shadow=20.0), Stage(5.0, 60.0), Stage(50.0, 60.0)), min_requests=50, max_hold=600.0)
# A rule that would fire on every evaluation if rules were read in a shadow stage: canary error
# rate above 0 (the canary serves nobody there, so it has no error rate at all).
ANY_ERROR = Rule("errors", "error_rate", Comparison.ABOVE, 0.0, window=60.0, for_=0.0, min_samples=1)


class ShadowReplica:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.splitter = Splitter(0.0, random.Random(7))
        self.evidence = Evidence(Windows(), Judge(JudgeConfig()))
        store = MemoryRolloutStore()
        self.follower = Follower(store, self.splitter.set_weight, clock.monotonic,
                                 apply_shadow=lambda s: self.splitter.set_shadow(0.0 if s is None else shadow_share(s, PLAN)))
        self.controller = Controller(PLAN, RuleEngine((ANY_ERROR,)), self.evidence, store, SoleLeadership(),
                                     self.follower, Alerter([]), DecisionRecord(), clock, EVERY)
        self.canary_served = 0
        self.sources_in_shadow: set[str] = set()  # the verdicts read while in the shadow stage

    def traffic(self, seconds: int, tokens: float, rng: random.Random, per_second: int = 40) -> None:
        for _ in range(seconds):
            for _ in range(per_second):
                wall, t = self.clock.wall(), self.clock.monotonic()
                role = self.splitter.choose(None)
                length = int(rng.lognormvariate(4.5, 0.5))
                stable = Outcome(role, t, self.splitter.weight, status=200, latency=0.5, routed_at=wall,
                                 completion_tokens=length, output_chars=4 * length)
                self.evidence.record(stable)
                if role is Role.CANARY:
                    self.canary_served += 1
                elif self.splitter.shadowed(None):
                    canary_length = int(length * tokens * rng.uniform(0.95, 1.05))
                    shadow = Outcome(Role.SHADOW, t, 0.0, status=200, latency=0.5, routed_at=wall,
                                     completion_tokens=canary_length, output_chars=4 * canary_length)
                    self.evidence.record_pair(ShadowPair(stable, shadow))
            self.clock.advance(1.0)

    async def run(self, seconds: float, tokens: float = 1.0) -> None:
        rng = random.Random(11)
        for _ in range(int(seconds // EVERY)):
            self.traffic(int(EVERY), tokens, rng)
            in_shadow = PLAN.is_shadow(self.state)
            verdicts = await self.controller.evaluate()
            if in_shadow:
                self.sources_in_shadow |= {v.source for v in verdicts}

    @property
    def state(self):
        return self.controller.state


@pytest.fixture
async def replica() -> ShadowReplica:
    replica = ShadowReplica(ManualClock())
    await replica.controller.boot()
    return replica


async def test_a_healthy_shadow_stage_advances_to_the_live_stage_on_the_paired_tests_alone(replica):
    assert replica.splitter.shadow == 20.0 and replica.splitter.weight == 0.0
    await replica.run(EVERY)
    assert replica.state.stage == 0  # the hold has not passed
    # Answers that never differ by more than the margin: "no worse" needs ~1,200 pairs (each paired
    # test's betting bound, at its share of α, that the canary is worse in under 1% more pairs).
    await replica.run(60.0)
    assert replica.state.stage == 0 and replica.state.stage_requests > 500  # hold passed, not shown yet
    await replica.run(120.0)
    assert replica.state.phase is Phase.PROGRESSING and replica.state.stage == 1
    assert replica.splitter.weight == 5.0 and replica.splitter.shadow == 0.0
    # Only the paired tests decided: the rule (which fails on any canary error) was not read.
    assert replica.sources_in_shadow and all(s.startswith("judge:shadow_") for s in replica.sources_in_shadow)
    await replica.run(EVERY)
    assert replica.canary_served > 0  # live now


async def test_longer_answers_are_rolled_back_in_the_shadow_stage_with_no_user_served(replica):
    await replica.run(120.0, tokens=1.5)
    state = replica.state
    assert state.phase is Phase.ROLLED_BACK and state.stage == 0
    assert replica.canary_served == 0
    assert replica.splitter.weight == 0.0 and replica.splitter.shadow == 0.0
    rolled_back = [d for d in replica.controller.decisions if d.get("after") and d["after"]["phase"] == "rolled_back"]
    assert "judge:shadow_completion_tokens" in rolled_back[0]["summary"]
    assert all(s.startswith("judge:shadow_") for s in replica.sources_in_shadow)
