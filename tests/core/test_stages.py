"""The rollout state machine, driven by a manual clock, real rules and table-driven metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canaryproxy.core.metrics import MetricValue
from canaryproxy.core.rules import Comparison, Rule, RuleEngine
from canaryproxy.core.stages import (
    Action,
    Alert,
    AlertKind,
    Decision,
    Phase,
    Plan,
    RolloutState,
    SetWeight,
    StableBreachPolicy,
    Stage,
    StepInputs,
    command,
    explain,
    rebase,
    step,
)
from canaryproxy.core.types import Role, Status, Verdict
from canaryproxy.errors import CommandRejected

MINUTE = 60.0
T0 = 1000.0


class TableSource:
    """Metric values by (role, metric). Starts healthy on both roles for every metric RULES uses."""

    HEALTHY = {
        "error_rate": 0.01,
        "latency_p95": 2.0,
        "tokens_per_request": 400.0,
        "guardrail_per_minute": 1.0,
        "schema_failure_rate": 0.005,
    }

    def __init__(self, canary_samples: int = 300, stable_samples: int = 6000) -> None:
        self.values: dict[tuple[Role, str], MetricValue] = {}
        for metric, value in self.HEALTHY.items():
            self.set(Role.CANARY, metric, value, canary_samples)
            self.set(Role.STABLE, metric, value, stable_samples)

    def set(self, role: Role, metric: str, value: float | None, samples: int | None = None) -> None:
        if samples is None:
            samples = self.values[(role, metric)].samples
        self.values[(role, metric)] = MetricValue(value, samples)

    late_by = 0.0  # late metrics: a table has no window to shift

    def metric(self, role: Role, name: str, window: float, t: float, same_weight: bool = False) -> MetricValue:
        return self.values.get((role, name), MetricValue(None, 0))  # a metric nothing counted: no value


# The example rules of the brief, as config would build them.
RULES = [
    Rule("errors", "error_rate", Comparison.ABOVE, 0.05, window=1 * MINUTE, for_=5 * MINUTE),
    Rule("latency", "latency_p95", Comparison.ABOVE, 10.0, window=1 * MINUTE, for_=5 * MINUTE),
    Rule("tokens", "tokens_per_request", Comparison.ABOVE_STABLE, 1.5, window=5 * MINUTE, for_=10 * MINUTE),
    Rule("guardrails", "guardrail_per_minute", Comparison.ABOVE, 10.0, window=1 * MINUTE, for_=5 * MINUTE),
    Rule("schema", "schema_failure_rate", Comparison.ABOVE, 0.02, window=5 * MINUTE, for_=5 * MINUTE),
]
STAGES = (Stage(5, 10 * MINUTE), Stage(25, 10 * MINUTE), Stage(50, 10 * MINUTE), Stage(100, 10 * MINUTE))
PLAN = Plan(STAGES, min_requests=100, max_hold=60 * MINUTE)


@dataclass
class Rollout:
    """The controller's loop, minus the I/O: evaluate the rules, step, keep the actions."""

    plan: Plan = PLAN
    source: TableSource = field(default_factory=TableSource)
    engine: RuleEngine = field(default_factory=lambda: RuleEngine(RULES))
    state: RolloutState = field(default_factory=RolloutState)
    t: float = T0
    actions: list[Action] = field(default_factory=list)

    def command(self, op: str, **arguments: Any) -> list[Action]:
        self.state, actions = command(self.state, self.plan, op, self.t, **arguments)
        self.actions += actions
        return actions

    def tick(self, seconds: float = 10.0, requests: int = 20) -> list[Action]:
        self.t += seconds
        verdicts = self.engine.evaluate(self.source, self.t)
        self.state, actions = step(self.state, self.plan, StepInputs(verdicts, requests), self.t)
        self.actions += actions
        return actions

    def run(self, seconds: float, requests: int = 20) -> None:
        """Tick every 10 s for `seconds`, stopping early once the rollout is no longer progressing."""
        end = self.t + seconds
        while self.t < end and self.state.phase is Phase.PROGRESSING:
            self.tick(requests=requests)

    def weights(self) -> list[float]:
        return [a.weight for a in self.actions if isinstance(a, SetWeight)]

    def alerts(self) -> list[Alert]:
        return [a for a in self.actions if isinstance(a, Alert)]

    def decisions(self) -> list[Decision]:
        return [a for a in self.actions if isinstance(a, Decision)]


