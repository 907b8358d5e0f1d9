"""The controller driven by a manual clock and the memory backends: no sockets, no sleeps.

Traffic is Outcomes handed to the evidence as the data plane would; the stage machine, rules,
judge, store, follower and decision record are the product's own.
"""

from __future__ import annotations

import heapq
import logging
import math
import random

import pytest

from canaryproxy.alerts import Alerter
from canaryproxy.backends.file import FileRolloutStore
from canaryproxy.backends.memory import MemoryLeadership, MemoryRolloutStore, MemorySpace, SoleLeadership
from canaryproxy.clock import ManualClock
from canaryproxy.control.controller import Controller
from canaryproxy.control.decisions import DecisionRecord
from canaryproxy.control.evidence import Evidence
from canaryproxy.control.follower import Follower
from canaryproxy.core.judge import Judge, JudgeConfig
from canaryproxy.core.rules import Comparison, Rule, RuleEngine
from canaryproxy.core.splitter import Splitter
from canaryproxy.core.stages import Op, Phase, Plan, Stage
from canaryproxy.core.types import Status
from canaryproxy.core.types import Feedback, Outcome, Role
from canaryproxy.core.window import WindowConfig, Windows
from canaryproxy.errors import CommandRejected

EVERY = 10.0
PLAN = Plan((Stage(5.0, 60.0), Stage(25.0, 60.0), Stage(50.0, 60.0)), min_requests=20, max_hold=180.0)
ERRORS = Rule("errors", "error_rate", Comparison.ABOVE, 0.1, window=60.0, for_=20.0, min_samples=20)


