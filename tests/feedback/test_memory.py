"""The endpoint's bounded memories: eviction order, expiry, rate, and their cost per entry
(tracemalloc), the numbers config/feedback.py states."""

from __future__ import annotations

import tracemalloc

from canaryproxy.core.types import Role
from canaryproxy.feedback.memory import LocalClaims, RateLimiter, RequestIds
from canaryproxy.proxy.attribution import new_request_id

N = 20_000


def done(coroutine):
    """The value of a coroutine that never waits (LocalClaims' never do), without an event loop,
    whose own allocations would blur the measurement."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the coroutine waited")


def bytes_per_entry(fill) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = fill()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert kept is not None
    return grown / N


def test_request_ids_cost_about_200_bytes_an_entry():
    def fill():
        cache = RequestIds(N)
        for i in range(N):  # the id is counted: the cache keeps it after its outcome is gone
            cache.remember(new_request_id(), Role.CANARY, 12.5, 1.7e9 + i, i)
        return cache

    per_entry = bytes_per_entry(fill)
    print(f"request-id cache: {per_entry:.0f} bytes per entry")
    assert 100 < per_entry < 260, per_entry


def test_claims_cost_about_200_bytes_an_entry():
    ids = [new_request_id() for _ in range(N)]  # the post's id: the claim keeps its own key

    def fill():
        claims = LocalClaims(N, max_age=1e9)  # nothing expires while it fills
        for i, rid in enumerate(ids):
            assert done(claims.claim(rid, "thumbs", 3600, float(i))) is True
        return claims

    per_entry = bytes_per_entry(fill)
    print(f"claims: {per_entry:.0f} bytes per entry")
    assert 100 < per_entry < 260, per_entry


def test_request_ids_are_fifo_and_a_reused_id_is_the_newest():
    cache = RequestIds(3)
    for rid in ("a", "b", "c"):
        cache.remember(rid, Role.STABLE, 0.0, 1.0, None)
    cache.remember("a", Role.CANARY, 25.0, 2.0, 99)  # reused: now the newest, with its new routing
    cache.remember("d", Role.STABLE, 0.0, 3.0, None)  # evicts b, the oldest
    assert cache.get("b") is None and len(cache) == 3
    a = cache.get("a")
    assert a is not None and (a.role, a.weight, a.routed_at, a.key_hash) == (Role.CANARY, 25.0, 2.0, 99)
    assert cache.get("c") is not None and cache.get("d") is not None


async def test_claims_expire_after_max_age_and_are_bounded():
    claims = LocalClaims(entries=2, max_age=10.0)
    assert await claims.claim("r1", "thumbs", 10, now=0.0)
    assert not await claims.claim("r1", "thumbs", 10, now=9.9)
    assert await claims.claim("r1", "rating", 10, now=1.0)
    assert await claims.claim("r1", "thumbs", 10, now=10.0)  # expired, then claimed anew
    assert len(claims) == 2
    assert await claims.claim("r2", "thumbs", 10, now=10.5)  # full: the oldest goes
    assert claims.evicted == 1 and len(claims) == 2
    await claims.release("r2", "thumbs")
    assert await claims.claim("r2", "thumbs", 10, now=10.6)


def test_the_rate_limiter_refills_and_forgets_the_oldest_client():
    limiter = RateLimiter(rate=2.0, burst=2, clients=2)
    assert limiter.take("a", 0.0) == 0 and limiter.take("a", 0.0) == 0
    assert limiter.take("a", 0.0) == 0.5  # one token comes back in half a second
    assert limiter.take("a", 0.5) == 0
    limiter.take("b", 0.5)
    limiter.take("c", 0.5)  # a is forgotten
    assert len(limiter) == 2 and limiter.take("a", 0.5) == 0
