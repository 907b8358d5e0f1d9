"""Feedback with two real `canaryproxy run` processes sharing one rollout through a real
redis-server: posted to the replica that did not serve the request, counted once at the leader,
and a repeat on either replica answered as a duplicate. And with Redis away, refused (503) with
nothing counted."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from canaryproxy.core.types import Role
from tests.feedback.conftest import HEADER, KEY, feedback_section, post
from tests.fleet import Fleet
from tests.redis_server import RedisServer, redis_server  # noqa: F401  (a fixture)
from tests.support import eventually

ROLLOUT = """\
  stages: [{weight: 50, hold: 60s}, {weight: 100, hold: 1s}]
  min_requests: 1
  evaluate_every: 100ms
  judge: {enabled: false}"""

FEEDBACK = f"""feedback:
  enabled: true
  keys: ["{KEY}"]
"""


def metric(text: str, family: str, **labels: str) -> float:
    """The value of one sample in a /metrics text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(family + (f"{{{wanted}}}" if labels else "")) + r" ([0-9.e+]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
async def fleet(tmp_path, redis_server, upstreams):
    stable, canary = upstreams
    fleet = Fleet(tmp_path, redis_server, stable.url, canary.url, ROLLOUT, n=2, extra=FEEDBACK)
    await fleet.start()
    yield fleet
    await fleet.stop()


async def served_by(port: int, user: str) -> tuple[str, str]:
    async with aiohttp.ClientSession() as client:
        async with client.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                               json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                               headers={"X-User-Id": user}) as response:
            await response.read()
            return response.headers[HEADER], response.headers["X-Canary-Version"]


async def test_posted_to_the_other_replica_counted_once_at_the_leader(fleet):
    leader = await fleet.leader()
    serving, other = fleet.replicas
    token, version = await served_by(serving.port, "alice")
    body = {"token": token, "name": "thumbs", "value": False}

    status, _, answer = await post(other.port, body)
    assert (status, answer) == (202, {"status": "accepted"})
    metrics = await other.get("/metrics")
    assert metric(metrics, "canaryproxy_feedback_total", version=version, name="thumbs", verdict="negative") == 1
    assert "canaryproxy_feedback_total{" not in await serving.get("/metrics")  # counted where accepted

    # Repeats on either replica: duplicates, never delivered.
    for replica in (serving, other, serving):
        status, _, answer = await post(replica.port, {**body, "value": True})
        assert (status, answer) == (202, {"status": "duplicate"})
    # A marker after them on each replica: once both arrive, anything delivered before them has too.
    for replica, name in ((serving, "downstream_error"), (other, "downstream_error")):
        marker, _ = await served_by(replica.port, f"marker-{replica.name}")
        status, _, answer = await post(replica.port, {"token": marker, "name": name, "value": True})
        assert answer == {"status": "accepted"}

    async def taken() -> float:
        return metric(await leader.get("/metrics"), "canaryproxy_feedback_taken_total")

    await eventually_async(lambda v: v >= 3, taken)
    assert await taken() == 3  # the first verdict once, the two markers; no duplicate
    for replica in fleet.replicas:  # every replica's evidence took each record once
        assert metric(await replica.get("/metrics"), "canaryproxy_feedback_taken_total") == 3


async def eventually_async(accept, read, timeout: float = 15.0) -> float:
    """Poll an async reading until `accept` takes it, with a deadline (as Fleet.wait_for)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"last value {value}"
        await asyncio.sleep(0.05)


def shared_sections(redis: RedisServer, rollout: str) -> dict:
    return {"coordination": {"backend": "redis", "url": redis.url, "rollout": rollout, "grace": "60s"},
            "rollout": {"stages": [{"weight": 50, "hold": "60s"}, {"weight": 100, "hold": "1s"}],
                        "min_requests": 1, "judge": {"enabled": False}},
            "feedback": feedback_section()}


def in_evidence(proxy) -> dict[str, int]:
    found: dict[str, int] = {}
    for role in (Role.STABLE, Role.CANARY):
        for name, count in proxy.control.evidence.windows.snapshot(role, 60, time.time()).feedback.items():
            found[name] = found.get(name, 0) + count
    return found


async def test_through_the_shared_log_into_the_evidence(redis_server, upstreams, make_proxy):
    proxy = await make_proxy(**shared_sections(redis_server, "one"))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/v1/models") as response:
            token = response.headers[HEADER]
    status, _, answer = await post(proxy.data_port, {"token": token, "name": "thumbs", "value": False})
    assert (status, answer) == (202, {"status": "accepted"})
    assert in_evidence(proxy) == {}  # not straight in: through the log, as every process's is
    await eventually(lambda: in_evidence(proxy) == {"thumbs": 1}, timeout=10)
    assert proxy.shared.evidence.feedback_taken == 1


async def test_with_redis_away_feedback_is_refused_and_nothing_counted(tmp_path, upstreams, make_proxy):
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        proxy = await make_proxy(**shared_sections(redis, "away"))
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{proxy.data_port}/v1/models") as response:
                token = response.headers[HEADER]
    finally:
        redis.stop()
    status, headers, answer = await post(proxy.data_port, {"token": token, "name": "thumbs", "value": True})
    assert status == 503 and headers["Retry-After"] == "1" and answer["reason"] == "unavailable"
    assert "cannot be checked for duplicates" in answer["error"]
    assert proxy.data.feedback.counters.accepted == {}
    assert proxy.shared.feed._feedback == []
    assert in_evidence(proxy) == {}
