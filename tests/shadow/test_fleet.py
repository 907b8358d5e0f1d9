"""A shadow stage across replicas: real `canaryproxy run` processes on a real redis-server. Each
replica copies its own share; the pairs travel the shared outcome log, so the leader's paired
tests see every replica's, and the rollback reaches them all."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fleet import Fleet, spread_traffic
from tests.redis_server import redis  # noqa: F401  (the fixture)
from tests.shadow.conftest import CHAT, words_handler
from tests.support import Upstream

SHADOW_PLAN = """\
  stages: [{shadow: 100, hold: 200ms}, {weight: 5, hold: 1h}]
  min_requests: 30
  max_hold: 1h
  evaluate_every: 100ms
  judge: {enabled: true}"""


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

        def leader_has_every_replicas_pairs(now: list[dict]) -> bool:
            # A replica's last pairs reach the leader with its next published batch: wait for it.
            leader = next(x for x in now if x["coordination"]["leads"])
            paired = sum(x["shadow"]["this_process"]["paired"] for x in now)
            return leader["shadow"]["pairs"]["pairs"] >= paired - 40  # all but what was in flight

        await fleet.wait_for(leader_has_every_replicas_pairs, timeout=10)
        for replica in fleet.replicas:  # the shared decision record says why, on every replica
            await rollback_recorded(replica)
    finally:
        await fleet.stop()
        await asyncio.sleep(0)


async def rollback_recorded(replica, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        decisions = (await replica.get("/admin/decisions?limit=50"))["decisions"]
        if any("judge:shadow_" in d["summary"] for d in decisions
               if d.get("after") and d["after"]["phase"] == "rolled_back"):
            return
        assert time.monotonic() < deadline, f"{replica.name}: no shadow rollback recorded: {decisions}"
        await asyncio.sleep(0.05)


HOLDING_SHADOW = SHADOW_PLAN.replace("min_requests: 30", "min_requests: 1000000").replace("hold: 200ms", "hold: 1h")


async def test_redis_away_past_the_grace_stops_the_copies_and_they_resume(tmp_path, redis, chat_upstreams):
    stable, canary = chat_upstreams
    fleet = Fleet(tmp_path, redis, stable.url, canary.url, HOLDING_SHADOW, n=2, grace="1s")
    await fleet.start()
    try:
        await fleet.wait_for(lambda s: all(x["shadow"]["this_process"]["share_in_force"] == 100 for x in s),
                             timeout=15)
        redis.stop()
        try:
            await fleet.wait_for(lambda s: all(x["shadow"]["this_process"]["share_in_force"] == 0 for x in s),
                                 timeout=10)
            copies = len(canary.seen)
            counts = await spread_traffic(fleet.live, 40, first_user=1000)
            assert counts.get("200:stable") == 40  # stable unaffected
            assert len(canary.seen) == copies  # fail safe: no copies either
        finally:
            redis.start()
        await fleet.wait_for(lambda s: all(x["shadow"]["this_process"]["share_in_force"] == 100 for x in s),
                             timeout=15)
        await spread_traffic(fleet.live, 20, first_user=2000)
        assert len(canary.seen) > copies
    finally:
        await fleet.stop()
