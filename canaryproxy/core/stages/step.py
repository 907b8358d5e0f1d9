"""The automatic side: one evaluation's verdicts -> the next state and the actions.

A shadow stage (Stage.shadow > 0) runs at weight 0: no user is served by the canary. It counts
pairs (`StepInputs.new_pairs`) toward `min_requests` instead of canary requests, and advances
only when, besides the hold and the data, the paired tests show the canary no worse
(`StepInputs.shadow_no_worse`); until then it waits like a stage without data, up to `max_hold`.
A FAIL rolls back as anywhere else: with zero user requests served by the canary. Early promotion
does not apply to a shadow stage: "no worse" is what it needs at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from canaryproxy.core.stages.actions import Action, Alert, AlertKind
from canaryproxy.core.stages.model import (
    Phase,
    Plan,
    RolloutState,
    StableBreachPolicy,
    StepInputs,
)
from canaryproxy.core.stages.transitions import (
    advance,
    at_text,
    decision,
    elapsed_at,
    stage_label,
    stage_of,
    stopped,
    transition,
    verdicts_text,
)
from canaryproxy.core.types import Status, Verdict
from canaryproxy.core.units import format_duration


@dataclass(frozen=True, slots=True)
class _Assessment:
    """What one step sees in a progressing stage, before deciding anything."""

    elapsed: float
    requests: int
    requests_missing: int  # below the plan's min_requests
    failures: tuple[Verdict, ...]  # the canary's own: roll back
    environment: tuple[Verdict, ...]  # fire on stable too, and the plan says pause
    blockers: tuple[Verdict, ...]  # PENDING or INCONCLUSIVE: not yet a reason to advance
    hold_left: float
    may_end_early: bool  # the judge shows no worse and the plan allows early promotion
    shadow: bool  # a shadow stage: `requests` are pairs
    unproven: bool  # a shadow stage whose paired tests do not show the canary no worse yet

    @property
    def lacks_data(self) -> bool:
        return (self.requests_missing > 0 or self.unproven
                or any(v.status is Status.INCONCLUSIVE for v in self.blockers))

    @property
    def blocked(self) -> bool:
        return self.requests_missing > 0 or self.unproven or bool(self.blockers)

    @property
    def counted(self) -> str:
        return "shadow pairs" if self.shadow else "canary requests"

    def waits(self, plan: Plan) -> list[str]:
        """What data the stage still waits for."""
        waits = []
        if self.requests_missing:
            waits.append(f"{self.requests} of {plan.min_requests} {self.counted}")
        if self.unproven:
            waits.append("the paired tests do not show the canary no worse yet")
        return waits


def step(
    state: RolloutState, plan: Plan, inputs: StepInputs, t: float
) -> tuple[RolloutState, list[Action]]:
    """One automatic evaluation. Only a progressing rollout moves; anything else is left alone.

    Raises ValueError when `t` is before the state's last step, or when a loaded state has no time
    base yet (call `rebase` first): a silently wrong hold is worse than a loud error.
    """
    if state.phase is not Phase.PROGRESSING:
        return state, []
    seen = _assess(state, plan, inputs, t)
    counted = replace(state, stage_elapsed=seen.elapsed, stage_requests=seen.requests, last_t=t)

    if seen.failures:
        return _roll_back(state, plan, counted, t, seen.failures)
    if seen.environment:
        return _pause_for_environment(state, plan, counted, t, seen.environment)
    if not seen.blocked and (seen.hold_left == 0 or seen.may_end_early):
        trigger = "hold_passed" if seen.hold_left == 0 else "judge"
        summary = (
            f"stage {stage_label(state, plan)} held {format_duration(seen.elapsed)} with "
            f"{seen.requests} {seen.counted} and every verdict passing"
            + ("; the paired tests show the canary no worse" if seen.shadow else "")
            + ("" if trigger == "hold_passed" else "; the judge shows the canary no worse")
        )
        return advance(state, plan, counted, t, trigger, summary, inputs.verdicts)
    if seen.hold_left > 0:
        return counted, []
    if seen.elapsed - state.max_hold_base >= plan.max_hold:
        return _pause_at_max_hold(state, plan, counted, t, seen)
    if state.waiting_reported:
        return counted, []
    waiting = replace(counted, waiting_reported=True)
    summary = f"hold passed, still waiting: {_holding_text(state, plan, seen)}"
    return waiting, [decision(state, waiting, t, "hold_extended", summary, seen.blockers)]


def explain(state: RolloutState, plan: Plan, inputs: StepInputs, t: float) -> str:
    """Why the rollout is where it is, for the dashboard: what a stage is still waiting for."""
    if state.phase is Phase.IDLE:
        return "idle: no rollout started"
    if state.phase is Phase.PROMOTED:
        return "promoted: the canary takes all traffic"
    if state.phase is Phase.ROLLED_BACK:
        return "rolled back: the canary takes no traffic"
    if state.phase is Phase.PAUSED:
        return f"paused at stage {stage_label(state, plan)}, {at_text(state, plan)}: {state.pause_reason}"
    seen = _assess(state, plan, inputs, t)
    label = f"stage {stage_label(state, plan)} at {at_text(state, plan)}"
    if seen.failures:
        return f"{label}: rolling back: {verdicts_text(seen.failures)}"
    if seen.environment:
        return f"{label}: pausing, the same rule fires on stable: {verdicts_text(seen.environment)}"
    return f"{label}: {_holding_text(state, plan, seen)}"


def _assess(state: RolloutState, plan: Plan, inputs: StepInputs, t: float) -> _Assessment:
    stage = stage_of(state, plan)
    elapsed = elapsed_at(state, t)
    policy = plan.on_stable_breach
    failures: list[Verdict] = []
    environment: list[Verdict] = []
    blockers: list[Verdict] = []
    for verdict in inputs.verdicts:
        on_both = verdict.also_on_stable and policy is not StableBreachPolicy.ROLLBACK
        if on_both and policy is StableBreachPolicy.IGNORE:
            continue
        if verdict.status is Status.FAIL:
            (environment if on_both else failures).append(verdict)
        elif verdict.status is not Status.PASS:
            blockers.append(verdict)
    shadow = stage.is_shadow
    requests = state.stage_requests + (inputs.new_pairs if shadow else inputs.new_canary_requests)
    return _Assessment(
        elapsed=elapsed,
        requests=requests,
        requests_missing=max(0, plan.min_requests - requests),
        failures=tuple(failures),
        environment=tuple(environment),
        blockers=tuple(blockers),
        hold_left=max(0.0, stage.hold - elapsed),
        may_end_early=not shadow and plan.early_promotion and inputs.no_worse,
        shadow=shadow,
        unproven=shadow and not inputs.shadow_no_worse,
    )


def _holding_text(state: RolloutState, plan: Plan, seen: _Assessment) -> str:
    """What keeps a progressing stage from advancing, e.g. for "why is it not advancing?"."""
    waits = []
    if seen.hold_left > 0:
        waits.append(f"hold {format_duration(seen.hold_left)} left")
    waits += seen.waits(plan)
    if seen.blockers:
        waits.append(f"waiting on {verdicts_text(seen.blockers)}")
    if not waits:
        return "ready to advance"
    if seen.hold_left == 0:
        deadline = state.max_hold_base + plan.max_hold - seen.elapsed
        waits.append(f"pauses in {format_duration(max(0.0, deadline))} if still blocked")
    return "; ".join(waits)


def _roll_back(
    before: RolloutState, plan: Plan, current: RolloutState, t: float, failures: Sequence[Verdict]
) -> tuple[RolloutState, list[Action]]:
    trigger = "judge" if all(v.source.startswith("judge:") for v in failures) else "rule"
    names = ", ".join(v.source for v in failures)
    where = at_text(before, plan) + (": no user was served by the canary" if plan.is_shadow(before) else "")
    summary = f"rolled back from {where}: {verdicts_text(failures)}"
    alert = Alert(
        AlertKind.ROLLBACK,
        f"canary rolled back: {names}",
        summary,
        {"verdicts": {v.source: dict(v.details) for v in failures}},
    )
    after = stopped(current, Phase.ROLLED_BACK, 0.0, stage=current.stage)
    return transition(before, after, t, trigger, summary, failures, alert)


def _pause_for_environment(
    before: RolloutState, plan: Plan, current: RolloutState, t: float, environment: Sequence[Verdict]
) -> tuple[RolloutState, list[Action]]:
    trigger = "judge" if all(v.source.startswith("judge:") for v in environment) else "rule"
    reason = f"environment problem: the same rule fires on stable: {verdicts_text(environment)}"
    names = ", ".join(v.source for v in environment)
    alert = Alert(
        AlertKind.PAUSE,
        f"rollout paused at {at_text(before, plan)}: {names} fires on stable too",
        reason,
        {"verdicts": {v.source: dict(v.details) for v in environment}},
    )
    after = replace(current, phase=Phase.PAUSED, pause_reason=reason)
    return transition(before, after, t, trigger, reason, environment, alert)


def _pause_at_max_hold(
    before: RolloutState, plan: Plan, current: RolloutState, t: float, seen: _Assessment
) -> tuple[RolloutState, list[Action]]:
    waited = format_duration(plan.max_hold)
    waits = seen.waits(plan)
    if seen.blockers:
        waits.append(verdicts_text(seen.blockers))
    if seen.lacks_data:
        kind, reason = AlertKind.INSUFFICIENT_DATA, f"insufficient data for {waited}: {'; '.join(waits)}"
    else:
        kind, reason = AlertKind.PAUSE, f"verdicts still pending after {waited}: {'; '.join(waits)}"
    title = f"rollout paused at {at_text(before, plan)} (stage {stage_label(before, plan)})"
    alert = Alert(kind, title, reason)
    after = replace(current, phase=Phase.PAUSED, pause_reason=reason)
    return transition(before, after, t, "max_hold", reason, seen.blockers, alert)
