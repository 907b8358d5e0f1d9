"""The follower: every process puts the stored rollout state's weight in force on its own splitter.

The store is the truth. The follower watches it and applies each state it delivers, in order; a
writer in this process also hands its accepted state over at once (`observe`), so a rollback by
this process's leader takes effect before the next request. A state older than the one in force
is ignored, so the weight never moves back: a lower generation, or within one generation less
hold progress (the leader writes its progress without a new generation; a delivery can be
overtaken by the write after it).

`RolloutState.last_t` is monotonic time, which means nothing to another process: a state that
arrives without it is rebased on this process's clock.

A shared store can go away. The follower then keeps the weight in force for `grace` seconds (a
short blip changes nothing users see), and after that puts the canary at 0 — fail safe: this
process can no longer learn of a rollback — until the watch delivers again, when the stored state
is put back in force. Stable traffic never waits for the store either way.

In a shadow stage the stored state also says what share of the requests is copied to the canary
(`apply_shadow`, given the state; None when the store is away too long: no copies either).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from canaryproxy.aio import cancel_and_wait
from canaryproxy.backends.protocols import RolloutStore
from canaryproxy.core.stages import RolloutState, is_older, rebase
from canaryproxy.errors import StateError

log = logging.getLogger("canaryproxy.follower")


RETRY_AFTER = 0.5  # seconds between attempts to watch a store that is away


class Follower:
    def __init__(self, store: RolloutStore, apply_weight: Callable[[float], None],
                 monotonic: Callable[[], float], grace: float = 30.0,
                 apply_shadow: Callable[[RolloutState | None], None] | None = None) -> None:
        self.store = store
        self._apply_weight = apply_weight
        self._apply_shadow = apply_shadow
        self._monotonic = monotonic
        self.grace = grace
        self.state: RolloutState | None = None  # the state in force here, None before the first
        self.lost_since: float | None = None  # monotonic time the watch failed; None: in contact
        self.fail_safe = False  # the canary is at 0 because the store was away too long
        self.fail_safes = 0  # times that happened
        self._task: asyncio.Task[None] | None = None
        self._grace_timer: asyncio.TimerHandle | None = None

    @property
    def in_force(self) -> float:
        """The canary weight this process serves."""
        return 0.0 if self.fail_safe or self.state is None else self.state.weight

    def observe(self, state: RolloutState) -> bool:
        """Put `state` in force unless a newer one already is. True when it was taken."""
        current = self.state
        if current is not None and is_older(state, current):
            return False
        if state.last_t is None:
            state = rebase(state, self._monotonic())
        self.state = state
        if not self.fail_safe:
            if current is None or current.weight != state.weight:
                self._apply_weight(state.weight)
            if self._apply_shadow is not None:
                self._apply_shadow(state)
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="canaryproxy-follower")
        await asyncio.sleep(0)  # let the watch register before anybody writes

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._cancel_grace()

    async def _follow(self) -> None:
        while True:
            try:
                async for state in self.store.watch():
                    self._in_contact()
                    self.observe(state)
            except StateError as exc:
                if self.lost_since is None:
                    self.lost_since = self._monotonic()
                    self._grace_timer = asyncio.get_running_loop().call_later(self.grace, self._grace_over)
                    log.error("%s; keeping canary weight %g%% for up to %gs", exc,
                              self.state.weight if self.state else 0.0, self.grace)
            await asyncio.sleep(RETRY_AFTER)

    def _cancel_grace(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None

    def _in_contact(self) -> None:
        if self.lost_since is not None:
            log.warning("the rollout store answers again after %.1fs", self._monotonic() - self.lost_since)
        self.lost_since = None
        self._cancel_grace()
        if self.fail_safe:
            self.fail_safe = False
            if self.state is not None:
                self._apply_weight(self.state.weight)
                if self._apply_shadow is not None:
                    self._apply_shadow(self.state)
                log.warning("canary weight back to the stored %g%%", self.state.weight)

    def _grace_over(self) -> None:
        """The store has been away `grace` seconds (the timer set when it went): canary to 0."""
        self._grace_timer = None
        if self.lost_since is None or self.fail_safe:
            return
        self.fail_safe = True
        self.fail_safes += 1
        self._apply_weight(0.0)
        if self._apply_shadow is not None:
            self._apply_shadow(None)
        log.error("the rollout store has been unreachable for %gs: canary weight set to 0 until it "
                  "answers again", self.grace)

