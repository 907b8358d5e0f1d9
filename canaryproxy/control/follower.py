"""The follower: every process puts the stored rollout state's weight in force on its own splitter.

The store is the truth. The follower watches it and applies each state it delivers, in order; a
writer in this process also hands its accepted state over at once (`observe`), so a rollback by
this process's leader takes effect before the next request. A state older than the one in force
is ignored, so the weight never moves back: a lower generation, or within one generation less
hold progress (the leader writes its progress without a new generation; a delivery can be
overtaken by the write after it).

`RolloutState.last_t` is monotonic time, which means nothing to another process: a state that
arrives without it is rebased on this process's clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from canaryproxy.aio import cancel_and_wait
from canaryproxy.backends.protocols import RolloutStore
from canaryproxy.core.stages import RolloutState, is_older, rebase

log = logging.getLogger("canaryproxy.follower")


class Follower:
    def __init__(self, store: RolloutStore, apply_weight: Callable[[float], None],
                 monotonic: Callable[[], float]) -> None:
        self.store = store
        self._apply_weight = apply_weight
        self._monotonic = monotonic
        self.state: RolloutState | None = None  # the state in force here, None before the first
        self._task: asyncio.Task[None] | None = None

    def observe(self, state: RolloutState) -> bool:
        """Put `state` in force unless a newer one already is. True when it was taken."""
        current = self.state
        if current is not None and is_older(state, current):
            return False
        if state.last_t is None:
            state = rebase(state, self._monotonic())
        self.state = state
        if current is None or current.weight != state.weight:
            self._apply_weight(state.weight)
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="canaryproxy-follower")
        await asyncio.sleep(0)  # let the watch register before anybody writes

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _follow(self) -> None:
        async for state in self.store.watch():
            self.observe(state)