def started(**fields: Any) -> Rollout:
    rollout = Rollout(**fields)
    rollout.command("start")
    return rollout


def verdict(status: Status, source: str = "errors", also_on_stable: bool = False) -> Verdict:
    return Verdict(source, status, f"{source} is {status}", also_on_stable, {"value": 1})


# --- the automatic side ---------------------------------------------------------------------------


def test_a_healthy_canary_is_promoted_through_every_stage_after_each_hold() -> None:
    rollout = started()
    rollout.run(3 * 60 * MINUTE)
    assert rollout.state.phase is Phase.PROMOTED
    assert rollout.weights() == [5, 25, 50, 100]
    assert [a.kind for a in rollout.alerts()] == (
        [AlertKind.START] + [AlertKind.STAGE_CHANGE] * 3 + [AlertKind.PROMOTION]
    )
    # Each stage lasts its 10-minute hold (to the 10-second tick): never a stage skipped or cut short.
    assert [d.t - T0 for d in rollout.decisions()] == [0, 600, 1200, 1800, 2400]
    assert [d.trigger for d in rollout.decisions()] == ["command:start"] + ["hold_passed"] * 4
    assert rollout.state.weight == 100
    assert rollout.state.generation == 5


def test_twenty_percent_errors_roll_back_once_the_rule_has_held_for_its_for_duration() -> None:
    rollout = started()
    rollout.source.set(Role.CANARY, "error_rate", 0.2)
    rollout.run(5 * MINUTE)  # first breach at the first tick, +10 s: still pending at +5m
    assert rollout.state.phase is Phase.PROGRESSING
    rollout.tick()
    assert rollout.state.phase is Phase.ROLLED_BACK
    assert rollout.t - T0 == 5 * MINUTE + 10
    set_weight, alert, decision = rollout.actions[-3:]
    assert set_weight == SetWeight(0.0)
    assert isinstance(alert, Alert) and alert.kind is AlertKind.ROLLBACK
    assert alert.title == "canary rolled back: errors"
    assert "error_rate 0.2 > 0.05 for 5m0s (canary n=300; stable 0.01, n=6000)" in alert.message
    assert alert.details["verdicts"]["errors"]["canary_samples"] == 300
    assert isinstance(decision, Decision)
    assert (decision.trigger, decision.weight_before, decision.weight_after) == ("rule", 5, 0)
    assert [v.source for v in decision.verdicts] == ["errors"]


@pytest.mark.parametrize(
    ("rule", "role_values", "for_"),
    [
        ("latency", {"latency_p95": 14.0}, 5 * MINUTE),
        ("tokens", {"tokens_per_request": 700.0}, 10 * MINUTE),
        ("guardrails", {"guardrail_per_minute": 15.0}, 5 * MINUTE),
        ("schema", {"schema_failure_rate": 0.05}, 5 * MINUTE),
    ],
)
def test_each_rule_rolls_back_a_canary_that_breaches_it_at_a_later_stage(
    rule: str, role_values: dict[str, float], for_: float
) -> None:
    rollout = started()
    rollout.run(10 * MINUTE)
    assert rollout.state.weight == 25
    breach_start = rollout.t + 10
    for metric, value in role_values.items():
        rollout.source.set(Role.CANARY, metric, value)
    rollout.run(60 * MINUTE)
    assert rollout.state.phase is Phase.ROLLED_BACK
    assert rollout.t == breach_start + for_
    assert rollout.weights() == [5, 25, 0]
    assert rollout.alerts()[-1].title == f"canary rolled back: {rule}"


