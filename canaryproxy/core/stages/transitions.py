"""Building blocks shared by `step` and `command`: entering a stage, stopping, the Decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from canaryproxy.core.stages.actions import (
    Action,
    Alert,
    AlertKind,
    Decision,
    SetWeight,
)
from canaryproxy.core.stages.model import Phase, Plan, RolloutState, Stage, percent
from canaryproxy.core.types import Verdict


def stage_of(state: RolloutState, plan: Plan) -> Stage:
    if state.stage >= len(plan.stages):
        raise ValueError(
            f"rollout state is at stage {state.stage + 1} but the plan has {len(plan.stages)} stages"
        )
    return plan.stages[state.stage]


def elapsed_at(state: RolloutState, t: float) -> float:
    """Stage time including the stretch since the last step."""
    if state.last_t is None:
        raise ValueError("rollout state has no time base (was it just loaded?): call rebase(state, t) first")
    if t < state.last_t:
        raise ValueError(
            f"time went backwards: t={t} is before the state's last_t={state.last_t}; "
            "after a restart call rebase(state, t)"
        )
    return state.stage_elapsed + (t - state.last_t)


def entering(state: RolloutState, plan: Plan, index: int, t: float) -> RolloutState:
    """A fresh, progressing stage `index`."""
    return replace(
        state,
        phase=Phase.PROGRESSING,
        stage=index,
        weight=plan.stages[index].weight,
        stage_elapsed=0.0,
        stage_requests=0,
        max_hold_base=0.0,
        waiting_reported=False,
        manual=False,
        pause_reason="",
        last_t=t,
    )


def stopped(state: RolloutState, phase: Phase, weight: float, *, stage: int) -> RolloutState:
    """A finished rollout (promoted or rolled back): only the weight and the last stage remain."""
    return replace(
        state,
        phase=phase,
        stage=stage,
        weight=weight,
        stage_elapsed=0.0,
        stage_requests=0,
        max_hold_base=0.0,
        waiting_reported=False,
        manual=False,
        pause_reason="",
    )


def transition(
    before: RolloutState,
    after: RolloutState,
    t: float,
    trigger: str,
    summary: str,
    verdicts: Sequence[Verdict],
    alert: Alert,
) -> tuple[RolloutState, list[Action]]:
    """Bump the generation and emit the actions, weight first so a rollback takes effect at once."""
    after = replace(after, generation=before.generation + 1)
    actions: list[Action] = []
    if after.weight != before.weight:
        actions.append(SetWeight(after.weight))
    actions.append(alert)
    actions.append(decision(before, after, t, trigger, summary, verdicts))
    return after, actions


def decision(
    before: RolloutState,
    after: RolloutState,
    t: float,
    trigger: str,
    summary: str,
    verdicts: Sequence[Verdict],
) -> Decision:
    return Decision(
        t=t,
        trigger=trigger,
        summary=summary,
        phase_before=before.phase,
        stage_before=before.stage,
        weight_before=before.weight,
        phase_after=after.phase,
        stage_after=after.stage,
        weight_after=after.weight,
        generation=after.generation,
        verdicts=tuple(verdicts),
    )


def verdicts_text(verdicts: Sequence[Verdict]) -> str:
    return "; ".join(f"{v.source} {v.status}: {v.reason}" for v in verdicts)


def stage_label(state: RolloutState, plan: Plan) -> str:
    return f"{state.stage + 1} of {len(plan.stages)}"


def at_text(state: RolloutState, plan: Plan) -> str:
    """Where the canary is, for people: "5%", or "0% (shadow 20%)" in a shadow stage."""
    if plan.is_shadow(state) and state.phase in (Phase.PROGRESSING, Phase.PAUSED):
        return f"{percent(state.weight)} (shadow {percent(plan.stages[state.stage].shadow)})"
    return percent(state.weight)


def advance(
    before: RolloutState,
    plan: Plan,
    current: RolloutState,
    t: float,
    trigger: str,
    summary: str,
    verdicts: Sequence[Verdict],
) -> tuple[RolloutState, list[Action]]:
    """One stage up, or promoted after the last one."""
    following = current.stage + 1
    if following == len(plan.stages):
        after = stopped(current, Phase.PROMOTED, 100.0, stage=current.stage)
        alert = Alert(AlertKind.PROMOTION, "canary promoted to 100%", summary)
    else:
        after = entering(current, plan, following, t)
        alert = Alert(
            AlertKind.STAGE_CHANGE,
            f"canary at {at_text(after, plan)} (stage {stage_label(after, plan)})",
            summary,
        )
    return transition(before, after, t, trigger, summary, verdicts, alert)
