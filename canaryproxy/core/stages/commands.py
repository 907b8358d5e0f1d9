"""The operator's side: a command in the current phase -> the next state and the actions."""

from __future__ import annotations

import enum
from dataclasses import replace

from canaryproxy.core.stages.actions import Action, Alert, AlertKind
from canaryproxy.core.stages.model import Phase, Plan, RolloutState, is_number, percent
from canaryproxy.core.stages.transitions import (
    advance,
    elapsed_at,
    entering,
    stage_label,
    stopped,
    transition,
)
from canaryproxy.core.units import format_duration
from canaryproxy.errors import CommandRejected


class Op(enum.StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    SET_WEIGHT = "set_weight"


_ALLOWED_IN: dict[Op, tuple[Phase, ...]] = {
    Op.START: (Phase.IDLE, Phase.ROLLED_BACK, Phase.PROMOTED),
    Op.PAUSE: (Phase.PROGRESSING,),
    Op.RESUME: (Phase.PAUSED,),
    Op.PROMOTE: (Phase.PROGRESSING, Phase.PAUSED),
    Op.ROLLBACK: (Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTED),
    Op.SET_WEIGHT: (Phase.PROGRESSING, Phase.PAUSED),
}


def command(
    state: RolloutState,
    plan: Plan,
    op: Op | str,
    t: float,
    *,
    reason: str = "",
    weight: float | None = None,
    to_end: bool = False,
) -> tuple[RolloutState, list[Action]]:
    """An operator's command. `reason` is recorded with any command; `weight` is for set_weight
    only, `to_end` for promote only. Raises CommandRejected, changing nothing, when `op` does not
    apply in the current phase; ValueError on malformed arguments."""
    op = _parse_op(op)
    if weight is not None and op is not Op.SET_WEIGHT:
        raise ValueError(f"{op}: weight= applies only to set_weight")
    if to_end and op is not Op.PROMOTE:
        raise ValueError(f"{op}: to_end= applies only to promote")
    if op is Op.SET_WEIGHT and (weight is None or not is_number(weight) or not 0 <= weight <= 100):
        raise ValueError(f"set_weight: weight must be a number within 0-100 percent, got {weight!r}")
    allowed = _ALLOWED_IN[op]
    if state.phase not in allowed:
        raise CommandRejected(
            f"cannot {op}: the rollout is {state.phase}; {op} applies only when "
            f"{' or '.join(p.value for p in allowed)}"
        )
    if state.phase is Phase.PROGRESSING:
        current = replace(state, stage_elapsed=elapsed_at(state, t), last_t=t)
    else:
        current = replace(state, last_t=t)
    trigger = f"command:{op}"
    note = f" ({reason})" if reason else ""

    if op is Op.START:
        after = entering(current, plan, 0, t)
        summary = (
            f"rollout started at {percent(after.weight)} "
            f"(stage {stage_label(after, plan)}){note}"
        )
        alert = Alert(AlertKind.START, f"canary rollout started at {percent(after.weight)}", summary)
    elif op is Op.PAUSE:
        after = replace(current, phase=Phase.PAUSED, pause_reason=reason or "paused by operator")
        summary = f"paused by operator at {percent(current.weight)}{note}"
        alert = Alert(AlertKind.PAUSE, f"rollout paused by operator at {percent(current.weight)}", summary)
    elif op is Op.RESUME:
        after = replace(
            entering(current, plan, current.stage, t),
            stage_elapsed=current.stage_elapsed,
            stage_requests=current.stage_requests,
            max_hold_base=current.stage_elapsed,
        )
        summary = (
            f"resumed by operator at stage {stage_label(after, plan)} ({percent(after.weight)}), "
            f"{format_duration(current.stage_elapsed)} of its hold done{note}"
        )
        alert = Alert(AlertKind.RESUME, f"rollout resumed at {percent(after.weight)}", summary)
    elif op is Op.PROMOTE and not to_end:
        summary = f"promoted one stage by operator from stage {stage_label(current, plan)}{note}"
        return advance(state, plan, current, t, trigger, summary, ())
    elif op is Op.PROMOTE:
        after = stopped(current, Phase.PROMOTED, 100.0, stage=len(plan.stages) - 1)
        summary = f"promoted to 100% by operator from {percent(current.weight)}{note}"
        alert = Alert(AlertKind.PROMOTION, "canary promoted to 100% by operator", summary)
    elif op is Op.ROLLBACK:
        after = stopped(current, Phase.ROLLED_BACK, 0.0, stage=current.stage)
        summary = f"rolled back by operator from {percent(current.weight)}{note}"
        alert = Alert(AlertKind.ROLLBACK, "canary rolled back by operator", summary)
    else:
        assert weight is not None  # checked above
        manual_reason = reason or f"weight set by hand to {percent(weight)}"
        after = replace(
            current, phase=Phase.PAUSED, weight=float(weight), manual=True, pause_reason=manual_reason
        )
        summary = f"weight set by operator from {percent(current.weight)} to {percent(weight)}{note}"
        alert = Alert(AlertKind.PAUSE, f"canary weight set by hand to {percent(weight)}", summary)
    return transition(state, after, t, trigger, summary, (), alert)


def _parse_op(op: Op | str) -> Op:
    try:
        return Op(op)
    except ValueError:
        known = ", ".join(o.value for o in Op)
        raise ValueError(f"unknown command {op!r}; known commands: {known}") from None