def test_without_canary_traffic_nothing_is_promoted_and_the_rollout_pauses_at_max_hold() -> None:
    source = TableSource(canary_samples=0)
    rollout = started(source=source)
    rollout.run(3 * 60 * MINUTE, requests=0)
    assert rollout.state.phase is Phase.PAUSED
    assert rollout.weights() == [5]
    assert rollout.state.weight == 5
    waiting, paused = rollout.decisions()[1:]
    assert (waiting.trigger, waiting.t - T0) == ("hold_extended", 10 * MINUTE)
    assert waiting.summary.startswith(
        "hold passed, still waiting: 0 of 100 canary requests; waiting on errors inconclusive: "
    )
    assert waiting.phase_after is Phase.PROGRESSING
    assert (paused.trigger, paused.t - T0) == ("max_hold", 60 * MINUTE)
    alert = rollout.alerts()[-1]
    assert alert.kind is AlertKind.INSUFFICIENT_DATA
    assert alert.message.startswith(
        "insufficient data for 1h0m0s: 0 of 100 canary requests; errors inconclusive: "
    )
    assert rollout.state.pause_reason == alert.message
    # Paused, the automatic side does nothing however long it is stepped.
    assert rollout.tick() == []


def test_enough_requests_but_inconclusive_rules_still_hold_the_stage() -> None:
    rollout = started(source=TableSource(canary_samples=5))  # rules need 20 samples per window
    rollout.run(60 * MINUTE - 10, requests=50)
    assert rollout.state.phase is Phase.PROGRESSING
    assert rollout.state.stage == 0
    rollout.tick(requests=50)
    assert rollout.state.phase is Phase.PAUSED
    assert "insufficient data" in rollout.state.pause_reason


def test_enough_samples_in_the_rules_but_too_few_requests_in_the_stage_holds_it() -> None:
    rollout = started()
    rollout.run(10 * MINUTE, requests=1)  # 60 requests by the end of the hold
    assert rollout.state.stage == 0
    rollout.run(40 * 10, requests=1)  # the 100th request arrives
    assert rollout.state.stage == 1


def test_a_stage_that_gets_its_data_late_advances_as_soon_as_it_has_it() -> None:
    rollout = started(source=TableSource(canary_samples=0))
    rollout.run(30 * MINUTE, requests=0)
    assert rollout.state.stage == 0
    rollout.source = TableSource()
    rollout.tick(requests=100)
    assert rollout.state.stage == 1
    assert rollout.decisions()[-1].trigger == "hold_passed"


def test_the_same_failure_on_stable_pauses_instead_of_rolling_back() -> None:
    rollout = started()
    rollout.source.set(Role.CANARY, "error_rate", 0.2)
    rollout.source.set(Role.STABLE, "error_rate", 0.15)
    rollout.run(60 * MINUTE)
    assert rollout.state.phase is Phase.PAUSED
    assert rollout.state.weight == 5
    assert rollout.weights() == [5]
    alert = rollout.alerts()[-1]
    assert alert.kind is AlertKind.PAUSE
    assert alert.message.startswith("environment problem: the same rule fires on stable: errors fail: ")
    assert rollout.decisions()[-1].trigger == "rule"


def test_on_stable_breach_rollback_rolls_back_anyway() -> None:
    rollout = started(plan=replace(PLAN, on_stable_breach=StableBreachPolicy.ROLLBACK))
    rollout.source.set(Role.CANARY, "error_rate", 0.2)
    rollout.source.set(Role.STABLE, "error_rate", 0.15)
    rollout.run(60 * MINUTE)
    assert rollout.state.phase is Phase.ROLLED_BACK
    assert rollout.weights() == [5, 0]


def test_on_stable_breach_ignore_neither_fires_nor_blocks() -> None:
    rollout = started(plan=replace(PLAN, on_stable_breach=StableBreachPolicy.IGNORE))
    rollout.source.set(Role.CANARY, "error_rate", 0.2)
    rollout.source.set(Role.STABLE, "error_rate", 0.15)
    rollout.run(3 * 60 * MINUTE)
    assert rollout.state.phase is Phase.PROMOTED
    assert rollout.weights() == [5, 25, 50, 100]


