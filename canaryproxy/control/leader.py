"""Who leads: the lease loop every process runs when several share one rollout.

Every `lease / 3` seconds a process that leads renews its lease, and one that does not tries to
take it. Taking it gives a new fencing token, larger than any before, which the controller sends
with every automatic write: a leader that was paused past its lease (GC, SIGSTOP, a slow disk)
and wakes up still believing it leads has every write refused by the store, and learns here, at
its next renewal, that it follows. A process that cannot reach the lease store stops leading at
once: another may already have taken over, and a leader that cannot write decides nothing.

A process leads only once `can_lead` (its evidence has caught up with the shared log: a leader
must not judge on half the windows). Each tick also says this process is alive (`heartbeat`), for the status view's list of replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from canaryproxy.aio import cancel_and_wait
from canaryproxy.backends.protocols import Leadership
from canaryproxy.errors import StateError

log = logging.getLogger("canaryproxy.leader")


class LeaderLoop:
    def __init__(self, leadership: Leadership, lease: float, *, on_elected: Callable[[], Awaitable[None]],
                 heartbeat: Callable[[], Awaitable[None]] | None = None,
                 can_lead: Callable[[], bool] = lambda: True) -> None:
        self.leadership = leadership
        self._can_lead = can_lead
        self.every = lease / 3
        self._on_elected = on_elected
        self._heartbeat = heartbeat
        self.elections = 0  # times this process became the leader
        self._task: asyncio.Task[None] | None = None

    @property
    def leads(self) -> bool:
        return self.leadership.token is not None

    async def start(self) -> None:
        await self.tick()
        self._task = asyncio.create_task(self._run(), name="canaryproxy-leader")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await self.leadership.release()
        except (StateError, OSError) as exc:
            log.warning("could not release the lease: %s", exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one failure
                log.exception("leadership tick failed")

    async def tick(self) -> None:
        """Renew or try to acquire, then say this process is alive."""
        leading = self.leads
        try:
            if leading:
                if not await self.leadership.renew():
                    log.warning("lost the lease: this process follows now")
            elif self._can_lead() and await self.leadership.acquire() is not None:
                self.elections += 1
                log.info("leading the rollout (fencing token %s)", self.leadership.token)
                await self._on_elected()
        except (StateError, OSError) as exc:
            await self._step_down(leading, exc)
        if self._heartbeat is not None:
            try:
                await self._heartbeat()
            except (StateError, OSError):
                pass  # the status view shows this replica's last contact: that is the report

    async def _step_down(self, leading: bool, exc: Exception) -> None:
        if leading:
            log.warning("cannot reach the lease (%s): this process stops leading", exc)
        self.leadership.forget()
