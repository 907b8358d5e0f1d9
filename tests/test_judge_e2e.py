"""The judge end to end: a real proxy in front of real upstreams, no operator rules, and a canary
whose failure rate rises is rolled back on the judge's verdict alone."""

import asyncio
import itertools
import math

import aiohttp
from aiohttp import web

from tests.support import eventually

JUDGE_ONLY_PLAN = {
    # A long first stage: the canary must be rolled back from it, never promoted past it.
    "stages": [{"weight": 50, "hold": "60s"}, {"weight": 100, "hold": "60s"}],
    "min_requests": 5,
    "max_hold": "120s",
    "evaluate_every": "50ms",
    "rules": [],
    "judge": {"enabled": True},
}
USERS = 200


async def send_requests(port: int, served: list[tuple[str, int]]) -> None:
    """Sticky users sending one request after another through the proxy, until cancelled."""
    async with aiohttp.ClientSession() as client:
        for i in itertools.count():
            headers = {"x-user-id": f"user-{i % USERS}"}
            async with client.get(f"http://127.0.0.1:{port}/v1/models", headers=headers) as response:
                await response.read()
                served.append((response.headers["x-canary-version"], response.status))


async def test_the_judge_alone_rolls_back_a_canary_whose_failures_rise(upstreams, make_proxy):
    stable, canary = upstreams
    failing = {"every": 0}  # 0: healthy; n: every n-th canary request fails
    answered = itertools.count()

    async def models(request: web.Request) -> web.Response:
        if failing["every"] and next(answered) % failing["every"] == 0:
            return web.json_response({"error": {"message": "model crashed"}}, status=500)
        return web.json_response({"data": []})

    canary.on("GET", "/v1/models", models)
    proxy = await make_proxy(rollout=JUDGE_ONLY_PLAN)
    controller = proxy.controller
    assert controller.rules.rules == () and controller.judge is not None
    served: list[tuple[str, int]] = []
    traffic = asyncio.create_task(send_requests(proxy.data_port, served))
    try:
        # A healthy canary first: the judge sees both versions and lets the stage hold.
        await eventually(lambda: sum(role == "canary" for role, _ in served) >= 200, timeout=20)
        assert controller.state.phase.value == "progressing" and controller.rollbacks == 0
        # The latency tests' thresholds were fixed from stable's window: its p95 and p99.
        await eventually(lambda: controller.judge.latency_thresholds is not None, timeout=10)
        p95, p99 = controller.judge.latency_thresholds
        assert 0 < p95 <= p99 < 1.0
        failing["every"] = 2
        await eventually(lambda: controller.state.phase.value == "rolled_back", timeout=20)
    finally:
        traffic.cancel()
        await asyncio.gather(traffic, return_exceptions=True)

    assert proxy.weight == 0
    assert any(status == 500 for role, status in served if role == "canary")
    assert all(status == 200 for role, status in served if role == "stable")
    (rollback,) = [d for d in controller.decisions if d["after"] and d["after"]["phase"] == "rolled_back"]
    assert rollback["trigger"] == "judge"
    assert rollback["summary"].startswith("rolled back from 50%: judge:errors fail: judge: failed requests")
    (verdict,) = rollback["verdicts"]
    assert verdict["source"] == "judge:errors" and verdict["status"] == "fail"
    evidence = verdict["details"]
    assert evidence["log_e_value"] >= math.log(evidence["threshold"])
    # Stable never failed: the evidence is canary failures alone, so there is no finite ratio.
    assert evidence["stable"]["events"] == 0 and evidence["ratio"] is None
    assert evidence["canary"]["events"] > 0
    assert "on canary only" in verdict["reason"]
    # The crossing came after the healthy stretch: the canary had served those requests already.
    assert evidence["observed"]["canary"] >= 200