@pytest.mark.parametrize("status", [Status.PENDING, Status.INCONCLUSIVE])
def test_a_pending_or_inconclusive_verdict_never_counts_as_healthy(status: Status) -> None:
    state, _ = command(RolloutState(), PLAN, "start", T0)
    blocked = StepInputs([verdict(Status.PASS, "latency"), verdict(status)], new_canary_requests=1000)
    state, actions = step(state, PLAN, blocked, T0 + 10 * MINUTE)
    assert state.stage == 0
    [decision] = actions  # "why is it not advancing?", once
    assert isinstance(decision, Decision)
    assert f"waiting on errors {status}: errors is {status}" in decision.summary
    state, actions = step(state, PLAN, blocked, T0 + 20 * MINUTE)
    assert (state.stage, actions) == (0, [])
    state, actions = step(state, PLAN, StepInputs([verdict(Status.PASS)]), T0 + 21 * MINUTE)
    assert state.stage == 1


def test_a_judge_failure_rolls_back_with_the_judge_as_trigger() -> None:
    state, _ = command(RolloutState(), PLAN, "start", T0)
    state, actions = step(state, PLAN, StepInputs([verdict(Status.FAIL, "judge:errors")]), T0 + 1)
    assert state.phase is Phase.ROLLED_BACK
    decision = actions[-1]
    assert isinstance(decision, Decision) and decision.trigger == "judge"


def test_no_worse_ends_a_hold_early_only_when_the_plan_allows_it() -> None:
    inputs = StepInputs([verdict(Status.PASS)], new_canary_requests=500, no_worse=True)
    for early, stage in ((False, 0), (True, 1)):
        plan = replace(PLAN, early_promotion=early)
        state, _ = command(RolloutState(), plan, "start", T0)
        state, actions = step(state, plan, inputs, T0 + MINUTE)
        assert state.stage == stage
    decision = actions[-1]
    assert isinstance(decision, Decision) and decision.trigger == "judge"


def test_early_promotion_still_needs_the_minimum_requests() -> None:
    plan = replace(PLAN, early_promotion=True)
    state, _ = command(RolloutState(), plan, "start", T0)
    state, _ = step(state, plan, StepInputs([verdict(Status.PASS)], 99, no_worse=True), T0 + MINUTE)
    assert state.stage == 0


def test_explain_says_what_a_stage_is_waiting_for() -> None:
    state, _ = command(RolloutState(), PLAN, "start", T0)
    inputs = StepInputs([verdict(Status.PENDING)], new_canary_requests=40)
    assert explain(state, PLAN, inputs, T0 + 4 * MINUTE) == (
        "stage 1 of 4 at 5%: hold 6m0s left; 40 of 100 canary requests; "
        "waiting on errors pending: errors is pending"
    )
    assert explain(state, PLAN, inputs, T0 + 15 * MINUTE) == (
        "stage 1 of 4 at 5%: 40 of 100 canary requests; waiting on errors pending: errors is pending; "
        "pauses in 45m0s if still blocked"
    )
    assert explain(state, PLAN, StepInputs([verdict(Status.PASS)], 100), T0 + 15 * MINUTE) == (
        "stage 1 of 4 at 5%: ready to advance"
    )
    paused, _ = command(state, PLAN, "pause", T0 + MINUTE, reason="looking at dashboards")
    assert explain(paused, PLAN, StepInputs(), T0 + 2 * MINUTE) == (
        "paused at stage 1 of 4, 5%: looking at dashboards"
    )


# --- restarts -------------------------------------------------------------------------------------


def test_a_hold_spanning_a_restart_keeps_its_remaining_time() -> None:
    healthy = StepInputs([verdict(Status.PASS)], new_canary_requests=50)
    state, _ = command(RolloutState(), PLAN, "start", T0)
    state, _ = step(state, PLAN, healthy, T0 + 4 * MINUTE)
    stored = json.dumps(state.to_dict())

    # The new process's monotonic clock starts from somewhere else entirely.
    loaded = RolloutState.from_dict(json.loads(stored))
    with pytest.raises(ValueError, match=r"call rebase\(state, t\) first"):
        step(loaded, PLAN, healthy, 5.0)
    state = rebase(loaded, 5.0)
    state, actions = step(state, PLAN, healthy, 5.0 + 6 * MINUTE - 1)
    assert (state.stage, actions) == (0, [])
    state, actions = step(state, PLAN, healthy, 5.0 + 6 * MINUTE)
    assert state.stage == 1
    assert actions[0] == SetWeight(25)


