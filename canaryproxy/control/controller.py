"""The rollout controller: the leader's evaluate loop around the pure stage machine.

Every `evaluate_every` seconds, while this process leads: read the evidence (windows and judge),
evaluate the operator rules and the judge, call `stages.step`, and carry out what it returns.
Operator commands (admin API, CLI) go through `command()`; they need no leadership.

Carrying out always starts with the store: the new state is written by compare-and-set on the
generation it was computed from (and, for the leader's own decisions, with its fencing token).
Only a state the store accepted is put in force (through the follower: weight first), alerted
and recorded. A write the store refuses changes nothing here: a command is computed again on
the state that won; an evaluation is dropped (the next one starts from the stored state); a
leader that finds itself fenced stops acting. Nothing here decides anything: `core.stages` does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from canaryproxy.aio import cancel_and_wait
from canaryproxy.alerts import Alerter
from canaryproxy.backends.protocols import Leadership, RolloutStore
from canaryproxy.clock import Clock
from canaryproxy.control.decisions import DecisionRecord, boot_decision
from canaryproxy.control.evidence import Evidence
from canaryproxy.control.follower import Follower
from canaryproxy.core.judge import Judge
from canaryproxy.core.rules import MetricSource, RuleEngine
from canaryproxy.core.snapshot import WindowSnapshot
from canaryproxy.core.metrics import METRICS, MetricValue
from canaryproxy.core.stages import (
    Action, Alert, AlertKind, Decision, Op, Phase, Plan, RolloutState, SetWeight, StepInputs,
    command as stage_command, explain, rebase, step,
)
from canaryproxy.core.types import Role, Status, Verdict
from canaryproxy.errors import (
    CommandRejected, Fenced, NotDurable, StateConflict, StateError, StoreUnavailable,
)

log = logging.getLogger("canaryproxy.controller")

COMMAND_ATTEMPTS = 5  # compare-and-set attempts of one command racing other writers


class WindowSource(MetricSource):
    """The rules' MetricSource over the evidence at one wall-clock time; one snapshot per
    (role, window, same_weight, late) per evaluation. Rules keep their own (monotonic) time for `for:`.
    `weight_since` is the wall-clock time the weight in force took effect, None when unknown.
    Late metrics (feedback) are read over windows ending the evidence's `feedback_settle` seconds
    before `wall` (core/rules.py)."""

    def __init__(self, evidence: Evidence, wall: float, weight_since: float | None = None) -> None:
        self._evidence = evidence
        self._wall = wall
        self._weight_since = weight_since
        self.late_by = evidence.feedback_settle  # MetricSource.late_by: where late windows end
        self._snapshots: dict[tuple[Role, float, bool, bool], WindowSnapshot] = {}

    def metric(self, role: Role, name: str, window: float, t: float, same_weight: bool = False) -> MetricValue:
        late = METRICS[name].late
        key = (role, window, same_weight, late)
        snapshot = self._snapshots.get(key)
        if snapshot is None:
            since = self._weight_since if same_weight else None
            snapshot = self._snapshots[key] = self._evidence.snapshot(
                role, window, self._wall, since, ends_before=self.late_by if late else 0.0)
        return snapshot.metric(name)


@dataclass(frozen=True, slots=True)
class Readout:
    """What the exporter's rollout gauges show."""

    phase: Phase
    stage: int  # 1-based, 0 when idle
    rollbacks: int
    verdicts: tuple[Verdict, ...]


