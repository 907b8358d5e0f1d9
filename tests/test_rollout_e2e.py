"""The rollout end to end, with real sockets and a short plan: rollback, alerts, admin API, state."""

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from tests.support import eventually

SHORT_PLAN = {
    "stages": [{"weight": 20, "hold": "300ms"}, {"weight": 50, "hold": "300ms"}, {"weight": 100, "hold": "300ms"}],
    "min_requests": 5,
    "max_hold": "30s",
    "evaluate_every": "50ms",
    "rules": [{"name": "errors", "metric": "error_rate", "above": 0.1, "window": "2s", "for": "200ms",
               "min_samples": 5}],
    "judge": {"enabled": False},
}


class WebhookReceiver:
    def __init__(self) -> None:
        self.received: list[dict] = []
        self.port = 0

    async def start(self) -> None:
        async def hook(request):
            self.received.append(await request.json())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()


@pytest.fixture
async def webhook():
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


class Traffic:
    """Sticky users sending requests through the proxy until stopped."""

    def __init__(self, port: int, users: int = 40) -> None:
        self.port, self.users = port, users
        self.served: list[tuple[str, int]] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as client:
            i = 0
            while True:
                async with client.get(f"http://127.0.0.1:{self.port}/v1/models",
                                      headers={"x-user-id": f"user-{i % self.users}"}) as r:
                    await r.read()
                    self.served.append((r.headers["x-canary-version"], r.status))
                i += 1
                await asyncio.sleep(0.002)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def admin_get(proxy, path: str) -> dict:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}{path}") as r:
            assert r.status == 200
            return await r.json()