def test_time_going_backwards_is_an_error_not_a_silent_hold_change() -> None:
    state, _ = command(RolloutState(), PLAN, "start", T0)
    with pytest.raises(ValueError, match=r"time went backwards: t=999.0 is before the state's last_t=1000.0"):
        step(state, PLAN, StepInputs(), T0 - 1)


def test_a_state_from_a_longer_plan_is_rejected_by_a_shorter_one() -> None:
    state, _ = command(RolloutState(), PLAN, "start", T0)
    state, _ = command(state, PLAN, "promote", T0)
    state, _ = command(state, PLAN, "promote", T0)
    with pytest.raises(ValueError, match="rollout state is at stage 3 but the plan has 2 stages"):
        step(state, Plan(STAGES[:2]), StepInputs(), T0 + 1)


# --- manual commands ------------------------------------------------------------------------------


def in_phase(phase: Phase) -> RolloutState:
    """A state in `phase`, reached the way an operator would (stage 2, 25%, where there is one)."""
    state = RolloutState()
    if phase is Phase.IDLE:
        return state
    state, _ = command(state, PLAN, "start", T0)
    state, _ = command(state, PLAN, "promote", T0 + MINUTE)
    followups = {
        Phase.PROGRESSING: [],
        Phase.PAUSED: ["pause"],
        Phase.PROMOTED: ["promote", "promote", "promote"],
        Phase.ROLLED_BACK: ["rollback"],
    }[phase]
    for op in followups:
        state, _ = command(state, PLAN, op, T0 + MINUTE)
    assert state.phase is phase
    return state


ALLOWED = {
    "start": {Phase.IDLE, Phase.ROLLED_BACK, Phase.PROMOTED},
    "pause": {Phase.PROGRESSING},
    "resume": {Phase.PAUSED},
    "promote": {Phase.PROGRESSING, Phase.PAUSED},
    "rollback": {Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTED},
    "set_weight": {Phase.PROGRESSING, Phase.PAUSED},
}
ARGUMENTS: dict[str, dict[str, Any]] = {"set_weight": {"weight": 12.5}, "rollback": {"reason": "bad answers"}}
# Where each accepted command leads: (phase, weight).
RESULT = {
    "start": (Phase.PROGRESSING, 5),
    "pause": (Phase.PAUSED, 25),
    "resume": (Phase.PROGRESSING, 25),
    "promote": (Phase.PROGRESSING, 50),
    "rollback": (Phase.ROLLED_BACK, 0),
    "set_weight": (Phase.PAUSED, 12.5),
}


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("op", list(ALLOWED))
def test_every_command_in_every_phase(op: str, phase: Phase) -> None:
    before = in_phase(phase)
    snapshot = (before.to_dict(), before.last_t)
    t = T0 + 2 * MINUTE
    if phase not in ALLOWED[op]:
        with pytest.raises(CommandRejected) as rejected:
            command(before, PLAN, op, t, **ARGUMENTS.get(op, {}))
        head, allowed = str(rejected.value).split(" applies only when ")
        assert head == f"cannot {op}: the rollout is {phase}; {op}"
        assert set(allowed.split(" or ")) == {p.value for p in ALLOWED[op]}
        assert (before.to_dict(), before.last_t) == snapshot
        return
    after, actions = command(before, PLAN, op, t, **ARGUMENTS.get(op, {}))
    assert (after.phase, after.weight) == RESULT[op]
    assert after.generation == before.generation + 1
    assert after.last_t == t
    decision = actions[-1]
    assert isinstance(decision, Decision)
    assert decision.trigger == f"command:{op}"
    assert (decision.phase_before, decision.phase_after) == (before.phase, after.phase)
    assert (decision.weight_before, decision.weight_after) == (before.weight, after.weight)
    weights = [a.weight for a in actions if isinstance(a, SetWeight)]
    assert weights == ([] if after.weight == before.weight else [after.weight])
    assert sum(isinstance(a, Alert) for a in actions) == 1