class Controller:
    def __init__(
        self, plan: Plan, rules: RuleEngine, evidence: Evidence, store: RolloutStore,
        leadership: Leadership, follower: Follower, alerter: Alerter, decisions: DecisionRecord,
        clock: Clock, evaluate_every: float, autostart: bool = True,
        shadow_tolerance: float = 1.5, shadow_negligible: float = 0.01,
    ) -> None:
        self.plan, self.rules, self.evidence = plan, rules, evidence
        self.store, self.leadership, self.follower = store, leadership, follower
        self.alerter, self.decisions, self.clock = alerter, decisions, clock
        self.evaluate_every = evaluate_every
        self.autostart = autostart
        # A shadow stage advances once the paired tests show the canary no worse than this
        # (discordant odds, or worse in at most `shadow_negligible` more of the pairs).
        self.shadow_tolerance, self.shadow_negligible = shadow_tolerance, shadow_negligible
        self.verdicts: list[Verdict] = []
        self.rollbacks = 0
        self.evaluations = 0
        self._task: asyncio.Task[None] | None = None
        self._persist_failed = False
        self._stored: int | None = None  # the generation last seen in the store; None: none stored
        # The weight this process last evaluated at and the wall-clock time it took effect (None:
        # in force since before this process looked), for the relative rules (core/rules.py).
        self._weight: float | None = None
        self._weight_since: float | None = None
        # The status view's `coordination` part, when several processes share the rollout.
        self.peers: Callable[[], dict[str, Any]] | None = None
        # The status view's account of this process's shadow copies, when the plan has shadow stages.
        self.shadow_local: Callable[[], dict[str, Any]] | None = None

    @property
    def state(self) -> RolloutState:
        """The state in force in this process."""
        return self.follower.state or RolloutState()

    @property
    def judge(self) -> Judge | None:
        return self.evidence.judge

    # --- lifecycle ---------------------------------------------------------------------------

    async def boot(self) -> None:
        """Load the stored state (or start fresh) and put its weight in force."""
        t = self.clock.monotonic()
        try:
            loaded = await self.store.load()
        except StoreUnavailable as exc:
            # Not corrupt, only away: the canary stays at 0 until the follower's watch delivers.
            log.error("%s; the canary takes no traffic until the store answers", exc)
            return
        except StateError as exc:
            await self._fail_safe(t, "state_corrupt", f"state could not be loaded; canary weight set to 0 ({exc})",
                                  "rollout state unreadable: canary weight set to 0", generation=0,
                                  message=f"{exc}. The canary takes no traffic until an operator resumes "
                                          "or restarts the rollout.")
            return
        if loaded is not None and loaded.stage >= len(self.plan.stages):
            reason = (f"saved state is at stage {loaded.stage + 1} but the plan has "
                      f"{len(self.plan.stages)} stages; canary weight set to 0")
            await self._fail_safe(t, "state_mismatch", reason, "rollout state does not match the plan",
                                  generation=loaded.generation + 1, expected=loaded.generation)
            return
        if loaded is not None:
            self._stored = loaded.generation
            state = rebase(loaded, t)
            self.follower.observe(state)
            self.decisions.transition(boot_decision(state, t, "restart", (
                f"resumed from {self.store.describe()}: {explain(state, self.plan, StepInputs(), t)}"
            )), self.clock.wall())
            return
        self.follower.observe(rebase(RolloutState(), t))
        if self.autostart:
            await self._start_automatically()

    async def _start_automatically(self) -> None:
        """`rollout.start: auto` on a fresh store; another process may have started it first."""
        try:
            await self.command(Op.START, actor="canaryproxy", reason="rollout.start is auto")
        except (CommandRejected, StateError) as exc:
            log.info("rollout not started here: %s", exc)

    async def _fail_safe(self, t: float, trigger: str, reason: str, title: str, *, generation: int,
                         expected: int | None = None, message: str | None = None) -> None:
        """Weight 0, paused, alert: a rollout may have been in progress; never 100, never a reset."""
        state = RolloutState(phase=Phase.PAUSED, weight=0.0, manual=True, pause_reason=reason,
                             generation=generation, last_t=t)
        self._stored = expected
        await self._write(state, token=None)
        self.follower.observe(state)
        self.decisions.transition(boot_decision(state, t, trigger, reason), self.clock.wall())
        self.alerter.send(Alert(AlertKind.PAUSE, title, message or reason))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="canaryproxy-controller")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.evaluate_every)
            try:
                await self.evaluate()
            except Exception:  # the loop must outlive any one bad evaluation
                log.exception("evaluation failed; the rollout stays where it is")

    # --- the automatic side ------------------------------------------------------------------

    async def take_over(self) -> None:
        """This process has just become the leader: start from the stored state, not from what it
        last heard, and count only the canary requests it reads from now on."""
        self.evidence.discard_canary_requests()
        await self._reload_or_fail_safe(self.clock.monotonic())

    async def evaluate(self) -> list[Verdict]:
        """One evaluation: rules and judge -> stage machine -> actions. Returns the verdicts."""
        if self.leadership.token is None:
            return []  # a follower: the leader evaluates
        t, wall = self.clock.monotonic(), self.clock.wall()
        self.evaluations += 1
        before = self.state
        self._note_weight(before.weight, wall)
        verdicts, inputs = (self._shadow_inputs(wall) if self.plan.is_shadow(before)
                            else self._live_inputs(before, t, wall))
        previous = {v.source: v.status for v in self.verdicts}
        self.verdicts = verdicts
        state, actions = step(before, self.plan, inputs, t)
        changed = any(previous.get(v.source) is not v.status for v in verdicts)
        if changed and not any(isinstance(a, Decision) for a in actions):
            self.decisions.evaluation(wall, verdicts, previous, state)
        if not await self._carry_out(before, state, actions, token=self.leadership.token):
            await self._reload_or_fail_safe(t)  # dropped: the next evaluation starts from the store
        self._note_weight(self.state.weight, wall)
        return verdicts

    def _live_inputs(self, before: RolloutState, t: float, wall: float) -> tuple[list[Verdict], StepInputs]:
        verdicts = self.rules.evaluate(WindowSource(self.evidence, wall, self._weight_since), t,
                                       stable_in_service=before.weight < 100)
        verdicts += self.evidence.judge_verdicts(wall)
        judge = self.evidence.judge
        no_worse = bool(self.plan.early_promotion and judge is not None and judge.no_worse(1.0))
        self.evidence.take_pairs()  # pairs of a shadow stage that ended: counted there
        return verdicts, StepInputs(verdicts, new_canary_requests=self.evidence.take_canary_requests(),
                                    no_worse=no_worse)

    def _shadow_inputs(self, wall: float) -> tuple[list[Verdict], StepInputs]:
        """A shadow stage is judged by the paired tests alone: no user is served by the canary, so
        the operator rules (canary against stable, or a threshold on the canary) have nothing to
        read; the judge's live tests see no canary request either."""
        judge = self.evidence.judge
        self.evidence.judge_verdicts(wall)  # fixes stable's latency baseline for the live stages
        verdicts = judge.shadow_verdicts() if judge is not None else []
        no_worse = judge is not None and judge.shadow_no_worse(self.shadow_tolerance, self.shadow_negligible)
        return verdicts, StepInputs(verdicts, new_canary_requests=self.evidence.take_canary_requests(),
                                    new_pairs=self.evidence.take_pairs(), shadow_no_worse=no_worse)

    def _note_weight(self, weight: float, wall: float) -> None:
        """Remember when the weight in force changed (seen at an evaluation, whoever changed it)."""
        if weight != self._weight:
            self._weight_since = None if self._weight is None else wall
            self._weight = weight

    # --- the operator's side -----------------------------------------------------------------

    async def command(self, op: Op | str, *, actor: str, reason: str = "", weight: float | None = None,
                      to_end: bool = False) -> RolloutState:
        """Carry out an operator command. Raises CommandRejected or ValueError, changing nothing."""
        for _ in range(COMMAND_ATTEMPTS):
            t = self.clock.monotonic()
            before = self.state
            state, actions = stage_command(before, self.plan, op, t, reason=reason, weight=weight,
                                           to_end=to_end)
            if await self._carry_out(before, state, actions, actor=actor, token=None):
                if Op(op) is Op.START:
                    self.rules.reset()
                    self.evidence.restart()
                return state
            await self._reload(t)
        raise StateError(f"{op}: the rollout state kept changing under {COMMAND_ATTEMPTS} attempts; try again")

    async def _reload(self, t: float) -> RolloutState | None:
        stored = await self.store.load()
        self._stored = None if stored is None else stored.generation
        if stored is not None:
            self.follower.observe(rebase(stored, t))
        return stored

    async def _reload_or_fail_safe(self, t: float) -> None:
        """Read the stored state; a state that vanished mid-rollout (Redis restarted without
        persistence, FLUSHALL) is treated as a corrupt one: weight 0, paused, alert."""
        try:
            stored = await self._reload(t)
        except StateError as exc:
            log.warning("cannot read the rollout state: %s", exc)
            return
        if stored is None and self.state.phase is Phase.IDLE and self.autostart and self._stored is None:
            await self._start_automatically()  # nobody started it while the store was away
        elif stored is None and self.state.phase is not Phase.IDLE:
            reason = (f"the rollout state vanished from {self.store.describe()}; canary weight set "
                      "to 0")
            await self._fail_safe(t, "state_missing", reason, "rollout state missing: canary weight set to 0",
                                  generation=self.state.generation + 1)

    # --- carrying out ------------------------------------------------------------------------

    async def _carry_out(self, before: RolloutState, state: RolloutState, actions: Iterable[Action],
                         *, token: int | None, actor: str | None = None) -> bool:
        """Write `state` (if it changed), then weight, alerts and decisions. False when refused."""
        if state.to_dict() != before.to_dict():
            if not await self._write(state, token):
                return False
        self.follower.observe(state)
        for action in actions:
            if isinstance(action, SetWeight):
                continue  # the follower put the state's weight in force
            if isinstance(action, Alert):
                if action.kind is AlertKind.ROLLBACK:
                    self.rollbacks += 1
                self.alerter.send(action, phase=state.phase.value, stage=state.stage + 1,
                                  weight=state.weight, generation=state.generation)
            elif isinstance(action, Decision):
                self.decisions.transition(action, self._wall_at(action.t), actor=actor)
        return True

    async def _write(self, state: RolloutState, token: int | None) -> bool:
        """Compare-and-set `state` on the generation last seen stored. False when refused."""
        try:
            await self.store.compare_and_set(state, self._stored, token)
        except NotDurable as exc:
            self._stored = state.generation
            # One process: its memory is the truth. Keep going; say so once, loudly.
            if not self._persist_failed:
                self._persist_failed = True
                self.alerter.send(Alert(AlertKind.PAUSE, "rollout state cannot be saved", str(exc)))
            log.error("%s", exc)
            return True
        except (StateConflict, Fenced) as exc:
            log.info("rollout state not written: %s", exc)
            return False
        except StoreUnavailable as exc:
            log.warning("rollout state not written: %s", exc)
            return False
        self._stored = state.generation
        self._persist_failed = False
        return True

    def _wall_at(self, t: float) -> float:
        return self.clock.wall() - (self.clock.monotonic() - t)

    # --- reading -----------------------------------------------------------------------------

    def readout(self) -> Readout:
        state = self.state
        return Readout(phase=state.phase, stage=0 if state.phase is Phase.IDLE else state.stage + 1,
                       rollbacks=self.rollbacks, verdicts=tuple(self.verdicts))

    def verdict_statuses(self) -> dict[str, Status]:
        return {v.source: v.status for v in self.verdicts}
