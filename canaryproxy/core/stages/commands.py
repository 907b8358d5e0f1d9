"""The operator's side: a command in the current phase -> the next state and the actions."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from canaryproxy.core.stages.actions import Action, Alert, AlertKind
from canaryproxy.core.stages.model import Phase, Plan, RolloutState, is_number, percent
from canaryproxy.core.stages.transitions import (
    advance,
    at_text,
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
    _check_arguments(op, weight, to_end)
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
    asked = _Asked(reason, weight)
    if op is Op.PROMOTE and not to_end:
        summary = f"promoted one stage by operator from stage {stage_label(current, plan)}{asked.note}"
        return advance(state, plan, current, t, trigger, summary, ())
    after, summary, alert = _OUTCOMES[op](current, plan, t, asked)
    return transition(state, after, t, trigger, summary, (), alert)


def _check_arguments(op: Op, weight: float | None, to_end: bool) -> None:
    if weight is not None and op is not Op.SET_WEIGHT:
        raise ValueError(f"{op}: weight= applies only to set_weight")
    if to_end and op is not Op.PROMOTE:
        raise ValueError(f"{op}: to_end= applies only to promote")
    if op is Op.SET_WEIGHT and (weight is None or not is_number(weight) or not 0 <= weight <= 100):
        raise ValueError(f"set_weight: weight must be a number within 0-100 percent, got {weight!r}")


@dataclass(frozen=True, slots=True)
class _Asked:
    """What the operator gave with the command."""

    reason: str
    weight: float | None

    @property
    def note(self) -> str:
        return f" ({self.reason})" if self.reason else ""


# Each command's outcome: the next state, the decision's summary and the alert.
_Outcome = tuple[RolloutState, str, Alert]


def _start(current: RolloutState, plan: Plan, t: float, asked: _Asked) -> _Outcome:
    after = entering(current, plan, 0, t)
    summary = f"rollout started at {at_text(after, plan)} (stage {stage_label(after, plan)}){asked.note}"
    return after, summary, Alert(AlertKind.START, f"canary rollout started at {at_text(after, plan)}", summary)


def _pause(current: RolloutState, plan: Plan, t: float, asked: _Asked) -> _Outcome:
    after = replace(current, phase=Phase.PAUSED, pause_reason=asked.reason or "paused by operator")
    summary = f"paused by operator at {percent(current.weight)}{asked.note}"
    return after, summary, Alert(AlertKind.PAUSE, f"rollout paused by operator at {percent(current.weight)}",
                                 summary)


def _resume(current: RolloutState, plan: Plan, t: float, asked: _Asked) -> _Outcome:
    after = replace(
        entering(current, plan, current.stage, t),
        stage_elapsed=current.stage_elapsed,
        stage_requests=current.stage_requests,
        max_hold_base=current.stage_elapsed,
    )
    summary = (
        f"resumed by operator at stage {stage_label(after, plan)} ({percent(after.weight)}), "
        f"{format_duration(current.stage_elapsed)} of its hold done{asked.note}"
    )
    return after, summary, Alert(AlertKind.RESUME, f"rollout resumed at {percent(after.weight)}", summary)


def _promote_to_end(current: RolloutState, plan: Plan, t: float, asked: _Asked) -> _Outcome:
    after = stopped(current, Phase.PROMOTED, 100.0, stage=len(plan.stages) - 1)
    summary = f"promoted to 100% by operator from {percent(current.weight)}{asked.note}"
    return after, summary, Alert(AlertKind.PROMOTION, "canary promoted to 100% by operator", summary)


def _rollback(current: RolloutState, plan: Plan, t: float, asked: _Asked) -> _Outcome:
    after = stopped(current, Phase.ROLLED_BACK, 0.0, stage=current.stage)
    summary = f"rolled back by operator from {percent(current.weight)}{asked.note}"
    return after, summary, Alert(AlertKind.ROLLBACK, "canary rolled back by operator", summary)


def _set_weight(current: RolloutState, plan: Plan, t: float, asked: _Asked) -> _Outcome:
    weight = asked.weight
    assert weight is not None  # checked by _check_arguments
    manual_reason = asked.reason or f"weight set by hand to {percent(weight)}"
    after = replace(current, phase=Phase.PAUSED, weight=float(weight), manual=True, pause_reason=manual_reason)
    summary = f"weight set by operator from {percent(current.weight)} to {percent(weight)}{asked.note}"
    return after, summary, Alert(AlertKind.PAUSE, f"canary weight set by hand to {percent(weight)}", summary)


_OUTCOMES: dict[Op, Callable[[RolloutState, Plan, float, _Asked], _Outcome]] = {
    Op.START: _start,
    Op.PAUSE: _pause,
    Op.RESUME: _resume,
    Op.PROMOTE: _promote_to_end,  # one stage at a time is `advance`, the automatic side's step
    Op.ROLLBACK: _rollback,
    Op.SET_WEIGHT: _set_weight,
}


def _parse_op(op: Op | str) -> Op:
    try:
        return Op(op)
    except ValueError:
        known = ", ".join(o.value for o in Op)
        raise ValueError(f"unknown command {op!r}; known commands: {known}") from None
