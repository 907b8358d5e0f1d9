"""Feedback end to end in one process: the openai SDK through the proxy reads the token, aiohttp
posts the verdict, and the evidence's windows count it once — or the post is refused, precisely,
and nothing is counted."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
import pytest

from canaryproxy.core.types import Role
from tests.feedback.conftest import HEADER, KEY, OLD_KEY, PATH, feedback_section, post
from tests.test_token_sources_e2e import scrape


def counted(proxy, role: Role, label: str = "feedback") -> dict[str, int]:
    """Feedback by name in the evidence's windows (what rules and the judge read)."""
    return dict(getattr(proxy.windows.snapshot(role, 60, time.time()), label))


def counted_anywhere(proxy) -> int:
    return sum(sum(counted(proxy, role).values()) for role in (Role.STABLE, Role.CANARY))


async def ask(sdk, user: str = "alice", stream: bool = False):
    raw = await sdk.chat.completions.with_raw_response.create(
        model="m-1", messages=[{"role": "user", "content": "hello there proxy"}],
        extra_headers={"x-user-id": user}, stream=stream)
    if stream:
        text = "".join([e.choices[0].delta.content or "" async for e in raw.parse() if e.choices])
    else:
        text = raw.parse().choices[0].message.content
    assert text.strip() == "hello there proxy"
    return raw.headers[HEADER], raw.headers["x-canary-version"], raw.headers["x-request-id"]


@pytest.mark.parametrize("stream", [False, True])
async def test_sdk_reads_the_token_and_the_feedback_counts_once_for_its_version(feedback_proxy, sdk, stream):
    token, served, _ = await ask(sdk, stream=stream)
    role = Role(served)
    body = {"token": token, "name": "thumbs", "value": False, "comment": "made up a citation"}
    status, _, answer = await post(feedback_proxy.data_port, body)
    assert (status, answer) == (202, {"status": "accepted"})
    assert counted(feedback_proxy, role) == {"thumbs": 1}
    assert counted(feedback_proxy, role, "negative_feedback") == {"thumbs": 1}
    # Retries of the same (request, name): answered, counted once.
    for _ in range(3):
        status, _, answer = await post(feedback_proxy.data_port, {**body, "value": True})
        assert (status, answer) == (202, {"status": "duplicate"})
    assert counted(feedback_proxy, role) == {"thumbs": 1}
    # Another name on the same request is its own verdict.
    status, _, answer = await post(feedback_proxy.data_port, {"token": token, "name": "rating", "value": 4})
    assert (status, answer) == (202, {"status": "accepted"})
    assert counted(feedback_proxy, role) == {"thumbs": 1, "rating": 1}
    assert counted(feedback_proxy, role, "negative_feedback") == {"thumbs": 1}
    metrics = await scrape(feedback_proxy.admin_port)
    assert f'canaryproxy_feedback_total{{name="thumbs",verdict="negative",version="{served}"}} 1.0' in metrics
    assert f'canaryproxy_feedback_total{{name="rating",verdict="positive",version="{served}"}} 1.0' in metrics
    assert "canaryproxy_feedback_duplicates_total 3.0" in metrics


async def test_the_endpoint_is_never_forwarded(feedback_proxy, llm):
    stable, canary = llm
    await post(feedback_proxy.data_port, {"token": "x", "name": "thumbs", "value": True})
    await post(feedback_proxy.data_port, None, method="GET")
    assert stable.seen == [] and canary.seen == []


async def test_the_request_id_route(feedback_proxy, sdk):
    _, served, request_id = await ask(sdk, user="bob")
    status, _, answer = await post(feedback_proxy.data_port,
                                   {"request_id": request_id, "name": "downstream_error", "value": True})
    assert (status, answer) == (202, {"status": "accepted"})
    assert counted(feedback_proxy, Role(served)) == {"downstream_error": 1}
    status, _, answer = await post(feedback_proxy.data_port,
                                   {"request_id": request_id, "name": "downstream_error", "value": True})
    assert answer == {"status": "duplicate"}
    # A client-chosen request id is what the proxy remembers.
    async with aiohttp.ClientSession() as client:
        async with client.post(f"http://127.0.0.1:{feedback_proxy.data_port}/v1/chat/completions",
                               json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                               headers={"X-Request-Id": "my-own-id-42"}) as response:
            await response.read()
    status, _, answer = await post(feedback_proxy.data_port, {"request_id": "my-own-id-42", "name": "thumbs",
                                                              "value": True})
    assert (status, answer) == (202, {"status": "accepted"})


