"""Counted once: the claim a feedback post takes on its (request id, name) before it is counted.

In one process the claims are `memory.LocalClaims`. With `coordination.backend: redis` a client
may retry on another replica (a load balancer spreads them), so the claim is a Redis key every
replica sees: `SET canaryproxy:{<rollout>}:feedback:<name>:<request id> 1 NX PX <ms>`, where
the expiry is how long the token (or request id) stays valid, so no key outlives its use.

When Redis cannot be reached, `claim` raises `ClaimsUnavailable` and the endpoint answers 503
without counting: accepting unclaimed feedback would count a client's retries as many verdicts
(clients retry exactly when things are flaky), inflating one version's negative share and
possibly rolling back a healthy canary; a refusal with Retry-After loses nothing that the
client retries, and the outcome log that carries feedback to the leader is on the same Redis.
"""

from __future__ import annotations

from typing import Protocol

from redis.exceptions import RedisError

from canaryproxy.backends.redis import RedisSpace


class ClaimsUnavailable(Exception):
    """The shared claims cannot be reached: nothing may be counted."""


class Claims(Protocol):
    async def claim(self, request_id: str, name: str, ttl: float, now: float) -> bool:
        """True the first time; False for a repeat. `ttl`: seconds a repeat could still be valid;
        `now`: monotonic seconds. ClaimsUnavailable when the claims cannot be reached."""
        ...

    async def release(self, request_id: str, name: str) -> None:
        """Forget a claim whose feedback could not be delivered (best effort, never raises)."""
        ...


class RedisClaims:
    __slots__ = ("space",)

    def __init__(self, space: RedisSpace) -> None:
        self.space = space

    def key(self, request_id: str, name: str) -> str:
        # Declared names have no ':' (config/feedback.py), so the key is unambiguous.
        return self.space.key(f"feedback:{name}:{request_id}")

    async def claim(self, request_id: str, name: str, ttl: float, now: float) -> bool:
        try:
            first = await self.space.client.set(self.key(request_id, name), b"1", nx=True,
                                                px=max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            raise ClaimsUnavailable(f"{self.space.describe()}: {exc}") from None
        return bool(first)

    async def release(self, request_id: str, name: str) -> None:
        try:
            await self.space.client.delete(self.key(request_id, name))
        except (RedisError, OSError):
            pass  # the claim expires with the token; a retry is then a duplicate, not a double count
