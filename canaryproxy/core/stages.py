"""The rollout state machine: which weight the canary gets, and when that changes.

Sans-io: `step` (automatic, once per evaluation) and `command` (an operator) take a state and return
the next state plus the `Action`s the controller carries out (set the weight, alert, record the
decision). Nothing here reads a clock: `t` is monotonic seconds, passed in.

    idle ─start─► progressing(stage i) ─hold passed, enough data, every verdict PASS─► stage i+1
                      │  │                                  (after the last stage) ─► promoted
                      │  └─any FAIL─► rolled_back (weight 0)
                      └─FAIL on stable too / max_hold without data / pause / set_weight─► paused

The automatic side advances one stage at a time and can roll back, but never promotes without data:
a stage advances only when its hold has passed, it has seen `min_requests` canary requests, and no
verdict is FAIL, PENDING or INCONCLUSIVE. Missing data extends the hold up to `max_hold`, then the
rollout pauses and alerts.

Time spent in a stage is accumulated step by step in `stage_elapsed`, which the durable state
keeps; `last_t` is this process's monotonic time of the last step and is not persisted. After
loading a state (a restart, another replica) the controller calls `rebase(state, t)`: the hold
then continues where it stopped, and the downtime, when nobody watched the canary, does not count.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from canaryproxy.core.types import Status, Verdict
from canaryproxy.core.units import format_duration
from canaryproxy.errors import CommandRejected


class Phase(enum.StrEnum):
    IDLE = "idle"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class StableBreachPolicy(enum.StrEnum):
    """What a rule that fires on the canary *and* on stable means."""

    PAUSE = "pause"  # an environment problem: stop and ask a human
    ROLLBACK = "rollback"  # the canary is to blame anyway
    IGNORE = "ignore"  # not the canary's doing: neither fires nor blocks


@dataclass(frozen=True, slots=True)
class Stage:
    weight: float  # canary percent
    hold: float  # seconds the stage lasts at least


@dataclass(frozen=True, slots=True)
class Plan:
    stages: tuple[Stage, ...]
    min_requests: int = 100  # canary requests a stage must see before it may advance
    max_hold: float = 3600.0  # seconds from stage start after which missing data pauses the rollout
    on_stable_breach: StableBreachPolicy = StableBreachPolicy.PAUSE
    early_promotion: bool = False  # the judge's `no_worse` may end a hold before its time

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        try:
            object.__setattr__(self, "on_stable_breach", StableBreachPolicy(self.on_stable_breach))
        except ValueError:
            known = ", ".join(p.value for p in StableBreachPolicy)
            raise ValueError(
                f"plan: on_stable_breach must be one of {known}, got {self.on_stable_breach!r}"
            ) from None
        if not self.stages:
            raise ValueError("plan: at least one stage is needed")
        if not _is_count(self.min_requests) or self.min_requests < 1:
            raise ValueError(f"plan: min_requests must be an integer >= 1, got {self.min_requests!r}")
        if not _is_number(self.max_hold) or self.max_hold < 0:
            raise ValueError(f"plan: max_hold must be a finite number of seconds >= 0, got {self.max_hold!r}")
        previous = 0.0
        for number, stage in enumerate(self.stages, 1):
            if not _is_number(stage.weight) or not previous < stage.weight <= 100:
                raise ValueError(
                    f"plan: stage {number} weight must be above {_percent(previous)} (the stage before) "
                    f"and at most 100%, got {stage.weight!r}"
                )
            if not _is_number(stage.hold) or stage.hold < 0:
                raise ValueError(
                    f"plan: stage {number} hold must be a finite number of seconds >= 0, got {stage.hold!r}"
                )
            if stage.hold > self.max_hold:
                raise ValueError(
                    f"plan: stage {number} hold {format_duration(stage.hold)} is longer than "
                    f"max_hold {format_duration(self.max_hold)}"
                )
            previous = stage.weight


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Where the rollout is. Immutable: `step` and `command` return a new one."""

    phase: Phase = Phase.IDLE
    stage: int = 0  # index into Plan.stages
    weight: float = 0.0  # canary percent in force
    stage_elapsed: float = 0.0  # seconds spent progressing in this stage (not paused, not down)
    stage_requests: int = 0  # canary requests finished while progressing in this stage
    # `stage_elapsed` at which max_hold starts counting: 0 at stage start; `resume` moves it to the
    # current elapsed so a resumed stage gets a fresh max_hold instead of pausing again at once.
    max_hold_base: float = 0.0
    waiting_reported: bool = False  # hold passed but blocked, and the Decision saying why was emitted
    manual: bool = False  # weight set by hand; the automatic side waits for `resume`
    pause_reason: str = ""  # non-empty exactly when paused
    generation: int = 0  # +1 on every transition and every accepted command
    last_t: float | None = None  # monotonic time of the last step or command; not persisted

    def __post_init__(self) -> None:
        if not isinstance(self.phase, Phase):
            raise ValueError(f"rollout state: phase must be a Phase, got {self.phase!r}")
        for name in ("stage", "stage_requests", "generation"):
            value = getattr(self, name)
            if not _is_count(value) or value < 0:
                raise ValueError(f"rollout state: {name} must be an integer >= 0, got {value!r}")
        for name in ("weight", "stage_elapsed", "max_hold_base"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"rollout state: {name} must be a finite number >= 0, got {value!r}")
        if self.weight > 100:
            raise ValueError(f"rollout state: weight must be at most 100, got {self.weight!r}")
        if self.max_hold_base > self.stage_elapsed:
            raise ValueError(
                f"rollout state: max_hold_base {self.max_hold_base} exceeds "
                f"stage_elapsed {self.stage_elapsed}"
            )
        if (self.phase is Phase.PAUSED) != bool(self.pause_reason):
            raise ValueError(
                f"rollout state: pause_reason must be set exactly when paused (phase {self.phase})"
            )
        if self.manual and self.phase is not Phase.PAUSED:
            raise ValueError(f"rollout state: manual weight outside the paused phase (phase {self.phase})")
        expected_weight = _FIXED_WEIGHTS.get(self.phase)
        if expected_weight is not None and self.weight != expected_weight:
            raise ValueError(
                f"rollout state: weight must be {expected_weight} when {self.phase}, got {self.weight}"
            )
        if self.last_t is not None and not _is_number(self.last_t):
            raise ValueError(f"rollout state: last_t must be a finite number or None, got {self.last_t!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, without `last_t` (monotonic time means nothing to another process)."""
        return {
            "phase": self.phase.value,
            "stage": self.stage,
            "weight": self.weight,
            "stage_elapsed": self.stage_elapsed,
            "stage_requests": self.stage_requests,
            "max_hold_base": self.max_hold_base,
            "waiting_reported": self.waiting_reported,
            "manual": self.manual,
            "pause_reason": self.pause_reason,
            "generation": self.generation,
        }

    @classmethod
    def from_dict(cls, data: object) -> RolloutState:
        """The state `to_dict` wrote. Anything missing, extra, mistyped or inconsistent is a ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"rollout state: expected a mapping, got {type(data).__name__}")
        missing = sorted(_FIELD_TYPES.keys() - data.keys())
        unknown = sorted(map(str, data.keys() - _FIELD_TYPES.keys()))
        if missing or unknown:
            raise ValueError(f"rollout state: missing fields {missing}, unknown fields {unknown}")
        for name, kind in _FIELD_TYPES.items():
            value = data[name]
            # bool is an int subclass: a `true` where a count belongs is corruption, not 1.
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ValueError(f"rollout state: {name} has the wrong type: {value!r}")
        try:
            phase = Phase(data["phase"])
        except ValueError:
            raise ValueError(f"rollout state: unknown phase {data['phase']!r}") from None
        return cls(
            phase=phase,
            stage=data["stage"],
            weight=float(data["weight"]),
            stage_elapsed=float(data["stage_elapsed"]),
            stage_requests=data["stage_requests"],
            max_hold_base=float(data["max_hold_base"]),
            waiting_reported=data["waiting_reported"],
            manual=data["manual"],
            pause_reason=data["pause_reason"],
            generation=data["generation"],
        )


_FIXED_WEIGHTS = {Phase.IDLE: 0.0, Phase.ROLLED_BACK: 0.0, Phase.PROMOTED: 100.0}
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "phase": str,
    "stage": int,
    "weight": (int, float),
    "stage_elapsed": (int, float),
    "stage_requests": int,
    "max_hold_base": (int, float),
    "waiting_reported": bool,
    "manual": bool,
    "pause_reason": str,
    "generation": int,
}


def rebase(state: RolloutState, t: float) -> RolloutState:
    """Make `t` (this process's monotonic time) the time of the last step, e.g. after loading."""
    return replace(state, last_t=t)


@dataclass(frozen=True, slots=True)
class StepInputs:
    verdicts: Sequence[Verdict] = ()  # from the rules and from the statistical judge
    new_canary_requests: int = 0  # canary requests finished since the previous step
    no_worse: bool = False  # the judge shows the canary no worse than tolerance

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdicts", tuple(self.verdicts))
        if self.new_canary_requests < 0:
            raise ValueError(f"step inputs: new_canary_requests must be >= 0, got {self.new_canary_requests}")


# --- Actions the controller carries out ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetWeight:
    weight: float


class AlertKind(enum.StrEnum):
    ROLLBACK = "rollback"
    PAUSE = "pause"
    PROMOTION = "promotion"
    STAGE_CHANGE = "stage_change"
    INSUFFICIENT_DATA = "insufficient_data"
    RESUME = "resume"
    START = "start"


@dataclass(frozen=True, slots=True)
class Alert:
    kind: AlertKind
    title: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """Why the rollout did what it did: the record behind every transition and command."""

    t: float
    trigger: str  # "rule", "judge", "hold_passed", "hold_extended", "max_hold" or "command:<op>"
    summary: str
    phase_before: Phase
    stage_before: int
    weight_before: float
    phase_after: Phase
    stage_after: int
    weight_after: float
    generation: int  # of the state after
    verdicts: tuple[Verdict, ...] = ()


Action = SetWeight | Alert | Decision


# --- The automatic side -----------------------------------------------------------------------------


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

    @property
    def lacks_data(self) -> bool:
        return self.requests_missing > 0 or any(v.status is Status.INCONCLUSIVE for v in self.blockers)

    @property
    def blocked(self) -> bool:
        return self.requests_missing > 0 or bool(self.blockers)


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
        return _roll_back(state, counted, t, seen.failures)
    if seen.environment:
        return _pause_for_environment(state, counted, t, seen.environment)
    if not seen.blocked and (seen.hold_left == 0 or seen.may_end_early):
        trigger = "hold_passed" if seen.hold_left == 0 else "judge"
        summary = (
            f"stage {_stage_label(state, plan)} held {format_duration(seen.elapsed)} with "
            f"{seen.requests} canary requests and every verdict passing"
            + ("" if trigger == "hold_passed" else "; the judge shows the canary no worse")
        )
        return _advance(state, plan, counted, t, trigger, summary, inputs.verdicts)
    if seen.hold_left > 0:
        return counted, []
    if seen.elapsed - state.max_hold_base >= plan.max_hold:
        return _pause_at_max_hold(state, plan, counted, t, seen)
    if state.waiting_reported:
        return counted, []
    waiting = replace(counted, waiting_reported=True)
    summary = f"hold passed, still waiting: {_holding_text(state, plan, seen)}"
    return waiting, [_decision(state, waiting, t, "hold_extended", summary, seen.blockers)]


def explain(state: RolloutState, plan: Plan, inputs: StepInputs, t: float) -> str:
    """Why the rollout is where it is, for the dashboard: what a stage is still waiting for."""
    if state.phase is Phase.IDLE:
        return "idle: no rollout started"
    if state.phase is Phase.PROMOTED:
        return "promoted: the canary takes all traffic"
    if state.phase is Phase.ROLLED_BACK:
        return "rolled back: the canary takes no traffic"
    if state.phase is Phase.PAUSED:
        return f"paused at stage {_stage_label(state, plan)}, {_percent(state.weight)}: {state.pause_reason}"
    seen = _assess(state, plan, inputs, t)
    label = f"stage {_stage_label(state, plan)} at {_percent(state.weight)}"
    if seen.failures:
        return f"{label}: rolling back: {_verdicts_text(seen.failures)}"
    if seen.environment:
        return f"{label}: pausing, the same rule fires on stable: {_verdicts_text(seen.environment)}"
    return f"{label}: {_holding_text(state, plan, seen)}"


def _stage_of(state: RolloutState, plan: Plan) -> Stage:
    if state.stage >= len(plan.stages):
        raise ValueError(
            f"rollout state is at stage {state.stage + 1} but the plan has {len(plan.stages)} stages"
        )
    return plan.stages[state.stage]


def _elapsed_at(state: RolloutState, t: float) -> float:
    """Stage time including the stretch since the last step."""
    if state.last_t is None:
        raise ValueError("rollout state has no time base (was it just loaded?): call rebase(state, t) first")
    if t < state.last_t:
        raise ValueError(
            f"time went backwards: t={t} is before the state's last_t={state.last_t}; "
            "after a restart call rebase(state, t)"
        )
    return state.stage_elapsed + (t - state.last_t)


def _assess(state: RolloutState, plan: Plan, inputs: StepInputs, t: float) -> _Assessment:
    stage = _stage_of(state, plan)
    elapsed = _elapsed_at(state, t)
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
    requests = state.stage_requests + inputs.new_canary_requests
    return _Assessment(
        elapsed=elapsed,
        requests=requests,
        requests_missing=max(0, plan.min_requests - requests),
        failures=tuple(failures),
        environment=tuple(environment),
        blockers=tuple(blockers),
        hold_left=max(0.0, stage.hold - elapsed),
        may_end_early=plan.early_promotion and inputs.no_worse,
    )


def _holding_text(state: RolloutState, plan: Plan, seen: _Assessment) -> str:
    """What keeps a progressing stage from advancing, e.g. for "why is it not advancing?"."""
    waits = []
    if seen.hold_left > 0:
        waits.append(f"hold {format_duration(seen.hold_left)} left")
    if seen.requests_missing:
        waits.append(f"{seen.requests} of {plan.min_requests} canary requests")
    if seen.blockers:
        waits.append(f"waiting on {_verdicts_text(seen.blockers)}")
    if not waits:
        return "ready to advance"
    if seen.hold_left == 0:
        deadline = state.max_hold_base + plan.max_hold - seen.elapsed
        waits.append(f"pauses in {format_duration(max(0.0, deadline))} if still blocked")
    return "; ".join(waits)


def _advance(
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
        after = _stopped(current, Phase.PROMOTED, 100.0, stage=current.stage)
        alert = Alert(AlertKind.PROMOTION, "canary promoted to 100%", summary)
    else:
        after = _entering(current, plan, following, t)
        alert = Alert(
            AlertKind.STAGE_CHANGE,
            f"canary at {_percent(after.weight)} (stage {_stage_label(after, plan)})",
            summary,
        )
    return _transition(before, after, t, trigger, summary, verdicts, alert)


def _roll_back(
    before: RolloutState, current: RolloutState, t: float, failures: Sequence[Verdict]
) -> tuple[RolloutState, list[Action]]:
    trigger = "judge" if all(v.source.startswith("judge:") for v in failures) else "rule"
    names = ", ".join(v.source for v in failures)
    summary = f"rolled back from {_percent(before.weight)}: {_verdicts_text(failures)}"
    alert = Alert(
        AlertKind.ROLLBACK,
        f"canary rolled back: {names}",
        summary,
        {"verdicts": {v.source: dict(v.details) for v in failures}},
    )
    after = _stopped(current, Phase.ROLLED_BACK, 0.0, stage=current.stage)
    return _transition(before, after, t, trigger, summary, failures, alert)


def _pause_for_environment(
    before: RolloutState, current: RolloutState, t: float, environment: Sequence[Verdict]
) -> tuple[RolloutState, list[Action]]:
    trigger = "judge" if all(v.source.startswith("judge:") for v in environment) else "rule"
    reason = f"environment problem: the same rule fires on stable: {_verdicts_text(environment)}"
    names = ", ".join(v.source for v in environment)
    alert = Alert(
        AlertKind.PAUSE,
        f"rollout paused at {_percent(before.weight)}: {names} fires on stable too",
        reason,
        {"verdicts": {v.source: dict(v.details) for v in environment}},
    )
    after = replace(current, phase=Phase.PAUSED, pause_reason=reason)
    return _transition(before, after, t, trigger, reason, environment, alert)


def _pause_at_max_hold(
    before: RolloutState, plan: Plan, current: RolloutState, t: float, seen: _Assessment
) -> tuple[RolloutState, list[Action]]:
    waited = format_duration(plan.max_hold)
    waits = []
    if seen.requests_missing:
        waits.append(f"{seen.requests} of {plan.min_requests} canary requests")
    if seen.blockers:
        waits.append(_verdicts_text(seen.blockers))
    if seen.lacks_data:
        kind, reason = AlertKind.INSUFFICIENT_DATA, f"insufficient data for {waited}: {'; '.join(waits)}"
    else:
        kind, reason = AlertKind.PAUSE, f"verdicts still pending after {waited}: {'; '.join(waits)}"
    title = f"rollout paused at {_percent(before.weight)} (stage {_stage_label(before, plan)})"
    alert = Alert(kind, title, reason)
    after = replace(current, phase=Phase.PAUSED, pause_reason=reason)
    return _transition(before, after, t, "max_hold", reason, seen.blockers, alert)


# --- Operator commands ------------------------------------------------------------------------------


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
    if op is Op.SET_WEIGHT and (weight is None or not _is_number(weight) or not 0 <= weight <= 100):
        raise ValueError(f"set_weight: weight must be a number within 0-100 percent, got {weight!r}")
    allowed = _ALLOWED_IN[op]
    if state.phase not in allowed:
        raise CommandRejected(
            f"cannot {op}: the rollout is {state.phase}; {op} applies only when "
            f"{' or '.join(p.value for p in allowed)}"
        )
    if state.phase is Phase.PROGRESSING:
        current = replace(state, stage_elapsed=_elapsed_at(state, t), last_t=t)
    else:
        current = replace(state, last_t=t)
    trigger = f"command:{op}"
    note = f" ({reason})" if reason else ""

    if op is Op.START:
        after = _entering(current, plan, 0, t)
        summary = (
            f"rollout started at {_percent(after.weight)} "
            f"(stage {_stage_label(after, plan)}){note}"
        )
        alert = Alert(AlertKind.START, f"canary rollout started at {_percent(after.weight)}", summary)
    elif op is Op.PAUSE:
        after = replace(current, phase=Phase.PAUSED, pause_reason=reason or "paused by operator")
        summary = f"paused by operator at {_percent(current.weight)}{note}"
        alert = Alert(AlertKind.PAUSE, f"rollout paused by operator at {_percent(current.weight)}", summary)
    elif op is Op.RESUME:
        after = replace(
            _entering(current, plan, current.stage, t),
            stage_elapsed=current.stage_elapsed,
            stage_requests=current.stage_requests,
            max_hold_base=current.stage_elapsed,
        )
        summary = (
            f"resumed by operator at stage {_stage_label(after, plan)} ({_percent(after.weight)}), "
            f"{format_duration(current.stage_elapsed)} of its hold done{note}"
        )
        alert = Alert(AlertKind.RESUME, f"rollout resumed at {_percent(after.weight)}", summary)
    elif op is Op.PROMOTE and not to_end:
        summary = f"promoted one stage by operator from stage {_stage_label(current, plan)}{note}"
        return _advance(state, plan, current, t, trigger, summary, ())
    elif op is Op.PROMOTE:
        after = _stopped(current, Phase.PROMOTED, 100.0, stage=len(plan.stages) - 1)
        summary = f"promoted to 100% by operator from {_percent(current.weight)}{note}"
        alert = Alert(AlertKind.PROMOTION, "canary promoted to 100% by operator", summary)
    elif op is Op.ROLLBACK:
        after = _stopped(current, Phase.ROLLED_BACK, 0.0, stage=current.stage)
        summary = f"rolled back by operator from {_percent(current.weight)}{note}"
        alert = Alert(AlertKind.ROLLBACK, "canary rolled back by operator", summary)
    else:
        assert weight is not None  # checked above
        manual_reason = reason or f"weight set by hand to {_percent(weight)}"
        after = replace(
            current, phase=Phase.PAUSED, weight=float(weight), manual=True, pause_reason=manual_reason
        )
        summary = f"weight set by operator from {_percent(current.weight)} to {_percent(weight)}{note}"
        alert = Alert(AlertKind.PAUSE, f"canary weight set by hand to {_percent(weight)}", summary)
    return _transition(state, after, t, trigger, summary, (), alert)


def _parse_op(op: Op | str) -> Op:
    try:
        return Op(op)
    except ValueError:
        known = ", ".join(o.value for o in Op)
        raise ValueError(f"unknown command {op!r}; known commands: {known}") from None


# --- Shared pieces ----------------------------------------------------------------------------------


def _entering(state: RolloutState, plan: Plan, index: int, t: float) -> RolloutState:
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


def _stopped(state: RolloutState, phase: Phase, weight: float, *, stage: int) -> RolloutState:
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


def _transition(
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
    actions.append(_decision(before, after, t, trigger, summary, verdicts))
    return after, actions


def _decision(
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


def _verdicts_text(verdicts: Sequence[Verdict]) -> str:
    return "; ".join(f"{v.source} {v.status}: {v.reason}" for v in verdicts)


def _stage_label(state: RolloutState, plan: Plan) -> str:
    return f"{state.stage + 1} of {len(plan.stages)}"


def _percent(weight: float) -> str:
    return f"{weight:g}%"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