async def admin_post(proxy, action: str, body=None, token: str | None = None, raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as client:
        kwargs = ({"data": raw, "headers": {**headers, "Content-Type": "application/json"}}
                  if raw is not None else {"json": body or {}, "headers": headers})
        async with client.post(f"http://127.0.0.1:{proxy.admin_port}/admin/{action}", **kwargs) as r:
            return r.status, await r.json()


async def test_a_canary_that_starts_failing_is_rolled_back_and_alerted(upstreams, make_proxy, webhook):
    stable, canary = upstreams
    failing = {"on": False}

    async def models(request):
        if failing["on"]:
            return web.json_response({"error": {"message": "model crashed"}}, status=500)
        return web.json_response({"data": []})

    canary.on("GET", "/v1/models", models)
    # Stage 2 holds long enough that the canary starts failing while it is there.
    stages = [{"weight": 20, "hold": "300ms"}, {"weight": 50, "hold": "60s"}, {"weight": 100, "hold": "300ms"}]
    proxy = await make_proxy(
        rollout={**SHORT_PLAN, "stages": stages, "max_hold": "120s"},
        alerts={"webhooks": [{"url": f"http://127.0.0.1:{webhook.port}/hook", "format": "generic"}]},
    )
    traffic = Traffic(proxy.data_port)
    traffic.start()
    try:
        await eventually(lambda: proxy.controller.state.stage == 1, timeout=10)
        failing["on"] = True
        await eventually(lambda: proxy.controller.state.phase.value == "rolled_back", timeout=10)
        assert proxy.weight == 0
        served_before = len(traffic.served)
        await eventually(lambda: len(traffic.served) > served_before + 50, timeout=10)
        # Traffic is sequential: the one request in flight at the rollback may have been routed
        # before it. Every request after that one was routed after the rollback.
        after_rollback = traffic.served[served_before + 1:]
    finally:
        await traffic.stop()
    assert {role for role, _ in after_rollback} == {"stable"}, "traffic still reached the canary"
    rollback = await eventually(lambda: [a for a in webhook.received if a["kind"] == "rollback"], timeout=10)
    assert "errors" in rollback[0]["message"] and "error_rate" in rollback[0]["message"]
    decisions = (await admin_get(proxy, "/admin/decisions"))["decisions"]
    final = [d for d in decisions if d["after"] and d["after"]["phase"] == "rolled_back"][0]
    assert final["trigger"] == "rule"
    fired = [v for v in final["verdicts"] if v["status"] == "fail"][0]
    assert fired["source"] == "errors"
    assert fired["details"]["canary_samples"] >= 5 and fired["details"]["threshold"] == 0.1
    assert fired["details"]["canary_value"] > 0.1
    metrics = await _metrics(proxy)
    assert "canaryproxy_rollbacks_total 1.0" in metrics
    assert 'canaryproxy_rollout_phase{phase="rolled_back"} 1.0' in metrics
    assert "canaryproxy_canary_weight 0.0" in metrics


async def _metrics(proxy) -> str:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as r:
            return await r.text()


async def test_a_healthy_canary_is_promoted_through_every_stage(upstreams, make_proxy, webhook):
    proxy = await make_proxy(
        rollout=SHORT_PLAN,
        alerts={"webhooks": [{"url": f"http://127.0.0.1:{webhook.port}/hook", "format": "slack"}]},
    )
    traffic = Traffic(proxy.data_port)
    traffic.start()
    try:
        await eventually(lambda: proxy.controller.state.phase.value == "promoted", timeout=15)
    finally:
        await traffic.stop()
    assert proxy.weight == 100
    transitions = [d for d in proxy.controller.decisions if d["kind"] == "transition"]
    assert [d["after"]["weight"] for d in transitions] == [20, 50, 100, 100]
    promotion = await eventually(lambda: [a for a in webhook.received if "promoted" in a["text"]], timeout=10)
    assert promotion[0]["text"].startswith(":white_check_mark:")


async def test_admin_mutations_need_the_token_and_bad_calls_change_nothing(upstreams, make_proxy, tmp_path):
    audit = tmp_path / "audit.jsonl"
    proxy = await make_proxy(
        rollout={**SHORT_PLAN, "start": "manual"},
        admin={"token": "s3cret"},
        state={"path": str(tmp_path / "state.json"), "audit_log": str(audit)},
    )
    before = proxy.controller.state
    for token, body, raw, expected in [
        (None, {}, None, 401),
        ("wrong", {}, None, 403),
        ("s3cret", None, b"{not json", 400),
        ("s3cret", None, b"[1, 2]", 400),
        ("s3cret", {"weight": 150}, None, 400),
        ("s3cret", {"weight": "10"}, None, 400),
        ("s3cret", {"weight": 10, "colour": "red"}, None, 400),
    ]:
        status, payload = await admin_post(proxy, "weight", body, token=token, raw=raw)
        assert status == expected, payload
        assert payload["error"]["message"]
    status, payload = await admin_post(proxy, "pause", {}, token="s3cret")
    assert status == 409 and "idle" in payload["error"]["message"]
    async with aiohttp.ClientSession() as client:  # a form post, as a hostile page could send
        async with client.post(f"http://127.0.0.1:{proxy.admin_port}/admin/rollback", data={"reason": "x"},
                               headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 415
    assert proxy.controller.state == before and proxy.weight == 0

    status, payload = await admin_post(proxy, "start", {"actor": "alice", "reason": "v2 release"}, token="s3cret")
    assert status == 200 and payload["phase"] == "progressing" and proxy.weight == 20
    status, payload = await admin_post(proxy, "weight", {"weight": 7.5, "reason": "hold here"}, token="s3cret")
    assert status == 200 and payload["phase"] == "paused" and proxy.weight == 7.5

    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(entries) == 11
    assert [e["status"] for e in entries[:2]] == [401, 403] and not entries[0]["accepted"]
    start = entries[9]
    assert start["actor"] == "alice" and start["reason"] == "v2 release" and start["accepted"]
    assert start["before"]["phase"] == "idle" and start["after"]["phase"] == "progressing"
    assert start["remote"] == "127.0.0.1"


async def test_a_corrupt_state_file_means_weight_0_and_paused(upstreams, make_proxy, tmp_path, webhook):
    state = tmp_path / "state.json"
    state.write_text('{"format": 1, "rollout": {"phase": "progressing", "stage": "two"}}')
    proxy = await make_proxy(
        rollout=SHORT_PLAN, state={"path": str(state)}, routing={"weight": 50},
        alerts={"webhooks": [{"url": f"http://127.0.0.1:{webhook.port}/hook"}]},
    )
    assert proxy.weight == 0
    status = await admin_get(proxy, "/admin/status")
    assert status["phase"] == "paused" and "state could not be loaded" in status["pause_reason"]
    alert = await eventually(lambda: webhook.received, timeout=10)
    assert alert[0]["kind"] == "pause" and "corrupt" in alert[0]["message"]
    # The fail-safe state is itself saved: a second restart does not flip back to anything else.
    saved = json.loads(state.read_text())
    assert saved["rollout"]["phase"] == "paused" and saved["rollout"]["weight"] == 0


async def test_status_and_decisions_explain_why_a_stage_is_holding(upstreams, make_proxy):
    proxy = await make_proxy(rollout={**SHORT_PLAN, "min_requests": 1000})
    await eventually(lambda: proxy.controller.evaluations >= 3)
    status = await admin_get(proxy, "/admin/status?window=30s")
    assert status["phase"] == "progressing" and status["stage"]["number"] == 1
    assert "1000" in status["explain"] or "requests" in status["explain"]
    assert status["versions"]["canary"]["requests"] == 0
    assert status["rules"][0]["status"] == "inconclusive"
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/admin/status?window=bogus") as r:
            assert r.status == 400