class Replica:
    """One process's control plane over a store: evidence, follower, controller, splitter."""

    def __init__(self, clock: ManualClock, store, leadership=None, rules=(ERRORS,), judge: bool | JudgeConfig = False,
                 plan: Plan = PLAN) -> None:
        self.clock = clock
        self.splitter = Splitter(0.0, random.Random(7))
        config = judge if isinstance(judge, JudgeConfig) else None
        self.evidence = Evidence(Windows(WindowConfig(1.0, 900.0)), Judge(config) if judge else None)
        self.feedback_due: list[tuple[float, int, Feedback]] = []  # (wall time it arrives, n, record)
        self.follower = Follower(store, self.splitter.set_weight, clock.monotonic)
        self.controller = Controller(
            plan, RuleEngine(rules), self.evidence, store, leadership or SoleLeadership(), self.follower,
            Alerter([]), DecisionRecord(), clock, EVERY,
        )

    def traffic(self, seconds: float, per_second: int = 40, canary_errors: float = 0.0,
                stable_errors: float = 0.0, latency: float = 0.2, rng: random.Random = random.Random(3),
                rated: float = 0.0, negative: tuple[float, float] = (0.1, 0.1)) -> None:
        """`seconds` of requests at the weight in force, then the clock moves on. `rated` of the
        responses get feedback after a lognormal delay (median 30 s, σ = 1), negative with
        `negative` = (stable's, canary's) chance; it reaches the evidence when due."""
        for _ in range(int(seconds)):
            for i in range(per_second):
                role = self.splitter.choose(None)
                error_rate = canary_errors if role is Role.CANARY else stable_errors
                status = 500 if rng.random() < error_rate else 200
                wall = self.clock.wall()
                self.evidence.record(Outcome(role, self.clock.monotonic(), self.splitter.weight,
                                             status=status, latency=latency, routed_at=wall))
                if rng.random() < rated:
                    bad = rng.random() < negative[role is Role.CANARY]
                    arrives = wall + 30.0 * math.exp(rng.gauss(0.0, 1.0))
                    record = Feedback(role, "r", wall, self.splitter.weight, None, "thumbs", not bad, bad, arrives)
                    heapq.heappush(self.feedback_due, (arrives, len(self.feedback_due) + i, record))
            self.clock.advance(1.0)
            while self.feedback_due and self.feedback_due[0][0] <= self.clock.wall():
                self.evidence.record_feedback(heapq.heappop(self.feedback_due)[2])

    async def run(self, seconds: float, **traffic) -> None:
        """Traffic and an evaluation every EVERY seconds."""
        for _ in range(int(seconds // EVERY)):
            self.traffic(EVERY, **traffic)
            await self.controller.evaluate()

    @property
    def state(self):
        return self.controller.state


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_a_healthy_canary_advances_through_every_stage_and_is_promoted(clock):
    replica = Replica(clock, MemoryRolloutStore())
    await replica.controller.boot()
    assert (replica.state.phase, replica.splitter.weight) == (Phase.PROGRESSING, 5.0)
    await replica.run(70)
    assert replica.state.stage == 1 and replica.splitter.weight == 25.0
    await replica.run(140)
    assert replica.state.phase is Phase.PROMOTED and replica.splitter.weight == 100.0
    triggers = [d["trigger"] for d in replica.controller.decisions if d["kind"] == "transition"]
    assert triggers == ["command:start", "hold_passed", "hold_passed", "hold_passed"]


async def test_a_failing_canary_is_rolled_back_weight_first_and_the_alert_names_the_rule(clock, caplog):
    replica = Replica(clock, MemoryRolloutStore())
    await replica.controller.boot()
    await replica.run(70)
    with caplog.at_level(logging.WARNING, "canaryproxy.alerts"):
        await replica.run(40, canary_errors=0.5)
    assert replica.state.phase is Phase.ROLLED_BACK and replica.splitter.weight == 0.0
    assert replica.controller.rollbacks == 1
    assert any("ALERT rollback" in r.message and "errors" in r.message for r in caplog.records)
    rollback = [d for d in replica.controller.decisions if d["after"] and d["after"]["phase"] == "rolled_back"]
    assert rollback[0]["verdicts"][0]["source"] == "errors"


async def test_a_slow_spell_of_both_versions_right_after_a_weight_rise_is_not_the_canarys_fault(clock):
    # Right after 25% -> 50% every request is slow for 3 s (the host, the network). Over the whole
    # 60 s window the canary's samples crowd the end, where the slow ones are: its p95 is slow and
    # stable's is not, for most of a minute. Compared since the weight changed, they are alike.
    latency = Rule("latency", "latency_p95", Comparison.ABOVE_STABLE, 1.5, window=60.0, for_=20.0,
                   min_samples=20)
    replica = Replica(clock, MemoryRolloutStore(), rules=(latency,))
    await replica.controller.boot()
    await replica.run(140)
    assert (replica.state.stage, replica.splitter.weight) == (2, 50.0)
    replica.traffic(3, latency=2.0)
    await replica.run(70)
    assert replica.state.phase is Phase.PROMOTED, list(replica.controller.decisions)[-1]["summary"]


FEEDBACK_JUDGE = JudgeConfig(feedback=True, feedback_settle=120.0)


async def test_a_stage_does_not_advance_until_its_feedback_has_had_time_to_arrive(clock):
    replica = Replica(clock, MemoryRolloutStore(), rules=(), judge=FEEDBACK_JUDGE)
    await replica.controller.boot()
    await replica.run(70, rated=0.1)  # the hold (60 s) has passed, the feedback settle (2m) has not
    assert (replica.state.stage, replica.splitter.weight) == (0, 5.0)
    waiting = [v for v in replica.controller.verdicts if v.status is Status.INCONCLUSIVE]
    assert {v.source for v in waiting} == {"judge:negative_feedback", "judge:downstream_errors"}
    assert all("more for feedback on requests at 5% to arrive" in v.reason for v in waiting)
    extended = [d for d in replica.controller.decisions if d.get("trigger") == "hold_extended"]
    assert extended and "judge:negative_feedback" in extended[-1]["summary"]
    await replica.run(60, rated=0.1)
    assert (replica.state.stage, replica.splitter.weight) == (1, 25.0)
    await replica.run(70, rated=0.1)  # each weight waits for its own feedback
    assert replica.state.stage == 1
    await replica.run(60, rated=0.1)
    assert replica.state.stage == 2


async def test_a_canary_its_users_dislike_is_rolled_back_and_the_decision_names_the_test(clock, caplog):
    replica = Replica(clock, MemoryRolloutStore(), rules=(), judge=FEEDBACK_JUDGE)
    await replica.controller.boot()
    with caplog.at_level(logging.WARNING, "canaryproxy.alerts"):
        await replica.run(170, rated=0.5, negative=(0.1, 0.5))
    assert replica.state.phase is Phase.ROLLED_BACK and replica.splitter.weight == 0.0
    rollback = [d for d in replica.controller.decisions if d["after"] and d["after"]["phase"] == "rolled_back"]
    [verdict] = rollback[0]["verdicts"]
    assert verdict["source"] == "judge:negative_feedback"
    canary, stable = verdict["details"]["canary"]["events"], verdict["details"]["stable"]["events"]
    summary = rollback[0]["summary"]
    assert f"canary {canary:,} events / " in summary and f"stable {stable:,} / " in summary
    assert any("ALERT rollback" in r.message and "judge:negative_feedback" in r.message for r in caplog.records)


async def test_a_rule_on_a_late_metric_reads_the_window_that_ended_feedback_settle_ago(clock):
    late = Rule("unhappy", "negative_feedback_rate", Comparison.ABOVE, 0.05, window=60.0, for_=0.0,
                min_samples=20)
    replica = Replica(clock, MemoryRolloutStore(), rules=(late,))
    replica.evidence.feedback_settle = 120.0
    await replica.controller.boot()
    await replica.run(60, rated=1.0, negative=(0.0, 1.0))
    [verdict] = await replica.controller.evaluate()
    # Two minutes have not passed: the window it reads ends before the canary's first request.
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.reason.startswith("insufficient data: 0 of 20 requests in 1m0s ending 2m0s ago")
    await replica.run(130, rated=1.0, negative=(0.0, 1.0))
    assert replica.state.phase is Phase.ROLLED_BACK
    rollback = [d for d in replica.controller.decisions if d["after"] and d["after"]["phase"] == "rolled_back"]
    assert rollback[0]["verdicts"][0]["details"]["window_ends_before"] == 120.0


async def test_a_rule_that_fires_on_stable_too_pauses_instead_of_rolling_back(clock):
    replica = Replica(clock, MemoryRolloutStore())
    await replica.controller.boot()
    await replica.run(40, canary_errors=0.5, stable_errors=0.5)
    assert replica.state.phase is Phase.PAUSED and "stable" in replica.state.pause_reason
    assert replica.splitter.weight == 5.0  # an environment problem: the canary keeps its share


async def test_no_traffic_extends_the_hold_then_pauses_at_max_hold(clock):
    replica = Replica(clock, MemoryRolloutStore())
    await replica.controller.boot()
    await replica.run(70, per_second=0)
    assert replica.state.phase is Phase.PROGRESSING and replica.state.stage == 0
    await replica.run(130, per_second=0)
    assert replica.state.phase is Phase.PAUSED and replica.splitter.weight == 5.0


async def test_a_state_that_cannot_be_saved_keeps_the_rollout_going_and_alerts_once(clock, tmp_path, caplog):
    directory = tmp_path / "state"
    replica = Replica(clock, FileRolloutStore(directory / "state.json"))
    await replica.controller.boot()
    (directory / "state.json").unlink()
    directory.rmdir()
    directory.write_text("")  # the disk now refuses every write
    with caplog.at_level(logging.WARNING, "canaryproxy.alerts"):
        await replica.run(70)
    assert replica.state.stage == 1 and replica.splitter.weight == 25.0
    alerts = [r for r in caplog.records if "cannot be saved" in r.message]
    assert len(alerts) == 1


@pytest.mark.parametrize(
    ("phase_setup", "accepted", "rejected"),
    [
        ("progressing", {Op.PAUSE, Op.PROMOTE, Op.ROLLBACK, Op.SET_WEIGHT}, {Op.START, Op.RESUME}),
        ("paused", {Op.RESUME, Op.PROMOTE, Op.ROLLBACK, Op.SET_WEIGHT}, {Op.START, Op.PAUSE}),
        ("rolled_back", {Op.START}, {Op.PAUSE, Op.RESUME, Op.PROMOTE, Op.ROLLBACK}),
    ],
)
async def test_commands_in_every_phase_are_carried_out_or_refused_changing_nothing(
        clock, phase_setup, accepted, rejected):
    for op in accepted | rejected:
        replica = Replica(clock, MemoryRolloutStore())
        await replica.controller.boot()
        if phase_setup != "progressing":
            await replica.controller.command(Op(phase_setup.replace("rolled_back", "rollback").replace("paused", "pause")),
                                             actor="test")
        before = replica.state
        weight = 12.5 if op is Op.SET_WEIGHT else None
        if op in rejected:
            with pytest.raises(CommandRejected):
                await replica.controller.command(op, actor="test", weight=weight)
            assert replica.state == before
            assert (await replica.controller.store.load()).to_dict() == before.to_dict()
        else:
            state = await replica.controller.command(op, actor="alice", reason="r", weight=weight)
            assert state.generation == before.generation + 1
            assert replica.splitter.weight == state.weight
            assert (await replica.controller.store.load()).generation == state.generation
            assert list(replica.controller.decisions)[-1]["actor"] == "alice"


async def test_a_command_on_another_replica_wins_and_the_leader_follows_it(clock):
    space = MemorySpace(clock)
    leader = Replica(clock, MemoryRolloutStore(space), MemoryLeadership(space, "a", 15.0))
    other = Replica(clock, MemoryRolloutStore(space), MemoryLeadership(space, "b", 15.0))
    assert await leader.controller.leadership.acquire() is not None
    await leader.controller.boot()
    await other.controller.boot()  # finds the stored state: resumes it, starts nothing
    assert other.state.generation == leader.state.generation
    paused = await other.controller.command(Op.PAUSE, actor="bob")
    assert other.splitter.weight == 5.0 and paused.phase is Phase.PAUSED
    leader.traffic(EVERY)
    await leader.controller.evaluate()  # computed on a stale state: refused by the store
    leader.follower.observe(await leader.controller.store.load())  # what its watch delivers
    assert leader.state.phase is Phase.PAUSED


async def test_a_fenced_leader_cannot_step_after_another_took_over(clock):
    space = MemorySpace(clock)
    old = Replica(clock, MemoryRolloutStore(space), MemoryLeadership(space, "old", 15.0))
    new = Replica(clock, MemoryRolloutStore(space), MemoryLeadership(space, "new", 15.0))
    await old.controller.leadership.acquire()
    await old.controller.boot()
    await old.run(30)
    clock.advance(20.0)  # old is paused past its lease
    assert await new.controller.leadership.acquire() is not None
    await new.controller.boot()
    await new.run(50)
    assert new.state.stage == 1
    stored = (await new.controller.store.load()).to_dict()
    await old.run(50)  # wakes up, believes it leads, tries to step: every write refused
    assert (await new.controller.store.load()).to_dict() == stored
    assert old.controller.leadership.token is not None  # it never renewed: it still believes
    assert not await old.controller.leadership.renew()  # ...until it tries