def test_pause_then_resume_continues_the_hold_where_it_stopped() -> None:
    rollout = started()
    rollout.run(4 * MINUTE)
    rollout.command("pause")
    rollout.t += 60 * MINUTE
    assert rollout.tick() == []  # paused: time and requests do not count
    rollout.command("resume")
    assert rollout.state.stage_elapsed == 4 * MINUTE
    rollout.run(6 * MINUTE - 10)
    assert rollout.state.stage == 0
    rollout.tick()
    assert rollout.state.stage == 1


def test_resume_after_a_max_hold_pause_gives_the_stage_a_fresh_max_hold() -> None:
    rollout = started(source=TableSource(canary_samples=0))
    rollout.run(2 * 60 * MINUTE, requests=0)
    assert rollout.state.phase is Phase.PAUSED
    resumed_at = rollout.t
    rollout.command("resume")
    rollout.run(2 * 60 * MINUTE, requests=0)
    assert rollout.state.phase is Phase.PAUSED
    triggers = [(d.trigger, d.t - resumed_at) for d in rollout.decisions()[-3:]]
    assert triggers == [("command:resume", 0), ("hold_extended", 10), ("max_hold", 60 * MINUTE)]


def test_set_weight_stops_the_automatic_side_until_resume_restores_the_stage_weight() -> None:
    rollout = started()
    rollout.command("set_weight", weight=1.0, reason="reduce blast radius")
    assert (rollout.state.phase, rollout.state.manual, rollout.state.weight) == (Phase.PAUSED, True, 1.0)
    assert rollout.state.pause_reason == "reduce blast radius"
    rollout.t += 60 * MINUTE
    assert rollout.tick() == []
    rollout.command("resume")
    assert (rollout.state.phase, rollout.state.manual, rollout.state.weight) == (Phase.PROGRESSING, False, 5)
    assert rollout.weights() == [5, 1.0, 5]


def test_promote_to_end_goes_straight_to_100() -> None:
    rollout = started()
    actions = rollout.command("promote", to_end=True)
    assert rollout.state.phase is Phase.PROMOTED
    assert actions[0] == SetWeight(100.0)
    assert isinstance(actions[1], Alert) and actions[1].kind is AlertKind.PROMOTION


def test_promote_from_the_last_stage_promotes() -> None:
    state = in_phase(Phase.PROGRESSING)
    for _ in range(3):
        state, actions = command(state, PLAN, "promote", T0 + 2 * MINUTE)
    assert state.phase is Phase.PROMOTED
    assert [a.kind for a in actions if isinstance(a, Alert)] == [AlertKind.PROMOTION]


def test_start_after_a_rollback_begins_again_at_the_first_stage() -> None:
    state = in_phase(Phase.ROLLED_BACK)
    state, actions = command(state, PLAN, "start", T0 + 2 * MINUTE)
    assert (state.phase, state.stage, state.weight, state.stage_elapsed) == (Phase.PROGRESSING, 0, 5, 0)
    assert actions[0] == SetWeight(5)


