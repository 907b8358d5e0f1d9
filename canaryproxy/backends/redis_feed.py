"""The outcome feed on Redis: every process's finished requests, in one stream, for the evidence.

Publishing is on the request path, so it only appends the request's compact record
(core/observation.py, ~66 bytes) to an in-memory batch; a background task sends the batch every
`flush_every` seconds as one stream entry (`XADD outcomes MINID ~ <now - retention> * r <replica>
b <records>`), which also trims what no window can need any more. The batch is bounded: while
Redis is away records accumulate up to `max_buffered`, then new ones are dropped and counted —
a request never waits for Redis.

Accepted feedback (core.types.Feedback, from the feedback endpoint of any process) travels in the
same entries as JSON in field `f`, after the entry's records: it is rare next to requests, and an
entry without `f` (an older writer's) reads as one without feedback. It is bounded like the
records: `record_feedback` answers False when `max_buffered` are waiting, and the endpoint then
refuses the post (503) instead of losing it silently.

Evidence events (a rollout restarts, the judge's latency baseline is fixed) travel in the same
entries, after the entry's records and feedback, so every consumer applies them at the same point.

Consumers read the stream from a position (`read_from`), decode each entry and hand it on in
stream order, which is the same order for every consumer. The judge's checkpoint (its state and
the position it covers) is one more key beside the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from canaryproxy.aio import cancel_and_wait
from canaryproxy.backends.redis import RedisSpace
from canaryproxy.backends.protocols import Entry, Position
from canaryproxy.core.evidence_events import EvidenceEvent, event_from_dict
from canaryproxy.core.observation import decode_all, decode_pairs, encode, encode_pair
from canaryproxy.core.types import Feedback, FeedbackKind, Observed, Role, ShadowPair
from canaryproxy.errors import StateError

log = logging.getLogger("canaryproxy.redis")

READ_COUNT = 200  # entries per read


class RedisOutcomeFeed:
    def __init__(self, space: RedisSpace, replica: str, *, retention: float, flush_every: float = 0.1,
                 max_buffered: int = 200_000) -> None:
        self.space = space
        self.replica = replica
        self.retention = retention
        self.flush_every = flush_every
        self.max_buffered = max_buffered
        self._batch: list[bytes] = []
        self._events: list[dict[str, Any]] = []
        self._feedback: list[dict[str, Any]] = []
        self._pairs: list[bytes] = []
        self.published = 0  # records sent to Redis
        self.dropped = 0  # records dropped because the buffer was full
        self.failed_flushes = 0
        self._flusher: asyncio.Task[None] | None = None

    # --- publishing (every process) --------------------------------------------------------

    def record(self, outcome: Observed) -> None:
        batch = self._batch
        if len(batch) >= self.max_buffered:
            self.dropped += 1
            return
        batch.append(encode(outcome))

    def record_feedback(self, feedback: Feedback) -> bool:
        """Publish one accepted feedback record; False (nothing kept) when the buffer is full."""
        if len(self._feedback) >= self.max_buffered:
            return False
        self._feedback.append(feedback_to_dict(feedback))
        return True

    def record_pair(self, pair: ShadowPair) -> None:
        """Publish one shadow pair (dropped, counted, when the buffer is full)."""
        if len(self._pairs) >= self.max_buffered:
            self.dropped += 1
            return
        self._pairs.append(encode_pair(pair))

    def announce(self, event: EvidenceEvent) -> None:
        """Publish an evidence event behind every record published before it."""
        self._events.append(event.to_dict())

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="canaryproxy-outcome-feed")

    async def stop(self) -> None:
        await cancel_and_wait(self._flusher)
        self._flusher = None
        await self.flush()  # what is left, once, if Redis is there

    @property
    def buffered(self) -> int:
        return len(self._batch)

    async def flush(self) -> bool:
        """Send the batch as one entry. False (the batch kept) when Redis refused it."""
        if not self._batch and not self._events and not self._feedback and not self._pairs:
            return True
        pairs, self._pairs = self._pairs, []
        batch, self._batch = self._batch, []
        events, self._events = self._events, []
        feedback, self._feedback = self._feedback, []
        minimum = int((time.time() - self.retention) * 1000)
        fields: dict[str, str | bytes] = {"r": self.replica, "b": b"".join(batch)}
        if feedback:
            fields["f"] = json.dumps(feedback)
        if pairs:
            fields["p"] = b"".join(pairs)
        if events:
            fields["e"] = json.dumps(events)
        try:
            await self.space.client.xadd(self.space.key("outcomes"), fields,  # type: ignore[arg-type]
                                         minid=minimum, approximate=True)
        except (RedisError, OSError) as exc:
            self._events = events + self._events  # events are few and must not be lost
            self._feedback = (feedback + self._feedback)[-self.max_buffered:]  # the newest are kept
            self._pairs = (pairs + self._pairs)[-self.max_buffered:]
            self.failed_flushes += 1
            if self.failed_flushes == 1 or self.failed_flushes % 100 == 0:
                log.warning("cannot publish %d outcomes to %s (%s); keeping them, up to %d",
                            len(batch), self.space.describe(), exc, self.max_buffered)
            room = self.max_buffered - len(self._batch)
            kept = batch[-room:] if room > 0 else []
            self.dropped += len(batch) - len(kept)
            self._batch = kept + self._batch
            return False
        self.published += len(batch)
        return True

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_every)
            await self.flush()

    # --- consuming -------------------------------------------------------------------------

    async def read_from(self, position: Position, *, block: float = 1.0) -> AsyncIterator[Entry | None]:
        """Entries after `position`, oldest first, then new ones as they come; None after each read
        that reached the end of the log (the reader is caught up). StateError when Redis is away."""
        key = self.space.key("outcomes")
        while True:
            try:
                reply = await self.space.client.xread({key: position}, count=READ_COUNT, block=int(block * 1000))
            except (RedisError, OSError) as exc:
                raise StateError(f"{self.space.describe()}: cannot read outcomes: {exc}") from None
            read = 0
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    read += 1
                    position = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    entry = _decode_entry(position, fields)
                    if entry is not None:
                        yield entry
            if read < READ_COUNT:
                yield None  # this read reached the end of the log

    async def load_checkpoint(self) -> tuple[Position, Mapping[str, object]] | None:
        try:
            raw = await self.space.client.get(self.space.key("judge"))
        except (RedisError, OSError) as exc:
            raise StateError(f"{self.space.describe()}: cannot read the judge checkpoint: {exc}") from None
        if raw is None:
            return None
        try:
            document = json.loads(raw)
            return str(document["position"]), document["judge"]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring an unreadable judge checkpoint: %s", exc)
            return None

    async def save_checkpoint(self, position: Position, judge: Mapping[str, object]) -> None:
        document = json.dumps({"position": position, "saved_at": time.time(), "judge": judge})
        try:
            await self.space.client.set(self.space.key("judge"), document)
        except (RedisError, OSError) as exc:
            raise StateError(f"{self.space.describe()}: cannot save the judge checkpoint: {exc}") from None


def _decode_entry(position: Position, fields: Mapping[bytes, bytes]) -> Entry | None:
    try:
        records = decode_all(fields.get(b"b", b""))
        events = [event_from_dict(e) for e in json.loads(fields[b"e"])] if b"e" in fields else []
        feedback = [feedback_from_dict(f) for f in json.loads(fields[b"f"])] if b"f" in fields else []
        pairs = decode_pairs(fields[b"p"]) if b"p" in fields else []
    except (ValueError, TypeError, KeyError) as exc:
        log.error("skipping an unreadable outcome batch %s: %s", position, exc)
        return None
    return Entry(position, records, events, feedback, pairs)


def feedback_to_dict(feedback: Feedback) -> dict[str, Any]:
    return {"role": feedback.role.value, "request_id": feedback.request_id, "routed_at": feedback.routed_at,
            "weight": feedback.weight, "key_hash": feedback.key_hash, "name": feedback.name,
            "value": feedback.value, "negative": feedback.negative, "received_at": feedback.received_at,
            "kind": feedback.kind.value}


def feedback_from_dict(document: Mapping[str, Any]) -> Feedback:
    """ValueError, TypeError or KeyError for a document that is not one."""
    value = document["value"]
    key_hash = document["key_hash"]
    if not isinstance(value, (bool, int, float, str)) or not (key_hash is None or isinstance(key_hash, int)):
        raise ValueError(f"not a feedback record: {document!r}")
    return Feedback(Role(document["role"]), str(document["request_id"]), float(document["routed_at"]),
                    float(document["weight"]), key_hash, str(document["name"]), value,
                    bool(document["negative"]), float(document["received_at"]), FeedbackKind(document["kind"]))
