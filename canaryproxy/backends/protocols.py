"""The small protocols through which processes share one rollout.

Each has a single-process implementation (backends/memory.py, backends/file.py) chosen by name
in config; a shared one (Redis) plugs in behind the same protocols. What they promise is held by
one contract suite, tests/backends/, run against every implementation.

* `RolloutStore`: the rollout state, written only by compare-and-set on its generation. A writer
  names the generation it read (None: "I saw no readable state"), and, when it writes as the
  leader, its fencing token; the store refuses a write whose generation or token is stale
  (`StateConflict`, `Fenced`), so a paused old leader can never overwrite its successor's
  decisions and two commands never both apply to the same state. `watch` delivers the state
  stored now and then every accepted state, in order, to every watcher: it is how each process
  puts the weight in force.
* `Leadership`: who runs the automatic evaluation. Acquiring gives a fencing token larger than
  every token given before; `renew` keeps it (StateError when the store cannot be reached); a holder that fails to renew in time loses it, and
  the next holder's token is larger.
* `OutcomeFeed`: how what each process observed reaches the one evidence (windows and judge)
  that decides. To the data plane it is one more outcome sink: `record` publishes, on the
  request path, and never blocks or raises. A shared feed also carries accepted feedback
  (`record_feedback`, False when it cannot take more).
* `OutcomeLog`: the shared feed as a log every process reads in the same order (`read_from` a
  position), with the judge's checkpoint beside it — how each process keeps an identical copy of
  the evidence, and a new one catches up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from canaryproxy.core.evidence_events import EvidenceEvent
from canaryproxy.core.stages import RolloutState
from canaryproxy.core.types import Feedback, Observed, ShadowPair


class RolloutStore(Protocol):
    def describe(self) -> str:
        """Where the state lives, for the status view and log lines."""
        ...

    async def load(self) -> RolloutState | None:
        """The stored state; None when there is none (a fresh rollout). StateError when there is
        one that cannot be read (corrupt, unreachable)."""
        ...

    async def compare_and_set(self, state: RolloutState, expected: int | None, token: int | None) -> None:
        """Store `state` if the stored generation is still `expected` (None: only if no readable
        state is stored) and, when `token` is given, if it is still the current fencing token.
        Raises StateConflict, Fenced or StateError (nothing stored), or NotDurable (stored in
        memory, not on disk)."""
        ...

    def watch(self) -> AsyncIterator[RolloutState]:
        """The state stored now (if any), then every state stored after it, in the order stored."""
        ...


class Leadership(Protocol):
    @property
    def token(self) -> int | None:
        """The fencing token while this process leads, else None."""
        ...

    async def acquire(self) -> int | None:
        """Lead if nobody else does: the new (or still held) fencing token, or None."""
        ...

    async def renew(self) -> bool:
        """Keep leading; False (and `token` None) when the lease was lost."""
        ...

    async def release(self) -> None:
        """Stop leading now, so another process need not wait for the lease to expire."""
        ...

    def forget(self) -> None:
        """Stop leading at once without telling the lease store (which cannot be reached)."""
        ...


class OutcomeFeed(Protocol):
    def record(self, outcome: Observed) -> None:
        """Publish one finished request. On the request path: O(1), never blocks, never raises."""
        ...


Position = str  # where in the shared outcome log; "0-0" is before the first entry


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of the shared outcome log: a batch of records, the feedback accepted and the
    shadow pairs compared meanwhile, then the events published after."""

    position: Position
    records: Sequence[Observed]
    events: Sequence[EvidenceEvent]
    feedback: Sequence[Feedback] = ()
    pairs: Sequence[ShadowPair] = ()


class OutcomeLog(Protocol):
    def announce(self, event: EvidenceEvent) -> None:
        """Publish an event behind every record published before it. Never blocks or raises."""
        ...

    def read_from(self, position: Position) -> AsyncIterator[Entry | None]:
        """Entries after `position` in log order, forever; None when caught up (nothing new for
        a while). StateError when the log cannot be read."""
        ...

    async def load_checkpoint(self) -> tuple[Position, Mapping[str, object]] | None:
        """The judge's saved state and the position it covers, or None."""
        ...

    async def save_checkpoint(self, position: Position, judge: Mapping[str, object]) -> None:
        ...
