"""Each event test's part of the intake: what is its event, its key cap, its open block.

An `EventLane` counts the requests one event test looks at, caps each sticky key's events, and
cuts the requests into blocks of `BLOCK_REQUESTS` that it emits, closed, as `Block`s: the canary's
share of a block is then counted, not assumed (intake.py says why). The intake reads each
request's events once (`Events`, one per kind) and hands them to every lane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from canaryproxy.core.judge import state as saved
from canaryproxy.core.judge.config import EVENT_TESTS, JudgeConfig
from canaryproxy.core.judge.keycap import KeyCap
from canaryproxy.core.judge.numerics import CANARY, STABLE

# Requests per block of an event test: small enough that the canary's share cannot drift within
# one, large enough that a block rarely lacks either version (at a 3% share, one in twenty).
BLOCK_REQUESTS = 100


@dataclass(frozen=True, slots=True)
class Block:
    """A closed block of one event test: requests and events of each version, all routed at one
    weight, from keys under the cap, all in a warm-up (`cold`) or none."""

    test: str
    stable_requests: int
    canary_requests: int
    stable_events: int
    canary_events: int
    cold: bool


class EventSeen(NamedTuple):
    """What an event test's intake has counted, (stable, canary) each: for its verdicts."""

    requests: tuple[int, int]  # requests the test looks at
    events: tuple[int, int]  # events counted (under the key cap)
    dropped_by_key_cap: int  # events of keys at their cap


# The event kinds, in the order of the per-request tuple the intake reads (`Intake.events_of`).
EVENT_KINDS = tuple(EVENT_TESTS)
Events = tuple[bool | None, ...]  # per kind: the request's event; None: the test does not look at it


class EventLane:
    """One event test's share of the intake: what it counted, its key cap and its open block."""

    __slots__ = (
        "name", "index", "requests", "events", "dropped_by_key_cap", "_keys", "_block", "_block_w",
        "_block_cold", "_emit",
    )  # fmt: skip

    def __init__(self, name: str, config: JudgeConfig, emit: Callable[[Block], None]) -> None:
        self.name = name
        self.index = EVENT_KINDS.index(name)  # where its event is in a request's `Events`
        self.requests = [0, 0]  # requests this test looks at, [stable, canary]
        self.events = [0, 0]  # events counted (under the key cap), [stable, canary]
        self.dropped_by_key_cap = 0
        self._keys = KeyCap(config.max_events_per_key, config.key_memory)
        # The open block: [stable requests, canary requests, stable events, canary events], all
        # routed at weight _block_w, from keys under the cap, all in a warm-up (_block_cold) or none.
        self._block = [0, 0, 0, 0]
        self._block_w = -1.0
        self._block_cold = False
        self._emit = emit

    def observe(self, event: bool, side: int, w: float, key: int | None, cold: bool) -> None:
        """Count one request this test looks at (the intake skips the others): an event or not."""
        self.requests[side] += 1
        if key is not None and self._keys.full(key):
            if event:
                self.dropped_by_key_cap += 1
            return
        if w != self._block_w or cold is not self._block_cold:
            self.close_block()
            self._block_w = w
            self._block_cold = cold
        block = self._block
        block[side] += 1
        if event:
            if key is not None:
                self._keys.admit(key)
            self.events[side] += 1
            block[2 + side] += 1
        if block[STABLE] + block[CANARY] >= BLOCK_REQUESTS:
            self.close_block()

    def close_block(self) -> None:
        """Emit the open block if it can say anything: events, and requests of both versions."""
        stable_requests, canary_requests, stable_events, canary_events = self._block
        self._block = [0, 0, 0, 0]
        if (stable_events or canary_events) and stable_requests and canary_requests:
            self._emit(Block(self.name, stable_requests, canary_requests, stable_events, canary_events,
                             self._block_cold))

    def prime(self, events: Events, key: int) -> None:
        """What `observe` does to the key cap, and nothing else."""
        event = events[self.index]
        if event is not None and not self._keys.full(key) and event:
            self._keys.admit(key)

    def seen(self) -> EventSeen:
        return EventSeen((self.requests[STABLE], self.requests[CANARY]),
                         (self.events[STABLE], self.events[CANARY]), self.dropped_by_key_cap)

    def state(self) -> dict[str, object]:
        return {
            "requests": list(self.requests),
            "events": list(self.events),
            "dropped_by_key_cap": self.dropped_by_key_cap,
            "block": list(self._block),
            "block_weight": None if self._block_w < 0.0 else self._block_w,
            "block_cold": self._block_cold,
        }

    def restoring(self, state: object, where: str) -> Callable[[], None]:
        """Check `state` against this lane; return what puts it in force (nothing changes before)."""
        keys = ("requests", "events", "dropped_by_key_cap", "block", "block_weight", "block_cold")
        fields = saved.mapping(state, where, keys)
        requests = saved.counts(fields["requests"], f"{where}.requests", 2)
        events = saved.counts(fields["events"], f"{where}.events", 2)
        dropped = saved.count(fields["dropped_by_key_cap"], f"{where}.dropped_by_key_cap")
        block = saved.counts(fields["block"], f"{where}.block", 4)
        block_w = saved.optional_number(fields["block_weight"], f"{where}.block_weight")
        if block_w is not None and not 0.0 < block_w < 1.0:
            raise saved.fail(f"{where}.block_weight", f"expected a weight in (0, 1), got {block_w!r}")
        if block_w is None and any(block):
            raise saved.fail(f"{where}.block", "an open block with requests needs its block_weight")
        cold = saved.flag(fields["block_cold"], f"{where}.block_cold")

        def commit() -> None:
            self.requests, self.events, self.dropped_by_key_cap = requests, events, dropped
            self._block, self._block_w, self._block_cold = block, -1.0 if block_w is None else block_w, cold

        return commit
