"""Every process's copy of the one evidence, kept from the shared outcome log.

With several processes, no process's evidence is fed by its own data plane: each reads the shared
log (every process's records and the evidence events, in one order) into its own `Evidence`. The
order is the same for all, and the judge is deterministic, so every copy holds the same judge
state at the same position. That is what makes failover cheap — the new leader's judge has seen
everything already — and what makes the checkpoint simple: any copy's (position, judge state) is
valid for all; the leader saves one every `checkpoint_every` seconds.

A process that starts (or restarts) catches up from what the log retains (the longest window):
the windows take every retained record; the judge continues from the checkpoint, takes only the
records after its position, and has its per-key caps primed with the records before it, so a
user's requests are capped across the checkpoint as across processes. Nothing is counted twice
(a record is either in the checkpoint or after it) and nothing is silently reset: without a
checkpoint, the judge takes everything retained, and says so.

Feedback records travel in the same entries (any process's endpoint accepted them, once) and go to
`evidence.record_feedback` at their place in the log; those a checkpoint covers go to the windows
and through the feedback tests' per-key caps only, as covered requests do, since the judge's
restored state has counted them already.

The canary requests that count toward a stage's `min_requests` are only those the leader reads
live: what it read while catching up, or before it led, is already in the stored hold progress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from canaryproxy.aio import cancel_and_wait
from canaryproxy.backends.protocols import Entry, OutcomeLog, Position
from canaryproxy.control.evidence import Evidence
from canaryproxy.errors import StateError

log = logging.getLogger("canaryproxy.evidence")

RETRY_AFTER = 0.5  # seconds between attempts to read a log that is away


def position_key(position: Position) -> tuple[int, int]:
    milliseconds, _, sequence = position.partition("-")
    return int(milliseconds), int(sequence or 0)


class SharedEvidence:
    def __init__(self, evidence: Evidence, outcomes: OutcomeLog, *, leads: Callable[[], bool],
                 monotonic: Callable[[], float], checkpoint_every: float = 10.0) -> None:
        self.evidence = evidence
        self.outcomes = outcomes
        self._leads = leads
        self._monotonic = monotonic
        self.checkpoint_every = checkpoint_every
        self.position: Position | None = None  # None until restored
        self.caught_up = asyncio.Event()
        self._judge_from: tuple[int, int] = (0, 0)  # the judge takes records after this position
        self._next_checkpoint = 0.0
        self._away = False  # the log could not be read at the last attempt (logged once per outage)
        self.feedback_taken = 0  # feedback records taken from the log into the evidence
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="canaryproxy-shared-evidence")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                if self.position is None:
                    await self._restore()
                await self._follow()
            except StateError as exc:
                if not self._away:
                    log.warning("%s; the evidence waits (this process's records are buffered)", exc)
                self._away = True
                await asyncio.sleep(RETRY_AFTER)

    async def _restore(self) -> None:
        judge = self.evidence.judge
        checkpoint = await self.outcomes.load_checkpoint() if judge is not None else None
        self._judge_from = (0, 0)
        if judge is not None and checkpoint is not None:
            position, state = checkpoint
            if self._restore_judge(position, state):
                self._judge_from = position_key(position)
        elif judge is not None:
            log.info("no judge checkpoint: the judge takes every retained record")
        self.position = "0-0"

    def _restore_judge(self, position: Position, state: Mapping[str, object]) -> bool:
        assert self.evidence.judge is not None
        try:
            self.evidence.judge.restore(state)
        except ValueError as exc:
            log.error("the judge checkpoint does not fit this judge (%s): it starts from the retained "
                      "records instead", exc)
            return False
        log.info("judge restored from the checkpoint at %s", position)
        return True

    async def _follow(self) -> None:
        assert self.position is not None
        async for entry in self.outcomes.read_from(self.position):
            self._away = False
            if entry is None:
                self._on_caught_up()
            else:
                self._take(entry)
                self.position = entry.position
            if self._leads() and self._monotonic() >= self._next_checkpoint:
                await self._checkpoint()

    def _take(self, entry: Entry) -> None:
        evidence = self.evidence
        if position_key(entry.position) > self._judge_from:
            for record in entry.records:
                evidence.record(record)
            for feedback in entry.feedback:
                evidence.record_feedback(feedback)
                self.feedback_taken += 1
            for pair in entry.pairs:
                evidence.record_pair(pair)
            for event in entry.events:
                evidence.apply(event)
            return
        evidence.replay(entry.records, entry.feedback, entry.pairs)  # covered by the checkpoint
        self.feedback_taken += len(entry.feedback)

    def _on_caught_up(self) -> None:
        if not self.caught_up.is_set():
            self.evidence.discard_canary_requests()
            self.caught_up.set()
            log.info("evidence caught up with the shared log at %s", self.position)

    async def _checkpoint(self) -> None:
        judge = self.evidence.judge
        self._next_checkpoint = self._monotonic() + self.checkpoint_every
        if judge is None or self.position is None or not self.caught_up.is_set():
            return
        await self.outcomes.save_checkpoint(self.position, judge.state())
