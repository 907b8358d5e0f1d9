"""Token counts end to end: a canary whose model server stops sending usage while stable still
does. Through a real proxy in front of real aiohttp upstreams, streaming like an OpenAI client.

The seed's token rule (tokens per request above stable's) must neither roll back on the artefact
(estimates on one side, reported prompt + completion counts on the other) nor miss a real ×1.5
regression on the canary; /metrics and the status document say which counts are estimates.
"""

import asyncio
import itertools

import aiohttp
from aiohttp import web

from tests.llm import chat_stream_events
from tests.support import eventually

WORDS = [w + " " for w in "the canary answers with ten words in every single reply".split()]
PLAN = {
    "stages": [{"weight": 50, "hold": "60s"}, {"weight": 100, "hold": "60s"}],
    "min_requests": 5,
    "max_hold": "120s",
    "evaluate_every": "50ms",
    "rules": [{"name": "tokens", "metric": "tokens_per_request", "above_stable": 1.3, "window": "3s",
               "for": "300ms", "min_samples": 20}],
    "judge": {"enabled": False},
}


def streaming(words_of, with_usage: bool):
    """A model server streaming one token per event; usage only if `with_usage` and asked for."""
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in chat_stream_events(words_of(), include_usage=with_usage and asked):
            await response.write(event)
        await response.write_eof()
        return response
    return handler


async def send_streams(port: int, served: list[str]) -> None:
    async with aiohttp.ClientSession() as client:
        for i in itertools.count():
            body = {"model": "m-1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                                   headers={"x-user-id": f"user-{i % 97}"}) as response:
                await response.read()
                served.append(response.headers["x-canary-version"])


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}/metrics") as response:
            return await response.text()


async def test_a_canary_without_usage_is_compared_like_with_like_and_a_real_regression_is_caught(
        upstreams, make_proxy):
    stable, canary = upstreams
    regressed = {"now": False}
    # Both answer 20 tokens; stable reports usage, the canary's server never does. Then the canary
    # answers 30: a real regression of x1.5.
    stable.on("POST", "/v1/chat/completions", streaming(lambda: WORDS * 2, with_usage=True))
    canary.on("POST", "/v1/chat/completions",
              streaming(lambda: WORDS * 3 if regressed["now"] else WORDS * 2, with_usage=False))
    proxy = await make_proxy(rollout=PLAN)
    controller = proxy.controller
    served: list[str] = []
    traffic = asyncio.create_task(send_streams(proxy.data_port, served))
    try:
        # Healthy canary without usage: 20 tokens on both sides by the proxy's count, while
        # stable's reported tokens_per_request is 12 prompt + 21 completion.
        await eventually(lambda: served.count("canary") >= 150, timeout=30)
        assert controller.state.phase.value == "progressing" and controller.rollbacks == 0
        [verdict] = [v for v in controller.verdicts if v.source == "tokens"]
        assert verdict.status.value == "pass", verdict.reason
        assert "compared as estimated_tokens_per_request on both versions" in verdict.reason
        assert verdict.details["estimated_share"] == {"canary": 1.0, "stable": 0.0}

        status = await _status(proxy.admin_port)
        assert status["tokens_estimated_share"] == {"stable": 0.0, "canary": 1.0}
        metrics = await scrape(proxy.admin_port)
        assert 'canaryproxy_tokens_total{kind="completion",source="estimated",version="canary"}' in metrics
        assert 'canaryproxy_tokens_total{kind="completion",source="estimated",version="stable"} 0.0' in metrics
        assert 'canaryproxy_tokens_total{kind="prompt",source="reported",version="canary"} 0.0' in metrics
        assert 'canaryproxy_responses_without_usage_total{version="stable"} 0.0' in metrics
        assert 'canaryproxy_responses_without_usage_total{version="canary"} 0.0' not in metrics

        regressed["now"] = True
        await eventually(lambda: controller.state.phase.value == "rolled_back", timeout=30)
    finally:
        traffic.cancel()
        await asyncio.gather(traffic, return_exceptions=True)

    (rollback,) = [d for d in controller.decisions if d["after"] and d["after"]["phase"] == "rolled_back"]
    (verdict,) = rollback["verdicts"]
    assert verdict["source"] == "tokens" and verdict["status"] == "fail"
    assert verdict["details"]["compared_metric"] == "estimated_tokens_per_request"
    assert verdict["details"]["canary_value"] / verdict["details"]["stable_value"] > 1.3


async def _status(port: int) -> dict:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}/admin/status") as response:
            return await response.json()
