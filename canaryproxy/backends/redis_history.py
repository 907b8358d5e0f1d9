"""What every replica shows alike: the decision record and audit log as bounded Redis streams, and
the replicas seen recently as a hash of heartbeats.

A record is appended where it was made (that process's record and log line stay immediate) and
published; every other process reads it from the stream into its own record. Streams are capped
(`XADD ... MAXLEN ~`), so the shared history is bounded like the in-memory one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from canaryproxy.aio import cancel_and_wait
from canaryproxy.backends.redis import RedisSpace
from canaryproxy.errors import StateError

log = logging.getLogger("canaryproxy.redis")

HISTORY_LENGTH = 1000  # entries kept per shared stream
REPLICA_FORGOTTEN_AFTER = 60.0  # seconds without a heartbeat before a replica is not listed


class RedisHistory:
    def __init__(self, space: RedisSpace, replica: str, *, length: int = HISTORY_LENGTH,
                 read_every: float = 0.2) -> None:
        self.space = space
        self.replica = replica
        self.length = length
        self.read_every = read_every
        self._pending: list[tuple[str, str]] = []  # (stream, JSON) not yet sent
        self._positions: dict[str, str] = {}
        self._readers: dict[str, Any] = {}  # stream -> callable taking another replica's record
        self.replicas_seen: list[dict[str, Any]] = []  # the last heartbeat read
        self._task: asyncio.Task[None] | None = None

    # --- publishing ----------------------------------------------------------------------

    def publish(self, stream: str, record: dict[str, Any]) -> None:
        """Queue `record` for the shared `stream`. Never blocks or raises."""
        if len(self._pending) < 10 * self.length:
            self._pending.append((stream, json.dumps(record, sort_keys=True)))

    async def _send(self) -> None:
        while self._pending:
            stream, document = self._pending[0]
            await self.space.client.xadd(self.space.key(stream), {"r": self.replica, "d": document},
                                         maxlen=self.length, approximate=True)
            self._pending.pop(0)

    # --- reading -------------------------------------------------------------------------

    async def recent(self, stream: str, count: int) -> list[dict[str, Any]]:
        """The newest `count` records of `stream`, oldest first; remembers where they end."""
        try:
            entries = await self.space.client.xrevrange(self.space.key(stream), count=count)
        except (RedisError, OSError) as exc:
            raise StateError(f"{self.space.describe()}: cannot read {stream}: {exc}") from None
        self._positions[stream] = _id(entries[0][0]) if entries else "0-0"
        return [record for _, fields in reversed(entries) if (record := _record(fields)) is not None]

    def follow(self, stream: str, take: Any) -> None:
        """Hand every record another replica adds to `stream` to `take`, from where `recent` ended
        (from the stream's beginning if `recent` could not read it)."""
        self._positions.setdefault(stream, "0-0")
        self._readers[stream] = take

    async def _read(self) -> None:
        if not self._readers:
            return
        reply = await self.space.client.xread(
            {self.space.key(s): self._positions[s] for s in self._readers}, count=100)
        for key, entries in reply or ():
            stream = (key.decode() if isinstance(key, bytes) else key)[len(self.space.prefix):]
            for entry_id, fields in entries:
                self._positions[stream] = _id(entry_id)
                if fields.get(b"r", b"").decode() != self.replica and (record := _record(fields)) is not None:
                    self._readers[stream](record)

    # --- replicas ------------------------------------------------------------------------

    async def heartbeat(self, info: dict[str, Any]) -> None:
        """Say this replica is alive, with what it has in force; refresh the list of replicas."""
        key = self.space.key("replicas")
        now = time.time()
        try:
            await self.space.client.hset(key, self.replica, json.dumps({**info, "seen": now}))
            raw = await self.space.client.hgetall(key)
        except (RedisError, OSError) as exc:
            raise StateError(f"{self.space.describe()}: heartbeat failed: {exc}") from None
        seen, gone = [], []
        for name, document in raw.items():
            entry = json.loads(document)
            if now - float(entry.get("seen", 0)) > REPLICA_FORGOTTEN_AFTER:
                gone.append(name)
            else:
                seen.append({"replica": name.decode(), **entry})
        if gone:
            await self.space.client.hdel(key, *gone)
        self.replicas_seen = sorted(seen, key=lambda e: e["replica"])

    # --- the loop ------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="canaryproxy-shared-history")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        try:
            await asyncio.wait_for(self._send(), 1.0)
        except (RedisError, OSError, asyncio.TimeoutError):
            pass

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.read_every)
            try:
                await self._send()
                await self._read()
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("shared history unavailable (%s); kept here until Redis answers", exc)
                failing = True


def _id(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _record(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    try:
        record = json.loads(fields[b"d"])
    except (KeyError, ValueError):
        return None
    return record if isinstance(record, dict) else None
