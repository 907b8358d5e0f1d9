"""The rollout controller: the async loop around the pure stage machine.

Every `evaluate_every` seconds: read the windows, evaluate the operator rules and the judge, call
`stages.step`, and carry out the actions it returns — set the canary weight, send alerts, record
the decision, persist the state. Operator commands (admin API, CLI) go through `command()` and the
same action path. Nothing here decides anything: `core.stages` does, so the decisions are tested
without sockets and this module only does the I/O.

The controller is also an `OutcomeSink`: it counts canary requests for the stage's
`min_requests` and feeds the judge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from canaryproxy.aio import cancel_and_wait
from canaryproxy.alerts import Alerter, json_safe
from canaryproxy.clock import Clock
from canaryproxy.core.judge import Judge
from canaryproxy.core.metrics import MetricValue
from canaryproxy.core.rules import RuleEngine
from canaryproxy.core.stages import (
    Alert,
    AlertKind,
    Decision,
    Op,
    Phase,
    Plan,
    RolloutState,
    SetWeight,
    StepInputs,
    command as stage_command,
    explain,
    rebase,
    step,
)
from canaryproxy.core.types import Role, Outcome, Status, Verdict
from canaryproxy.core.window import Windows, WindowSnapshot
from canaryproxy.errors import StateError
from canaryproxy.backends.state import StateStore

log = logging.getLogger("canaryproxy.control.controller")
decision_log = logging.getLogger("canaryproxy.decisions")

# Stable's p95 and p99 latency for the judge's latency tests are fixed from this much of stable's
# traffic, once it has at least this many requests. (Few requests make a noisy p99; that costs the
# tail test power, never validity: any threshold fixed before the test looks is a valid one.)
LATENCY_BASELINE_SPAN = 300.0
LATENCY_BASELINE_MIN_REQUESTS = 100


class WindowSource:
    """The rules' MetricSource over the live windows; one snapshot per (role, window) per evaluation."""

    def __init__(self, windows: Windows) -> None:
        self._windows = windows
        self._snapshots: dict[tuple[Role, float, float], WindowSnapshot] = {}

    def snapshot(self, role: Role, window: float, t: float) -> WindowSnapshot:
        key = (role, window, t)
        snapshot = self._snapshots.get(key)
        if snapshot is None:
            snapshot = self._snapshots[key] = self._windows.snapshot(role, window, t)
        return snapshot

    def metric(self, role: Role, name: str, window: float, t: float) -> MetricValue:
        return self.snapshot(role, window, t).metric(name)


def verdict_record(verdict: Verdict) -> dict[str, Any]:
    return {
        "source": verdict.source,
        "status": verdict.status.value,
        "reason": verdict.reason,
        "also_on_stable": verdict.also_on_stable,
        "details": json_safe(verdict.details),
    }


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