async def test_a_rotated_key_is_accepted_and_another_deployments_is_refused(llm, make_proxy):
    old = await make_proxy(feedback=feedback_section(keys=[OLD_KEY]))
    new = await make_proxy(feedback=feedback_section(keys=[KEY, OLD_KEY]))
    stranger = await make_proxy(feedback=feedback_section(keys=["another-deployments-key-0123456789abcdef"]))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{old.data_port}/v1/models") as response:
            token = response.headers[HEADER]
    status, _, answer = await post(stranger.data_port, {"token": token, "name": "thumbs", "value": True})
    assert status == 403 and "key this proxy does not hold" in answer["error"]
    assert counted_anywhere(stranger) == 0
    status, _, answer = await post(new.data_port, {"token": token, "name": "thumbs", "value": True})
    assert (status, answer) == (202, {"status": "accepted"})
    assert counted_anywhere(new) == 1


async def test_a_token_older_than_max_age_is_gone(feedback_proxy):
    signer = feedback_proxy.data.feedback.signer  # the proxy's own keys, signing a day-old routing
    token = signer.sign(Role.CANARY, "old-request", 50.0, time.time() - 86400 - 5, None)
    status, _, answer = await post(feedback_proxy.data_port, {"token": token, "name": "thumbs", "value": True})
    assert status == 410 and "past feedback.max_age (86400s)" in answer["error"]
    assert counted_anywhere(feedback_proxy) == 0


async def test_cors_preflight_answers_and_proxied_responses_expose_the_headers(llm, make_proxy):
    proxy = await make_proxy(feedback=feedback_section(cors={"allow_origins": ["https://app.example"]}))
    origin = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "content-type"}
    status, headers, _ = await post(proxy.data_port, None, method="OPTIONS", headers=origin)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == "Content-Type"
    status, headers, _ = await post(proxy.data_port, None, method="OPTIONS", headers={"Origin": "https://evil.example"})
    assert status == 204 and "Access-Control-Allow-Origin" not in headers
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/v1/models",
                              headers={"Origin": "https://app.example"}) as response:
            exposed = response.headers["Access-Control-Expose-Headers"]
            token = response.headers[HEADER]
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/v1/models",
                              headers={"Origin": "https://evil.example"}) as response:
            assert "Access-Control-Expose-Headers" not in response.headers
    assert exposed == f"{HEADER}, X-Request-Id"
    status, headers, _ = await post(proxy.data_port, {"token": token, "name": "thumbs", "value": True},
                                    headers={"Origin": "https://app.example"})
    assert status == 202 and headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_a_client_over_its_rate_is_told_when_to_come_back(llm, make_proxy):
    proxy = await make_proxy(feedback=feedback_section(rate_limit={"rate": 0.5, "burst": 3}))
    statuses = []
    for _ in range(5):
        status, headers, answer = await post(proxy.data_port, {"token": "x", "name": "thumbs", "value": True})
        statuses.append(status)
    assert statuses == [403, 403, 403, 429, 429]
    assert headers["Retry-After"] == "2" and "over 0.5 feedback posts per second" in answer["error"]
    metrics = await scrape(proxy.admin_port)
    assert 'canaryproxy_feedback_refused_total{reason="rate_limited"} 2.0' in metrics
    assert 'canaryproxy_feedback_refused_total{reason="forged"} 3.0' in metrics


async def test_feedback_off_forwards_the_path_and_stamps_nothing(llm, make_proxy):
    proxy = await make_proxy()
    stable, canary = llm
    async with aiohttp.ClientSession() as client:
        async with client.post(f"http://127.0.0.1:{proxy.data_port}{PATH}", json={}) as response:
            assert response.status == 200 and HEADER not in response.headers
    assert len(stable.seen) + len(canary.seen) == 1


async def test_concurrent_duplicates_count_once(feedback_proxy, sdk):
    token, served, _ = await ask(sdk)
    answers = await asyncio.gather(*(post(feedback_proxy.data_port, {"token": token, "name": "thumbs", "value": True})
                                     for _ in range(10)))
    assert sorted(a[2]["status"] for a in answers) == ["accepted"] + ["duplicate"] * 9
    assert counted(feedback_proxy, Role(served)) == {"thumbs": 1}


async def test_the_request_id_an_upstream_set_is_the_one_remembered(upstreams, make_proxy):
    async def answer_with_its_own_id(request):
        return web.json_response({"ok": True}, headers={"X-Request-Id": "upstream-id-7"})

    for upstream in upstreams:
        upstream.on("POST", "/v1/chat/completions", answer_with_its_own_id)
    proxy = await make_proxy(feedback=feedback_section())
    async with aiohttp.ClientSession() as client:
        async with client.post(f"http://127.0.0.1:{proxy.data_port}/v1/chat/completions", json={}) as response:
            await response.read()
            assert response.headers["X-Request-Id"] == "upstream-id-7"
            served = Role(response.headers["x-canary-version"])
    status, _, answer = await post(proxy.data_port, {"request_id": "upstream-id-7", "name": "thumbs", "value": False})
    assert (status, answer) == (202, {"status": "accepted"})
    assert counted(proxy, served) == {"thumbs": 1}
