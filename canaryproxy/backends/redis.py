"""The shared backend on Redis: one rollout for any number of canaryproxy processes.

Every key of a rollout is under `canaryproxy:{<rollout>}:` — the braces are a Redis Cluster hash
tag, so all of a rollout's keys live on one shard and its scripts may touch several of them; two
rollouts can share one Redis. The rollout state is one JSON document (the file backend's format)
at `state`, written only by `CAS_STATE`, a script that checks the writer's fencing token against
`fence` and the generation it read against the stored one, then publishes the new document on
`changes`. Leadership is a lease at `lease` (`SET NX PX`, renewed by a script that checks the
holder), each acquisition taking a new token from `INCR fence`.

redis-py's asyncio client (with hiredis) speaks the protocol; nothing here does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from canaryproxy.backends.file import FORMAT_VERSION
from canaryproxy.core.stages import RolloutState, is_older
from canaryproxy.errors import Fenced, StateConflict, StateError, StoreUnavailable

log = logging.getLogger("canaryproxy.redis")

# KEYS: state, fence. ARGV: document, expected generation ("" = none readable), token ("" = an
# operator's command, not fenced), channel. A stored document that does not decode to a rollout
# state has no generation: only a writer that saw none readable may replace it (the fail-safe).
CAS_STATE = """
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[3] ~= '' and tonumber(ARGV[3]) < fence then
  return {'fenced', fence}
end
local stored = redis.call('GET', KEYS[1])
local generation = nil
if stored then
  local ok, document = pcall(cjson.decode, stored)
  if ok and type(document) == 'table' and type(document['rollout']) == 'table'
      and type(document['rollout']['generation']) == 'number' then
    generation = document['rollout']['generation']
  end
end
if ARGV[2] == '' then
  if generation ~= nil then return {'conflict', generation} end
