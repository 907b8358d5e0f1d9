"""What the stage machine asks the controller to do: set the weight, alert, record a decision."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from canaryproxy.core.stages.model import Phase
from canaryproxy.core.types import Verdict


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
