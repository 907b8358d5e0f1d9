"""A shadow stage across replicas: real `canaryproxy run` processes on a real redis-server. Each
replica copies its own share; the pairs travel the shared outcome log, so the leader's paired
tests see every replica's, and the rollback reaches them all."""

from __future__ import annotations

import asyncio

import pytest

from tests.fleet import Fleet, spread_traffic
from tests.redis_server import RedisServer
from tests.shadow.conftest import CHAT, words_handler
from tests.support import Upstream

SHADOW_PLAN = """\
  stages: [{shadow: 100, hold: 200ms}, {weight: 5, hold: 1h}]
  min_requests: 30
  max_hold: 1h
  evaluate_every: 100ms
  judge: {enabled: true}"""


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis", persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def chat_upstreams():
    stable, canary = Upstream("stable"), Upstream("canary")
    stable.on("POST", CHAT, words_handler(["the", "answer", "is", "42"]))
    canary.on("POST", CHAT, words_handler(["the", "answer", "is", "42", "and", "then", "some", "more"]))
    await stable.start()
    await canary.start()
    yield stable, canary
    await stable.stop()
    await canary.stop()


async def test_pairs_from_every_replica_reach_the_leader_and_the_rollback_reaches_every_replica(
        tmp_path, redis, chat_upstreams):
    stable, canary = chat_upstreams
    fleet = Fleet(tmp_path, redis, stable.url, canary.url, SHADOW_PLAN, n=2)
    await fleet.start()
    try:
        await fleet.leader()
        await fleet.wait_for(lambda s: all(x["shadow"]["share"] == 100 for x in s), timeout=10)
        served: dict[str, int] = {}
        for round_ in range(40):
            counts = await spread_traffic(fleet.live, 20, concurrency=4, first_user=round_ * 20)
            for key, count in counts.items():
                served[key] = served.get(key, 0) + count
            statuses = await fleet.statuses()
            if all(x["phase"] == "rolled_back" for x in statuses):
                break
        else:
            raise AssertionError(f"not rolled back: {statuses}")
        assert not any(key.endswith(":canary") for key in served), served  # no user got the canary
        assert all(x["weight"] == 0 and x["shadow"]["share"] == 0 for x in statuses)
        local = [x["shadow"]["this_process"]["paired"] for x in statuses]
        assert all(n > 0 for n in local), local  # both replicas copied and paired
        leader = next(x for x in statuses if x["coordination"]["leads"])
        assert leader["shadow"]["pairs"]["pairs"] >= sum(local) - 40  # all but what was in flight
        assert any("judge:shadow_" in d["summary"] for d in (await fleet.replicas[0].get("/admin/decisions?limit=50"))["decisions"]
                   if d.get("after") and d["after"]["phase"] == "rolled_back")
    finally:
        await fleet.stop()
        await asyncio.sleep(0)
