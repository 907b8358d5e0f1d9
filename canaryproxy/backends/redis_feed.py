"""The outcome feed on Redis: every process's finished requests, in one stream, for the evidence.

Publishing is on the request path, so it only appends the request's compact record
(core/observation.py, ~62 bytes) to an in-memory batch; a background task sends the batch every
`flush_every` seconds as one stream entry (`XADD outcomes MINID ~ <now - retention> * r <replica>
b <records>`), which also trims what no window can need any more. The batch is bounded: while
Redis is away records accumulate up to `max_buffered`, then new ones are dropped and counted —
a request never waits for Redis.

Consumers read the stream from a position (`read_from`), decode each entry's records and hand
them on in stream order, which is the same order for every consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

from redis.exceptions import RedisError

from canaryproxy.aio import cancel_and_wait
from canaryproxy.backends.redis import RedisSpace
from canaryproxy.core.observation import Observation, decode_all, encode
from canaryproxy.core.types import Observed, ObservedSink

log = logging.getLogger("canaryproxy.redis")

Position = str  # a stream entry id, "0-0" for the beginning


class RedisOutcomeFeed:
    def __init__(self, space: RedisSpace, replica: str, *, retention: float, flush_every: float = 0.1,
                 max_buffered: int = 200_000) -> None:
        self.space = space
        self.replica = replica
        self.retention = retention
        self.flush_every = flush_every
        self.max_buffered = max_buffered
        self._batch: list[bytes] = []
        self._sinks: list[ObservedSink] = []
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
        if not self._batch:
            return True
        batch, self._batch = self._batch, []
        minimum = int((time.time() - self.retention) * 1000)
        try:
            await self.space.client.xadd(
                self.space.key("outcomes"), {"r": self.replica, "b": b"".join(batch)},
                minid=minimum, approximate=True,
            )
        except (RedisError, OSError) as exc:
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

    def subscribe(self, sink: ObservedSink) -> None:
        self._sinks.append(sink)

    async def read_from(self, position: Position, *, block: float = 1.0
                        ) -> AsyncIterator[tuple[Position, Sequence[Observation]]]:
        """Entries after `position`, oldest first, then new ones as they come (waiting up to
        `block` seconds per read). Raises RedisError when Redis is away."""
        key = self.space.key("outcomes")
        while True:
            reply = await self.space.client.xread({key: position}, count=500, block=int(block * 1000))
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    position = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    try:
                        records = decode_all(fields[b"b"])
                    except (KeyError, ValueError) as exc:
                        log.error("skipping an unreadable outcome batch %s: %s", position, exc)
                        continue
                    yield position, records

    def deliver(self, records: Sequence[Observation]) -> None:
        for sink in self._sinks:
            for record in records:
                sink.record(record)
