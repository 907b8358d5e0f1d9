"""Backends in this process's memory: the default without `state.path`, and the reference that
the contract suite (tests/backends/) holds every other implementation to.

A `MemorySpace` is what replicas would share on a server — the stored state, the lease, the
fencing counter — kept in one process. One process uses one space alone; tests run several
replicas (stores and leaderships) against one space to drive hand-overs without a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from canaryproxy.clock import Clock, SystemClock
from canaryproxy.core.stages import RolloutState
from canaryproxy.core.types import Observed, ObservedSink
from canaryproxy.errors import Fenced, StateConflict, StateError


class MemorySpace:
    """The shared part: the state (or the fact that it is unreadable), the lease and its tokens."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.state: RolloutState | None = None
        self.unreadable: str | None = None  # why the stored state cannot be read, if it cannot
        self.fencing_token = 0  # the newest token handed out; 0 before any leader
        self.lease_holder: str | None = None
        self.lease_until = 0.0  # monotonic
        self.watchers: list[asyncio.Queue[RolloutState]] = []

    def store(self, state: RolloutState) -> None:
        self.state, self.unreadable = state, None
        for queue in self.watchers:
            queue.put_nowait(state)


class MemoryRolloutStore:
    """A `RolloutStore` in a `MemorySpace` (its own, unless one is shared)."""

    def __init__(self, space: MemorySpace | None = None) -> None:
        self.space = space or MemorySpace()

    def describe(self) -> str:
        return "memory (not durable)"

    async def load(self) -> RolloutState | None:
        if self.space.unreadable is not None:
            raise StateError(self.space.unreadable)
        return self.space.state

    async def compare_and_set(self, state: RolloutState, expected: int | None, token: int | None) -> None:
        self.check(expected, token)
        self.space.store(state)

    def check(self, expected: int | None, token: int | None) -> None:
        """Raise what a compare-and-set of `expected` with `token` is refused for, if anything."""
        space = self.space
        if token is not None and token < space.fencing_token:
            raise Fenced(
                f"fencing token {token} is older than the current leader's ({space.fencing_token}): "
                "this process no longer leads"
            )
        stored = None if space.state is None or space.unreadable is not None else space.state.generation
        if expected != stored:
            raise StateConflict(
                f"the rollout state is at generation {stored}, not {expected}: another writer changed it",
                stored,
            )

    async def watch(self) -> AsyncIterator[RolloutState]:
        queue: asyncio.Queue[RolloutState] = asyncio.Queue()
        self.space.watchers.append(queue)
        try:
            if self.space.state is not None and self.space.unreadable is None:
                yield self.space.state
            while True:
                yield await queue.get()
        finally:
            self.space.watchers.remove(queue)


class MemoryLeadership:
    """A lease in a `MemorySpace`: `lease` seconds, renewed by its holder, with a fencing token."""

    def __init__(self, space: MemorySpace, holder: str, lease: float) -> None:
        self.space = space
        self.holder = holder
        self.lease = lease
        self._token: int | None = None

    @property
    def token(self) -> int | None:
        return self._token

    async def acquire(self) -> int | None:
        space, now = self.space, self.space.clock.monotonic()
        if space.lease_holder == self.holder and now < space.lease_until and self._token == space.fencing_token:
            space.lease_until = now + self.lease
            return self._token
        if space.lease_holder is not None and now < space.lease_until:
            self._token = None
            return None  # somebody else holds a live lease
        space.fencing_token += 1
        space.lease_holder, space.lease_until = self.holder, now + self.lease
        self._token = space.fencing_token
        return self._token

    async def renew(self) -> bool:
        space, now = self.space, self.space.clock.monotonic()
        if space.lease_holder == self.holder and now < space.lease_until and self._token == space.fencing_token:
            space.lease_until = now + self.lease
            return True
        self._token = None
        return False

    async def release(self) -> None:
        if self.space.lease_holder == self.holder and self._token == self.space.fencing_token:
            self.space.lease_holder = None
        self._token = None

    def forget(self) -> None:
        self._token = None


class SoleLeadership:
    """One process, so it always leads. Its token, 0, is never older than the store's."""

    token = 0

    async def acquire(self) -> int:
        return 0

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None

    def forget(self) -> None:
        return None  # the only process cannot lose its lease


class DirectFeed:
    """One process: a published outcome goes straight to the consumers, in the same call."""

    __slots__ = ("_sinks",)

    def __init__(self) -> None:
        self._sinks: tuple[ObservedSink, ...] = ()

    def record(self, outcome: Observed) -> None:
        for sink in self._sinks:
            sink.record(outcome)

    def subscribe(self, sink: ObservedSink) -> None:
        self._sinks += (sink,)
