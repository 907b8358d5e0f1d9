"""The plan and the rollout state: what a rollout is made of, and its codec."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from canaryproxy.core.types import Verdict
from canaryproxy.core.units import format_duration


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
    """One stage of a plan. A *live* stage serves `weight` percent of the users with the canary. A
    *shadow* stage (`shadow` > 0) serves none (weight 0): `shadow` percent of the requests are
    also sent to the canary, whose answers no user sees, and the pairs are judged (judge/paired.py).
    Shadow stages come before every live stage."""

    weight: float  # canary percent serving users; 0 in a shadow stage
    hold: float  # seconds the stage lasts at least
    shadow: float = 0.0  # percent of requests duplicated to the canary in the shadow; 0: a live stage

    @property
    def is_shadow(self) -> bool:
        return self.shadow > 0


@dataclass(frozen=True, slots=True)
class Plan:
    stages: tuple[Stage, ...]
    min_requests: int = 100  # canary requests (pairs in a shadow stage) a stage must see to advance
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
        if not is_count(self.min_requests) or self.min_requests < 1:
            raise ValueError(f"plan: min_requests must be an integer >= 1, got {self.min_requests!r}")
        if not is_number(self.max_hold) or self.max_hold < 0:
            raise ValueError(f"plan: max_hold must be a finite number of seconds >= 0, got {self.max_hold!r}")
        previous = 0.0
        live = False  # a live stage was seen
        for number, stage in enumerate(self.stages, 1):
            if not _is_shadow_stage(number, stage, live):
                if not is_number(stage.weight) or not previous < stage.weight <= 100:
                    raise ValueError(
                        f"plan: stage {number} weight must be above {percent(previous)} (the stage before) "
                        f"and at most 100%, got {stage.weight!r}"
                    )
                live, previous = True, stage.weight
            if not is_number(stage.hold) or stage.hold < 0:
                raise ValueError(
                    f"plan: stage {number} hold must be a finite number of seconds >= 0, got {stage.hold!r}"
                )
            if stage.hold > self.max_hold:
                raise ValueError(
                    f"plan: stage {number} hold {format_duration(stage.hold)} is longer than "
                    f"max_hold {format_duration(self.max_hold)}"
                )
        if not live:
            raise ValueError(
                "plan: shadow stages must be followed by at least one live stage "
                "(a canary that has served no user is never promoted)"
            )

    def is_shadow(self, state: RolloutState) -> bool:
        """Whether `state` is in one of this plan's shadow stages."""
        return state.stage < len(self.stages) and self.stages[state.stage].is_shadow


def _is_shadow_stage(number: int, stage: Stage, live_before: bool) -> bool:
    """Whether stage `number` is a shadow stage; ValueError when it is not a valid one."""
    shadow = stage.shadow
    if not is_number(shadow) or not 0 <= shadow <= 100:
        raise ValueError(
            f"plan: stage {number} shadow must be a percent of requests in (0, 100] (0 or absent: a "
            f"live stage), got {shadow!r}"
        )
    if shadow == 0:
        return False
    if stage.weight != 0:
        raise ValueError(
            f"plan: stage {number} is a shadow stage (shadow {percent(shadow)}): its weight must be 0, "
            f"no user is served by the canary in it; got weight {stage.weight!r}"
        )
    if live_before:
        raise ValueError(
            f"plan: stage {number} is a shadow stage after a live stage: shadow stages come before every live stage"
        )
    return True


def shadow_share(state: RolloutState, plan: Plan) -> float:
    """Percent of requests to duplicate to the canary in the shadow now: the shadow stage's share
    while the rollout is in one (progressing, or paused without a weight set by hand), else 0."""
    if state.phase not in (Phase.PROGRESSING, Phase.PAUSED) or state.manual or not plan.is_shadow(state):
        return 0.0
    return plan.stages[state.stage].shadow


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Where the rollout is. Immutable: `step` and `command` return a new one."""

    phase: Phase = Phase.IDLE
    stage: int = 0  # index into Plan.stages
    weight: float = 0.0  # canary percent in force
    stage_elapsed: float = 0.0  # seconds spent progressing in this stage (not paused, not down)
    stage_requests: int = 0  # canary requests (pairs in a shadow stage) finished while progressing in it
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
            if not is_count(value) or value < 0:
                raise ValueError(f"rollout state: {name} must be an integer >= 0, got {value!r}")
        for name in ("weight", "stage_elapsed", "max_hold_base"):
            value = getattr(self, name)
            if not is_number(value) or value < 0:
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
        if self.last_t is not None and not is_number(self.last_t):
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


def is_older(state: RolloutState, than: RolloutState) -> bool:
    """Whether `state` is behind `than`: a lower generation, or within one generation less hold
    progress (the leader writes its progress without a new generation, so two writes of one
    generation are ordered by it)."""
    if state.generation != than.generation:
        return state.generation < than.generation
    return state.stage_elapsed < than.stage_elapsed or state.stage_requests < than.stage_requests


def rebase(state: RolloutState, t: float) -> RolloutState:
    """Make `t` (this process's monotonic time) the time of the last step, e.g. after loading."""
    return replace(state, last_t=t)


@dataclass(frozen=True, slots=True)
class StepInputs:
    verdicts: Sequence[Verdict] = ()  # from the rules and from the statistical judge
    new_canary_requests: int = 0  # canary requests finished since the previous step
    no_worse: bool = False  # the judge shows the canary no worse than tolerance
    # Shadow stages: pairs judged since the previous step (what min_requests counts there), and
    # whether the paired tests show the canary no worse (Judge.shadow_no_worse), which a shadow
    # stage needs to advance.
    new_pairs: int = 0
    shadow_no_worse: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdicts", tuple(self.verdicts))
        for name in ("new_canary_requests", "new_pairs"):
            if getattr(self, name) < 0:
                raise ValueError(f"step inputs: {name} must be >= 0, got {getattr(self, name)}")


def percent(weight: float) -> str:
    return f"{weight:g}%"


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
