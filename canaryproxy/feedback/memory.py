"""The endpoint's bounded memories in one process: request ids → attribution, and the (request id,
name) pairs already counted. Both are FIFO: entries are written once and expire in the order they
were written, so the oldest is both the first to expire and the first to go when full.

Their cost per entry is measured in tests/feedback/test_memory.py (tracemalloc) and stated in
config/feedback.py.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from canaryproxy.core.types import Role
from canaryproxy.feedback.token import Attribution

# role, flags (bit 0: has a key hash), weight in 0.01 % steps, routed_at, key hash: one bytes
# object per entry (53 bytes) instead of a tuple of four objects (~150).
_ENTRY = struct.Struct("<BBHdQ")
_ROLES = (Role.STABLE, Role.CANARY)
_ROLE_CODE = {Role.STABLE: 0, Role.CANARY: 1}


class RequestIds:
    """X-Request-Id → attribution of the latest request that carried it, the newest `entries`.

    A client may choose its request ids: one it reuses names its latest request.
    """

    __slots__ = ("entries", "_map")

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._map: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._map)

    def remember(self, request_id: str, role: Role, weight: float, routed_at: float, key_hash: int | None) -> None:
        entries = self._map
        if request_id in entries:
            del entries[request_id]  # a reused id moves to the back: it is the newest now
        elif len(entries) >= self.entries:
            entries.popitem(last=False)
        entries[request_id] = _ENTRY.pack(_ROLE_CODE[role], key_hash is not None, round(weight * 100),
                                          routed_at, key_hash or 0)

    def get(self, request_id: str) -> Attribution | None:
        packed = self._map.get(request_id)
        if packed is None:
            return None
        role, has_key, weight, routed_at, key_hash = _ENTRY.unpack(packed)
        return Attribution(_ROLES[role], request_id, routed_at, weight / 100, key_hash if has_key else None)


class LocalClaims:
    """Which (request id, name) pairs were counted, in one process, for `max_age` each.

    Bounded to `entries`: when more feedback than that is accepted within `max_age`, the oldest
    pair is forgotten early, and a repeat of it after that would count again (`evicted` says how
    often that was possible). An entry lasts `max_age` from its acceptance, which is at least as
    long as its token or request id stays valid.
    """

    __slots__ = ("entries", "max_age", "evicted", "_until")

    def __init__(self, entries: int, max_age: float) -> None:
        self.entries = entries
        self.max_age = max_age
        self.evicted = 0
        self._until: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    async def claim(self, request_id: str, name: str, ttl: float, now: float) -> bool:
        """True the first time (request id, name) is claimed; False for a repeat. `ttl` is how
        long a repeat can still be valid (Redis uses it; here every entry keeps `max_age`)."""
        until = self._until
        while until:  # forget what expired (oldest first: they were written in time order)
            first = next(iter(until.values()))
            if first > now:
                break
            until.popitem(last=False)
        key = f"{name}\0{request_id}"
        if key in until:
            return False
        if len(until) >= self.entries:
            until.popitem(last=False)
            self.evicted += 1
        until[key] = now + self.max_age
        return True

    async def release(self, request_id: str, name: str) -> None:
        """Forget a claim whose feedback could not be delivered, so that a retry counts."""
        self._until.pop(f"{name}\0{request_id}", None)


class RateLimiter:
    """A token bucket per client address: `rate` per second, up to `burst`; the newest `clients`
    addresses are remembered (a forgotten address starts with a full bucket)."""

    __slots__ = ("rate", "burst", "clients", "_buckets")

    def __init__(self, rate: float, burst: int, clients: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clients = clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str, now: float) -> float:
        """0 when a post from `address` may go ahead now (one token taken), else the seconds
        until one may."""
        buckets = self._buckets
        state = buckets.pop(address, None)
        if state is None:
            tokens = self.burst
            if len(buckets) >= self.clients:
                buckets.popitem(last=False)
        else:
            tokens, at = state
            tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            buckets[address] = (tokens - 1.0, now)
            return 0.0
        buckets[address] = (tokens, now)
        return (1.0 - tokens) / self.rate