@pytest.mark.parametrize(
    ("op", "arguments", "message"),
    [
        ("halt", {}, "unknown command 'halt'; known commands: start, pause, resume, promote, rollback, "),
        ("set_weight", {}, "set_weight: weight must be a number within 0-100 percent, got None"),
        ("set_weight", {"weight": 101}, "set_weight: weight must be a number within 0-100 percent, got 101"),
        ("pause", {"weight": 5}, "pause: weight= applies only to set_weight"),
        ("rollback", {"to_end": True}, "rollback: to_end= applies only to promote"),
    ],
)
def test_malformed_commands(op: str, arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        command(in_phase(Phase.PROGRESSING), PLAN, op, T0 + 2 * MINUTE, **arguments)
    assert str(raised.value).startswith(message)


# --- plan validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (dict(stages=()), "plan: at least one stage is needed"),
        (dict(stages=(Stage(0, 60),)), "plan: stage 1 weight must be above 0% (the stage before) and at"),
        (dict(stages=(Stage(50, 60), Stage(50, 60))), "plan: stage 2 weight must be above 50% (the stage"),
        (dict(stages=(Stage(5, 60), Stage(101, 60))), "at most 100%, got 101"),
        (dict(stages=(Stage(5, -1),)), "plan: stage 1 hold must be a finite number of seconds >= 0, got -1"),
        (dict(stages=(Stage(5, 7200),)), "plan: stage 1 hold 2h0m0s is longer than max_hold 1h0m0s"),
        (dict(stages=STAGES, min_requests=0), "plan: min_requests must be an integer >= 1, got 0"),
        (dict(stages=STAGES, on_stable_breach="panic"), "plan: on_stable_breach must be one of pause, "),
    ],
)
def test_a_bad_plan_is_rejected_with_a_precise_message(plan: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        Plan(**plan)
    assert message in str(raised.value)


# --- the durable form -----------------------------------------------------------------------------


@st.composite
def rollout_states(draw: st.DrawFn) -> RolloutState:
    phase = draw(st.sampled_from(Phase))
    elapsed = draw(st.floats(min_value=0, max_value=1e6))
    weight = {Phase.IDLE: 0.0, Phase.ROLLED_BACK: 0.0, Phase.PROMOTED: 100.0}.get(
        phase, draw(st.floats(min_value=0, max_value=100))
    )
    paused = phase is Phase.PAUSED
    return RolloutState(
        phase=phase,
        stage=draw(st.integers(min_value=0, max_value=20)),
        weight=weight,
        stage_elapsed=elapsed,
        stage_requests=draw(st.integers(min_value=0, max_value=10**9)),
        max_hold_base=draw(st.floats(min_value=0, max_value=elapsed)),
        waiting_reported=draw(st.booleans()),
        manual=paused and draw(st.booleans()),
        pause_reason=draw(st.text(min_size=1)) if paused else "",
        generation=draw(st.integers(min_value=0, max_value=10**9)),
        last_t=draw(st.none() | st.floats(min_value=0, max_value=1e9)),
    )


@given(rollout_states())
def test_the_durable_form_round_trips_through_json_without_the_monotonic_time(state: RolloutState) -> None:
    assert RolloutState.from_dict(json.loads(json.dumps(state.to_dict()))) == replace(state, last_t=None)


@given(rollout_states(), st.data())
def test_a_state_with_any_field_missing_is_rejected(state: RolloutState, data: st.DataObject) -> None:
    stored = state.to_dict()
    del stored[data.draw(st.sampled_from(sorted(stored)))]
    with pytest.raises(ValueError, match="rollout state: missing fields"):
        RolloutState.from_dict(stored)


GOOD = in_phase(Phase.PROGRESSING).to_dict()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"extra": 1}, "unknown fields ['extra']"),
        ({"phase": "running"}, "unknown phase 'running'"),
        ({"stage": "1"}, "stage has the wrong type: '1'"),
        ({"stage": 1.0}, "stage has the wrong type: 1.0"),
        ({"stage_requests": True}, "stage_requests has the wrong type: True"),
        ({"manual": 1}, "manual has the wrong type: 1"),
        ({"weight": None}, "weight has the wrong type: None"),
        ({"stage": -1}, "stage must be an integer >= 0, got -1"),
        ({"weight": 150}, "weight must be at most 100"),
        ({"stage_elapsed": float("nan")}, "stage_elapsed must be a finite number >= 0, got nan"),
        ({"max_hold_base": 1e9}, "max_hold_base 1000000000.0 exceeds stage_elapsed"),
        ({"phase": "rolled_back"}, "weight must be 0.0 when rolled_back, got 25.0"),
        ({"phase": "paused"}, "pause_reason must be set exactly when paused (phase paused)"),
        ({"pause_reason": "why"}, "pause_reason must be set exactly when paused (phase progressing)"),
        ({"manual": True}, "manual weight outside the paused phase (phase progressing)"),
    ],
)
def test_a_corrupt_state_is_detected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        RolloutState.from_dict({**GOOD, **changes})
    assert message in str(raised.value)


def test_a_state_that_is_not_a_mapping_is_rejected() -> None:
    with pytest.raises(ValueError, match="rollout state: expected a mapping, got list"):
        RolloutState.from_dict([])
