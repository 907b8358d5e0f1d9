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

A plan may begin with shadow stages (`Stage(0, hold, shadow=20)`): weight 0, a share of the
requests duplicated to the canary (`shadow_share`), advancing on pairs and the paired tests'
"no worse" (step.py); a FAIL there rolls back before any user was served by the canary.

Time spent in a stage is accumulated step by step in `stage_elapsed`, which the durable state
keeps; `last_t` is this process's monotonic time of the last step and is not persisted. After
loading a state (a restart, another replica) the controller calls `rebase(state, t)`: the hold
then continues where it stopped, and the downtime, when nobody watched the canary, does not count.

The package: `model` (the plan, the state and its codec), `actions` (what the controller carries
out), `step` (the automatic side), `commands` (the operator's side), and `transitions` (what
both build their next state and Decision with).
"""

from __future__ import annotations

from canaryproxy.core.stages.actions import Action, Alert, AlertKind, Decision, SetWeight
from canaryproxy.core.stages.commands import Op, command
from canaryproxy.core.stages.model import (
    Phase,
    Plan,
    RolloutState,
    StableBreachPolicy,
    Stage,
    StepInputs,
    is_older,
    rebase,
    shadow_share,
)
from canaryproxy.core.stages.step import explain, step

__all__ = [
    "Action", "Alert", "AlertKind", "Decision", "Op", "Phase", "Plan", "RolloutState", "SetWeight",
    "StableBreachPolicy", "Stage", "StepInputs", "command", "explain", "is_older", "rebase", "shadow_share", "step",
]
