"""Shadow stages in the stage machine: weight 0, a shadow share in force, advancing on pairs and
the paired tests' "no worse", rolled back with no user served by the canary. Times explicit."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from canaryproxy.core.stages import (
    Action, Alert, AlertKind, Decision, Phase, Plan, RolloutState, SetWeight, Stage, StepInputs, command, explain,
    shadow_share, step,
)  # fmt: skip
from canaryproxy.core.types import Status, Verdict

MINUTE = 60.0
T0 = 1000.0
PLAN = Plan(
    (Stage(0, 10 * MINUTE, shadow=20), Stage(5, 10 * MINUTE), Stage(100, 10 * MINUTE)),
    min_requests=100,
    max_hold=60 * MINUTE,
)
PASSING = (Verdict("judge:shadow_failed", Status.PASS, "no evidence"),)
FAILING = Verdict("judge:shadow_completion_tokens", Status.FAIL, "canary worse in 41 pairs, stable worse in 12")


def started(plan: Plan = PLAN) -> RolloutState:
    state, _ = command(RolloutState(), plan, "start", T0)
    return state


def run(state: RolloutState, minutes: int, plan: Plan = PLAN, **inputs: object) -> tuple[RolloutState, list[Action]]:
    """Step once a minute for `minutes`, with the same inputs each time; all the actions."""
    actions: list[Action] = []
    assert state.last_t is not None
    for _ in range(minutes):
        state, more = step(state, plan, StepInputs(**inputs), state.last_t + MINUTE)  # type: ignore[arg-type]
        actions += more
    return state, actions


def test_a_shadow_stage_serves_no_user_and_puts_its_share_in_force() -> None:
    state = started()
    assert (state.stage, state.weight, shadow_share(state, PLAN)) == (0, 0.0, 20.0)
    state, actions = run(state, 11, verdicts=PASSING, new_pairs=50, shadow_no_worse=True)
    assert (state.stage, state.weight, shadow_share(state, PLAN)) == (1, 5.0, 0.0)
    assert [a.weight for a in actions if isinstance(a, SetWeight)] == [5.0]
    (moved,) = [a for a in actions if isinstance(a, Decision)]
    assert "with 500 shadow pairs and every verdict passing; the paired tests show the canary no worse" in moved.summary


def test_the_start_says_it_is_a_shadow_stage() -> None:
    _, actions = command(RolloutState(), PLAN, "start", T0)
    (alert,) = [a for a in actions if isinstance(a, Alert)]
    assert alert.title == "canary rollout started at 0% (shadow 20%)"
    assert not [a for a in actions if isinstance(a, SetWeight)]  # weight 0 was in force already


def test_a_shadow_stage_counts_pairs_not_canary_requests() -> None:
    state, _ = run(started(), 11, verdicts=PASSING, new_canary_requests=50, new_pairs=5, shadow_no_worse=True)
    assert (state.stage, state.stage_requests) == (0, 55)  # 55 pairs of 100: still waiting
    inputs = StepInputs(PASSING, shadow_no_worse=True)
    assert "55 of 100 shadow pairs" in explain(state, PLAN, inputs, state.last_t or 0.0)


def test_a_shadow_stage_waits_for_the_paired_tests_to_show_no_worse() -> None:
    state, actions = run(started(), 15, verdicts=PASSING, new_pairs=50, shadow_no_worse=False)
    assert (state.phase, state.stage) == (Phase.PROGRESSING, 0)
    (waiting,) = [a for a in actions if isinstance(a, Decision)]
    assert waiting.trigger == "hold_extended"
    assert "the paired tests do not show the canary no worse yet" in waiting.summary
    state, _ = run(state, 1, verdicts=PASSING, new_pairs=50, shadow_no_worse=True)
    assert (state.stage, state.weight) == (1, 5.0)


def test_a_shadow_stage_never_shown_no_worse_pauses_at_max_hold_for_lack_of_data() -> None:
    state, actions = run(started(), 61, verdicts=PASSING, new_pairs=50, shadow_no_worse=False)
    assert state.phase is Phase.PAUSED
    (alert,) = [a for a in actions if isinstance(a, Alert)]
    assert alert.kind is AlertKind.INSUFFICIENT_DATA
    assert alert.title == "rollout paused at 0% (shadow 20%) (stage 1 of 3)"
    assert shadow_share(state, PLAN) == 20.0  # paused, the pairs keep coming for the operator to see


def test_no_worse_alone_does_not_end_a_shadow_hold_early() -> None:
    plan = replace(PLAN, early_promotion=True)
    state, _ = run(started(plan), 5, plan, verdicts=PASSING, new_pairs=50, shadow_no_worse=True, no_worse=True)
    assert state.stage == 0


def test_a_fail_in_a_shadow_stage_rolls_back_with_no_user_served() -> None:
    state, _ = run(started(), 3, verdicts=PASSING, new_pairs=50)
    state, actions = run(state, 1, verdicts=(*PASSING, FAILING), new_pairs=50)
    assert (state.phase, state.weight, shadow_share(state, PLAN)) == (Phase.ROLLED_BACK, 0.0, 0.0)
    assert not [a for a in actions if isinstance(a, SetWeight)]  # never above 0
    (alert,) = [a for a in actions if isinstance(a, Alert)]
    assert alert.kind is AlertKind.ROLLBACK
    (record,) = [a for a in actions if isinstance(a, Decision)]
    assert record.trigger == "judge"
    assert record.summary.startswith("rolled back from 0% (shadow 20%): no user was served by the canary: "
                                     "judge:shadow_completion_tokens fail")


def test_two_shadow_stages_then_live_ones() -> None:
    plan = Plan((Stage(0, MINUTE, shadow=10), Stage(0, MINUTE, shadow=50), Stage(5, MINUTE)), min_requests=10)
    state = started(plan)
    state, actions = run(state, 1, plan, verdicts=PASSING, new_pairs=10, shadow_no_worse=True)
    assert (state.stage, state.weight, shadow_share(state, plan)) == (1, 0.0, 50.0)
    (alert,) = [a for a in actions if isinstance(a, Alert)]
    assert alert.title == "canary at 0% (shadow 50%) (stage 2 of 3)"
    state, _ = run(state, 1, plan, verdicts=PASSING, new_pairs=10, shadow_no_worse=True)
    assert (state.stage, state.weight, shadow_share(state, plan)) == (2, 5.0, 0.0)


def test_a_live_stage_ignores_the_pairs_and_the_paired_no_worse() -> None:
    plan = Plan((Stage(5, 10 * MINUTE), Stage(100, MINUTE)), min_requests=100)
    state, _ = run(started(plan), 11, plan, verdicts=PASSING, new_pairs=500, shadow_no_worse=True)
    assert state.stage == 0  # no canary requests: the pairs do not count here
    state, _ = run(state, 1, plan, verdicts=PASSING, new_canary_requests=100)
    assert state.stage == 1


def test_the_shadow_share_is_zero_outside_a_shadow_stage() -> None:
    state = started()
    assert shadow_share(RolloutState(), PLAN) == 0.0
    manual, _ = command(state, PLAN, "set_weight", T0 + 1, weight=1)
    assert shadow_share(manual, PLAN) == 0.0  # the operator took over
    resumed, _ = command(manual, PLAN, "resume", T0 + 2)
    assert (resumed.weight, shadow_share(resumed, PLAN)) == (0.0, 20.0)
    promoted, _ = command(state, PLAN, "promote", T0 + 1, to_end=True)
    assert shadow_share(promoted, PLAN) == 0.0


def test_new_pairs_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="step inputs: new_pairs must be >= 0, got -1"):
        StepInputs(new_pairs=-1)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ((Stage(5, 60, shadow=20), Stage(10, 60)),
         "plan: stage 1 is a shadow stage (shadow 20%): its weight must be 0, no user is served by the canary"),
        ((Stage(5, 60), Stage(0, 60, shadow=20), Stage(10, 60)),
         "plan: stage 2 is a shadow stage after a live stage: shadow stages come before every live stage"),
        ((Stage(0, 60, shadow=120), Stage(10, 60)), "plan: stage 1 shadow must be a percent of requests in (0, 100]"),
        ((Stage(0, 60, shadow=-5), Stage(10, 60)), "(0 or absent: a live stage), got -5"),
        ((Stage(0, 60, shadow=math.nan), Stage(10, 60)), "plan: stage 1 shadow must be a percent"),
        ((Stage(0, 60, shadow=20),), "plan: shadow stages must be followed by at least one live stage"),
        ((Stage(0, 60, shadow=20), Stage(0, 60)), "plan: stage 2 weight must be above 0% (the stage before)"),
        ((Stage(0, 7200, shadow=20), Stage(5, 60)), "plan: stage 1 hold 2h0m0s is longer than max_hold 1h0m0s"),
    ],
)
def test_a_bad_shadow_plan_is_rejected_with_a_precise_message(stages: tuple[Stage, ...], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        Plan(stages)
    assert message in str(raised.value)


def test_a_live_stage_after_shadow_ones_starts_from_zero() -> None:
    plan = Plan((Stage(0, 60, shadow=100), Stage(1, 60), Stage(100, 60)))
    assert [stage.is_shadow for stage in plan.stages] == [True, False, False]
