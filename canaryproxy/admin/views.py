"""The status document: where the rollout is and why, as the admin API, the CLI, the dashboard and
the demo show it. Read-only; built from the controller and its evidence at the moment of asking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from canaryproxy.control.controller import Controller
from canaryproxy.control.decisions import verdict_record
from canaryproxy.core.stages import Phase, StepInputs, explain, shadow_share
from canaryproxy.core.types import LIVE_ROLES, Role

# What the dashboard charts, per version: GET /admin/series.
SERIES_METRICS = ("request_rate", "error_rate", "latency_p95", "ttft_p95", "tokens_per_request",
                  "guardrail_rate", "negative_feedback_share")
SERIES_SPAN = 900.0  # the dashboard's 15 minutes, unless the windows keep less
SERIES_POINTS = 180  # the default step gives at most this many points


def status_document(controller: Controller, window: float = 60.0) -> dict[str, Any]:
    t, wall = controller.clock.monotonic(), controller.clock.wall()
    state, plan, evidence = controller.state, controller.plan, controller.evidence
    stage = plan.stages[min(state.stage, len(plan.stages) - 1)]
    progressing = state.phase is Phase.PROGRESSING
    elapsed = state.stage_elapsed
    if progressing and state.last_t is not None:
        elapsed += max(0.0, t - state.last_t)
    window = min(window, evidence.windows.config.span_seconds)
    judge = evidence.judge
    versions = {role.value: evidence.snapshot(role, window, wall).summary() for role in LIVE_ROLES}
    return {
        "phase": state.phase.value,
        "weight": state.weight,
        "manual": state.manual,
        "pause_reason": state.pause_reason or None,
        "generation": state.generation,
        "stage": {
            "number": state.stage + 1,
            "of": len(plan.stages),
            "weight": stage.weight,
            "hold": stage.hold,
            "elapsed": elapsed if progressing else state.stage_elapsed,
            "hold_left": max(0.0, stage.hold - elapsed) if progressing else None,
            "requests": state.stage_requests + (_pending(controller) if progressing else 0),
            "min_requests": plan.min_requests,
            "shadow": stage.shadow or None,  # a shadow stage: percent copied; `requests` are pairs
        },
        "plan": [{"weight": s.weight, "hold": s.hold, **({"shadow": s.shadow} if s.is_shadow else {})}
                 for s in plan.stages],
        "explain": explain(state, plan, StepInputs(controller.verdicts), t),
        "window": window,
        "versions": versions,
        # Per version, the share of token counts in the window that are the proxy's estimates (no
        # usage in the response); None without token counts.
        "tokens_estimated_share": {name: summary["tokens"]["estimated_share"] for name, summary in versions.items()},
        "rules": [verdict_record(v) for v in controller.verdicts if not v.source.startswith("judge:")],
        "judge": judge.summary(wall) if judge is not None else None,
        "judge_verdicts": [verdict_record(v) for v in controller.verdicts if v.source.startswith("judge:")],
        "evaluations": controller.evaluations,
        "rollbacks": controller.rollbacks,
        "evaluate_every": controller.evaluate_every,
        "state_store": controller.store.describe(),
        "coordination": controller.peers() if controller.peers is not None else {"backend": "local"},
        "shadow": shadow_view(controller, window, wall) if any(s.is_shadow for s in plan.stages) else None,
    }


def _pending(controller: Controller) -> int:
    evidence = controller.evidence
    return evidence.pending_pairs if controller.plan.is_shadow(controller.state) else evidence.pending_canary_requests


def shadow_view(controller: Controller, window: float, wall: float) -> dict[str, Any]:
    """The shadow panel: the pairs (every process's, through the evidence), the paired tests, the
    canary's compared answers as a window of their own (requests, latency, tokens, cost: shadow
    spend apart from both versions'), and what this process's data plane did with its copies
    (`controller.shadow_local`)."""
    judge, evidence, state, plan = controller.judge, controller.evidence, controller.state, controller.plan
    return {
        "share": shadow_share(state, plan),  # percent copied now (0 outside a progressing shadow stage)
        "in_stage": plan.is_shadow(state),
        "tolerance": controller.shadow_tolerance,
        "negligible": controller.shadow_negligible,
        "no_worse": judge is not None and judge.shadow_no_worse(controller.shadow_tolerance,
                                                                controller.shadow_negligible),
        "pairs": evidence.pairs.summary(),
        "window": evidence.snapshot(Role.SHADOW, window, wall).summary(),
        "tests": judge.shadow_summary() if judge is not None else None,
        "this_process": controller.shadow_local() if controller.shadow_local is not None else None,
    }


def weight_history(decisions: Iterable[Mapping[str, Any]], since: float, now: float,
                   current: float) -> dict[str, list[float]]:
    """The canary weight from wall time `since` to `now` as change points of a step function.

    Every decision record says the weight after it (`after`), transitions also the weight before
    (`before`). The weight at `since` is the one after the last record before it; when the record
    starts later (it keeps the last `history` records), the one before its first record.
    """
    records = [record for record in decisions if record.get("after") is not None]
    earlier = [record for record in records if record["time"] <= since]
    within = [record for record in records if since < record["time"] <= now]
    if earlier:
        start = earlier[-1]["after"]["weight"]
    elif within:
        start = (within[0].get("before") or within[0]["after"])["weight"]
    else:
        start = current
    times, values = [since], [start]
    for record in within:
        if record["after"]["weight"] != values[-1]:
            times.append(record["time"])
            values.append(record["after"]["weight"])
    times.append(now)
    values.append(current)
    return {"t": times, "value": values}