class Controller:
    def __init__(
        self,
        plan: Plan,
        rules: RuleEngine,
        judge: Judge | None,
        windows: Windows,
        store: StateStore,
        alerter: Alerter,
        apply_weight: Callable[[float], None],
        clock: Clock,
        evaluate_every: float,
        autostart: bool = True,
        history: int = 500,
    ) -> None:
        self.plan = plan
        self.rules = rules
        self.judge = judge
        self.windows = windows
        self.store = store
        self.alerter = alerter
        self._apply_weight = apply_weight
        self.clock = clock
        self.evaluate_every = evaluate_every
        self.autostart = autostart
        self.state = RolloutState()
        self.decisions: deque[dict[str, Any]] = deque(maxlen=history)
        self.verdicts: list[Verdict] = []
        self.rollbacks = 0
        self.evaluations = 0
        self._new_canary_requests = 0
        self._latency_baseline_needed = judge is not None
        self._task: asyncio.Task[None] | None = None
        self._persist_failed = False

    # --- OutcomeSink -----------------------------------------------------------------------------

    def record(self, outcome: Outcome) -> None:
        if outcome.role is Role.CANARY and outcome.counts_for_version:
            self._new_canary_requests += 1
        if self.judge is not None:
            self.judge.observe(outcome)

    # --- lifecycle -------------------------------------------------------------------------------

    def boot(self) -> None:
        """Load the durable state (or start fresh) and put its weight in force."""
        t = self.clock.monotonic()
        try:
            loaded = self.store.load()
        except StateError as exc:
            # A rollout may have been in progress: fail safe, never to 100, never a silent reset.
            self.state = RolloutState(
                phase=Phase.PAUSED, weight=0.0, manual=True,
                pause_reason=f"state could not be loaded; canary weight set to 0 ({exc})",
                last_t=t,
            )
            self._apply_weight(0.0)
            self._record(self._boot_decision(t, "state_corrupt", self.state.pause_reason))
            self.alerter.send(Alert(
                AlertKind.PAUSE, "rollout state unreadable: canary weight set to 0",
                f"{exc}. The canary takes no traffic until an operator resumes or restarts the rollout.",
            ))
            self._persist()
            return
        if loaded is not None:
            if loaded.stage >= len(self.plan.stages):
                self._fail_safe_mismatch(loaded, t)
                return
            self.state = rebase(loaded, t)
            self._apply_weight(self.state.weight)
            self._record(self._boot_decision(
                t, "restart",
                f"resumed from {self.store.describe()}: {explain(self.state, self.plan, StepInputs(), t)}",
            ))
            return
        self.state = rebase(RolloutState(), t)
        self._apply_weight(0.0)
        if self.autostart:
            self.command(Op.START, actor="canaryproxy", reason="rollout.start is auto")

    def _fail_safe_mismatch(self, loaded: RolloutState, t: float) -> None:
        reason = (f"saved state is at stage {loaded.stage + 1} but the plan has "
                  f"{len(self.plan.stages)} stages; canary weight set to 0")
        self.state = RolloutState(phase=Phase.PAUSED, weight=0.0, manual=True, pause_reason=reason,
                                  generation=loaded.generation + 1, last_t=t)
        self._apply_weight(0.0)
        self._record(self._boot_decision(t, "state_mismatch", reason))
        self.alerter.send(Alert(AlertKind.PAUSE, "rollout state does not match the plan", reason))
        self._persist()

    def _boot_decision(self, t: float, trigger: str, summary: str) -> Decision:
        s = self.state
        return Decision(t=t, trigger=trigger, summary=summary, phase_before=s.phase, stage_before=s.stage,
                        weight_before=s.weight, phase_after=s.phase, stage_after=s.stage,
                        weight_after=s.weight, generation=s.generation)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="canaryproxy-controller")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.evaluate_every)
            try:
                self.evaluate()
            except Exception:  # the loop must outlive any one bad evaluation
                log.exception("evaluation failed; the rollout stays where it is")

    # --- the automatic side ------------------------------------------------------------------------

    def evaluate(self) -> list[Verdict]:
        """One evaluation: rules and judge -> stage machine -> actions. Returns the verdicts."""
        t = self.clock.monotonic()
        self.evaluations += 1
        source = WindowSource(self.windows)
        if self._latency_baseline_needed:
            self._fix_latency_baseline(source, t)
        verdicts = self.rules.evaluate(source, t, stable_in_service=self.state.weight < 100)
        if self.judge is not None:
            verdicts += self.judge.verdicts()
        no_worse = bool(self.plan.early_promotion and self.judge is not None
                        and self.judge.no_worse(1.0))
        inputs = StepInputs(verdicts, new_canary_requests=self._new_canary_requests, no_worse=no_worse)
        self._new_canary_requests = 0
        previous = {v.source: v.status for v in self.verdicts}
        self.verdicts = verdicts
        state, actions = step(self.state, self.plan, inputs, t)
        changed = any((v.source not in previous) or previous[v.source] is not v.status for v in verdicts)
        if changed and not any(isinstance(a, Decision) for a in actions):
            self._record_evaluation(t, verdicts, previous)
        self._carry_out(state, actions)
        return verdicts

    def _fix_latency_baseline(self, source: WindowSource, t: float) -> None:
        """The judge's latency thresholds: stable's p95 and p99, fixed once, never from the data
        under test."""
        assert self.judge is not None
        stable = source.snapshot(Role.STABLE, min(LATENCY_BASELINE_SPAN, self.windows.config.span_seconds), t)
        p95, p99 = stable.metric("latency_p95"), stable.metric("latency_p99")
        if p95.value is not None and p99.value is not None and p95.samples >= LATENCY_BASELINE_MIN_REQUESTS:
            self.judge.set_latency_thresholds(p95.value, max(p99.value, p95.value))
            self._latency_baseline_needed = False
            log.info("judge latency thresholds fixed at stable's p95 = %.1f ms, p99 = %.1f ms (n=%d)",
                     p95.value * 1000, p99.value * 1000, p95.samples)

    # --- the operator's side -----------------------------------------------------------------------

    def command(self, op: Op | str, *, actor: str, reason: str = "", weight: float | None = None,
                to_end: bool = False) -> RolloutState:
        """Carry out an operator command. Raises CommandRejected or ValueError, changing nothing."""
        t = self.clock.monotonic()
        state, actions = stage_command(self.state, self.plan, op, t, reason=reason, weight=weight,
                                       to_end=to_end)
        if Op(op) is Op.START:
            self.rules.reset()
            if self.judge is not None:
                self.judge.reset()
                self._latency_baseline_needed = True
        self._carry_out(state, actions, actor=actor)
        return state

    # --- carrying out ------------------------------------------------------------------------------

    def _carry_out(self, state: RolloutState, actions: Iterable[Any], actor: str | None = None) -> None:
        before = self.state
        self.state = state
        for action in actions:
            if isinstance(action, SetWeight):
                # Weight first: a rollback takes effect before anything else happens.
                self._apply_weight(action.weight)
            elif isinstance(action, Alert):
                if action.kind is AlertKind.ROLLBACK:
                    self.rollbacks += 1
                self.alerter.send(action, phase=state.phase.value, stage=state.stage + 1,
                                  weight=state.weight, generation=state.generation)
            elif isinstance(action, Decision):
                self._record(action, actor=actor)
        if state.to_dict() != before.to_dict():
            self._persist()

    def _persist(self) -> None:
        try:
            self.store.save(self.state, self.clock.wall())
        except StateError as exc:
            # Keep serving from memory; say so once, loudly.
            if not self._persist_failed:
                self._persist_failed = True
                self.alerter.send(Alert(AlertKind.PAUSE, "rollout state cannot be saved", str(exc)))
            log.error("%s", exc)
        else:
            self._persist_failed = False

    def _wall_at(self, t: float) -> float:
        return self.clock.wall() - (self.clock.monotonic() - t)

    def _record(self, decision: Decision, actor: str | None = None) -> None:
        wall = self._wall_at(decision.t)
        record = {
            "at": _iso(wall),
            "time": wall,
            "kind": "transition" if (decision.phase_before, decision.stage_before, decision.weight_before)
            != (decision.phase_after, decision.stage_after, decision.weight_after) else "decision",
            "trigger": decision.trigger,
            "summary": decision.summary,
            "actor": actor,
            "before": {"phase": decision.phase_before.value, "stage": decision.stage_before + 1,
                       "weight": decision.weight_before},
            "after": {"phase": decision.phase_after.value, "stage": decision.stage_after + 1,
                      "weight": decision.weight_after},
            "generation": decision.generation,
            "verdicts": [verdict_record(v) for v in decision.verdicts],
        }
        self.decisions.append(record)
        decision_log.info(json.dumps(record, sort_keys=True))

    def _record_evaluation(self, t: float, verdicts: list[Verdict], previous: dict[str, Status]) -> None:
        changes = [f"{v.source}: {previous.get(v.source, 'new')} -> {v.status}" for v in verdicts
                   if previous.get(v.source) is not v.status]
        wall = self._wall_at(t)
        record = {
            "at": _iso(wall),
            "time": wall,
            "kind": "evaluation",
            "trigger": "evaluation",
            "summary": "; ".join(changes),
            "actor": None,
            "before": None,
            "after": {"phase": self.state.phase.value, "stage": self.state.stage + 1,
                      "weight": self.state.weight},
            "generation": self.state.generation,
            "verdicts": [verdict_record(v) for v in verdicts],
        }
        self.decisions.append(record)
        decision_log.info(json.dumps(record, sort_keys=True))

    # --- reading ---------------------------------------------------------------------------------

    def status(self, window: float = 60.0) -> dict[str, Any]:
        t = self.clock.monotonic()
        state = self.state
        plan = self.plan
        stage = plan.stages[min(state.stage, len(plan.stages) - 1)]
        elapsed = state.stage_elapsed
        if state.phase is Phase.PROGRESSING and state.last_t is not None:
            elapsed += max(0.0, t - state.last_t)
        window = min(window, self.windows.config.span_seconds)
        versions = {role.value: self.windows.snapshot(role, window, t).summary() for role in (Role.STABLE, Role.CANARY)}
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
                "elapsed": elapsed if state.phase is Phase.PROGRESSING else state.stage_elapsed,
                "hold_left": max(0.0, stage.hold - elapsed) if state.phase is Phase.PROGRESSING else None,
                "requests": state.stage_requests + (self._new_canary_requests if state.phase is Phase.PROGRESSING else 0),
                "min_requests": plan.min_requests,
            },
            "plan": [{"weight": s.weight, "hold": s.hold} for s in plan.stages],
            "explain": explain(state, plan, StepInputs(self.verdicts), t),
            "window": window,
            "versions": versions,
            "rules": [verdict_record(v) for v in self.verdicts if not v.source.startswith("judge:")],
            "judge": self.judge.summary() if self.judge is not None else None,
            "judge_verdicts": [verdict_record(v) for v in self.verdicts if v.source.startswith("judge:")],
            "evaluations": self.evaluations,
            "rollbacks": self.rollbacks,
            "evaluate_every": self.evaluate_every,
            "state_store": self.store.describe(),
        }

    def metrics(self) -> Iterator[Metric]:
        """Rollout gauges for the exporter."""
        stage = GaugeMetricFamily("canaryproxy_rollout_stage",
                                  "Current stage of the rollout, 1-based (0 when idle).",
                                  value=0 if self.state.phase is Phase.IDLE else self.state.stage + 1)
        phase = GaugeMetricFamily("canaryproxy_rollout_phase",
                                  "1 for the rollout's current phase, 0 for the others.", labels=["phase"])
        for p in Phase:
            phase.add_metric([p.value], 1.0 if self.state.phase is p else 0.0)
        rollbacks = CounterMetricFamily("canaryproxy_rollbacks", "Rollbacks, automatic and by operator.",
                                        value=self.rollbacks)
        verdicts = GaugeMetricFamily("canaryproxy_rule_status",
                                     "1 for each rule's (and judge test's) current status.",
                                     labels=["rule", "status"])
        for v in self.verdicts:
            for s in Status:
                verdicts.add_metric([v.source, s.value], 1.0 if v.status is s else 0.0)
        yield from (stage, phase, rollbacks, verdicts)