elseif generation == nil or generation ~= tonumber(ARGV[2]) then
  return {'conflict', generation or -1}
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return {'ok', fence}
"""

# KEYS: lease, fence. ARGV: holder, lease ms, the holder's current token ("" = none).
# Keeps a lease the holder still has (with the same token), else takes a free one with a new token.
ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
  local holder, token = string.match(held, '^(.*)|(%d+)$')
  if holder == ARGV[1] and token == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# KEYS: lease. ARGV: holder|token, lease ms ("0": release). 1 when the lease was still ours.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class RedisSpace:
    """One connection pool and the key names of one rollout."""

    def __init__(self, url: str, rollout: str, *, timeout: float = 2.0) -> None:
        self.url = url
        self.rollout = rollout
        self.timeout = timeout
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=10,
        )
        self.prefix = f"canaryproxy:{{{rollout}}}:"
        self.cas_state = self.client.register_script(CAS_STATE)
        self.acquire = self.client.register_script(ACQUIRE)
        self.renew = self.client.register_script(RENEW)

    def key(self, name: str) -> str:
        return self.prefix + name

    def describe(self) -> str:
        return f"redis {_without_password(self.url)} rollout {self.rollout!r}"

    async def close(self) -> None:
        await self.client.aclose()


class RedisRolloutStore:
    def __init__(self, space: RedisSpace, poll: float = 1.0) -> None:
        self.space = space
        self.poll = poll  # the watch reads the state this often too, in case a message was lost

    def describe(self) -> str:
        return self.space.describe()

    async def load(self) -> RolloutState | None:
        try:
            raw = await self.space.client.get(self.space.key("state"))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{self.describe()}: cannot read the rollout state: {exc}") from None
        return None if raw is None else decode_state(raw, self.describe())

    async def compare_and_set(self, state: RolloutState, expected: int | None, token: int | None) -> None:
        document = json.dumps({"format": FORMAT_VERSION, "saved_at": time.time(), "rollout": state.to_dict()},
                              sort_keys=True)
        space = self.space
        try:
            verdict, value = await space.cas_state(
                keys=[space.key("state"), space.key("fence")],
                args=[document, "" if expected is None else expected, "" if token is None else token,
                      space.key("changes")],
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{self.describe()}: cannot write the rollout state: {exc}") from None
        if verdict == b"fenced":
            raise Fenced(f"fencing token {token} is older than the current leader's ({value}): "
                         "this process no longer leads")
        if verdict == b"conflict":
            stored = None if value == -1 else int(value)
            raise StateConflict(f"the rollout state is at generation {stored}, not {expected}: "
                                "another writer changed it", stored)

    async def watch(self) -> AsyncIterator[RolloutState]:
        """The stored state, then every state published after it, in order. The state is also
        read every `poll` seconds (a message published while this process was cut off is not
        repeated); a state is delivered once, and never after a newer one."""
        last: RolloutState | None = None
        async for state in self._deliveries():
            if last is None or not (is_older(state, last) or state.to_dict() == last.to_dict()):
                last = state
                yield state

    async def _deliveries(self) -> AsyncIterator[RolloutState]:
        try:
            async for state in self._subscribed():
                yield state
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{self.describe()}: the watch lost Redis: {exc}") from None

    async def _subscribed(self) -> AsyncIterator[RolloutState]:
        pubsub = self.space.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.space.key("changes"))
            stored = await self.load()  # after subscribing: nothing written since is missed
            if stored is not None:
                yield stored
            next_read = time.monotonic() + self.poll
            while True:
                wait = max(0.0, next_read - time.monotonic())
                message = await pubsub.get_message(timeout=wait)
                if message is not None:
                    yield decode_state(message["data"], self.describe())
                elif time.monotonic() >= next_read:  # None also stands for a control message
                    next_read = time.monotonic() + self.poll
                    stored = await self.load()
                    if stored is not None:
                        yield stored
        finally:
            try:  # bounded: a Redis that went away must not hold up a shutdown
                await asyncio.wait_for(pubsub.aclose(), self.space.timeout)
            except (RedisError, OSError, asyncio.TimeoutError):
                pass


class RedisLeadership:
    def __init__(self, space: RedisSpace, holder: str, lease: float) -> None:
        self.space = space
        self.holder = holder
        self.lease_ms = max(1, round(lease * 1000))
        self._token: int | None = None

    @property
    def token(self) -> int | None:
        return self._token

    async def acquire(self) -> int | None:
        space = self.space
        try:
            token = await space.acquire(keys=[space.key("lease"), space.key("fence")],
                                        args=[self.holder, self.lease_ms, "" if self._token is None else self._token])
        except (RedisError, OSError) as exc:
            self._token = None
            raise StateError(f"{space.describe()}: cannot take the lease: {exc}") from None
        self._token = None if token is None else int(token)
        return self._token

    async def renew(self) -> bool:
        if self._token is None:
            return False
        try:
            ok = await self.space.renew(keys=[self.space.key("lease")],
                                        args=[f"{self.holder}|{self._token}", self.lease_ms])
        except (RedisError, OSError) as exc:
            self._token = None
            raise StateError(f"{self.space.describe()}: cannot renew the lease: {exc}") from None
        if not ok:
            self._token = None
        return bool(ok)

    async def release(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            try:
                await self.space.renew(keys=[self.space.key("lease")], args=[f"{self.holder}|{token}", 0])
            except (RedisError, OSError) as exc:
                raise StateError(f"{self.space.describe()}: cannot release the lease: {exc}") from None

    def forget(self) -> None:
        self._token = None


def decode_state(raw: bytes | str, where: str) -> RolloutState:
    try:
        document: Any = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
            raise ValueError(f"expected a mapping with format {FORMAT_VERSION}")
        return RolloutState.from_dict(document.get("rollout"))
    except ValueError as exc:
        raise StateError(f"{where}: the stored rollout state is corrupt: {exc}") from None



def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def ping(space: RedisSpace) -> None:
    """Raise StateError when Redis does not answer."""
    try:
        await asyncio.wait_for(space.client.ping(), 2.0)
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        raise StateError(f"{space.describe()}: Redis does not answer: {exc}") from None
