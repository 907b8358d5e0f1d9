"""Every kind of bad feedback post is refused with its status and a precise message, and nothing
is counted: not in the evidence, not in canaryproxy_feedback_total."""

from __future__ import annotations

import time

import aiohttp
import pytest

from canaryproxy.core.types import Role
from tests.feedback.conftest import HEADER, PATH, feedback_section, post
from tests.test_token_sources_e2e import scrape


@pytest.fixture
async def proxy_and_token(llm, make_proxy):
    proxy = await make_proxy(feedback=feedback_section(max_comment=10, max_body=1024))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/v1/models") as response:
            return proxy, response.headers[HEADER]


def altered(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]


CASES = [
    # (body builder given the token, status, reason, words of the message)
    (lambda t: {"token": "bm90IGEgdG9rZW4", "name": "thumbs", "value": True}, 403, "forged", "not one this proxy issued"),
    (lambda t: {"token": altered(t), "name": "thumbs", "value": True}, 403, "forged", "altered or forged"),
    (lambda t: {"request_id": "never-seen", "name": "thumbs", "value": True}, 404, "unknown_request",
     "no response with X-Request-Id 'never-seen'"),
    (lambda t: {"token": t, "name": "stars", "value": 5}, 400, "invalid",
     "undeclared feedback name 'stars'; declared: downstream_error, rating, reason, thumbs"),
    (lambda t: {"token": t, "name": "thumbs", "value": "yes"}, 400, "invalid", "thumbs takes true or false, got 'yes'"),
    (lambda t: {"token": t, "name": "thumbs", "value": 1}, 400, "invalid", "thumbs takes true or false, got 1"),
    (lambda t: {"token": t, "name": "rating", "value": 4.0}, 400, "invalid", "rating takes an integer from 1 to 5, got 4.0"),
    (lambda t: {"token": t, "name": "rating", "value": True}, 400, "invalid", "rating takes an integer"),
    (lambda t: {"token": t, "name": "rating", "value": 9}, 400, "invalid", "rating must be from 1 to 5, got 9"),
    (lambda t: {"token": t, "name": "reason", "value": "meh"}, 400, "invalid",
     "reason takes one of other, slow, wrong, got 'meh'"),
    (lambda t: {"token": t, "value": True}, 400, "invalid", "name is required"),
    (lambda t: {"token": t, "name": "thumbs"}, 400, "invalid", "value is required"),
    (lambda t: {"name": "thumbs", "value": True}, 400, "invalid", "give exactly one of token"),
    (lambda t: {"token": t, "request_id": "r", "name": "thumbs", "value": True}, 400, "invalid", "give exactly one of"),
    (lambda t: {"token": 7, "name": "thumbs", "value": True}, 400, "invalid", "token must be a non-empty string, got a number"),
    (lambda t: {"token": t, "name": "thumbs", "value": True, "valeu": 1}, 400, "invalid", "unknown field 'valeu'"),
    (lambda t: [t], 400, "invalid", "expected a JSON object, got an array"),
    (lambda t: {"token": t, "name": "thumbs", "value": True, "comment": "x" * 11}, 413, "too_large",
     "comment is 11 characters, over the limit of 10"),
    (lambda t: {"token": t, "name": "thumbs", "value": True, "comment": ["x"]}, 400, "invalid", "comment must be a string"),
]


@pytest.mark.parametrize("body, status, reason, message", CASES)
async def test_refused_with_its_status_and_nothing_counted(proxy_and_token, body, status, reason, message):
    proxy, token = proxy_and_token
    got, _, answer = await post(proxy.data_port, body(token))
    assert (got, answer["reason"]) == (status, reason), answer
    assert message in answer["error"]
    await assert_nothing_counted(proxy, reason)


@pytest.mark.parametrize("raw, content_type, status, reason, message", [
    (b'{"token": ', "application/json", 400, "malformed", "the body is not valid JSON"),
    (b'{"token": "t", "name": "rating", "value": NaN}', "application/json", 400, "malformed", "NaN is not JSON"),
    (b"\xff\xfe", "application/json", 400, "malformed", "not valid JSON"),
    (b'{"token": "t"}', "text/plain", 415, "media_type", "must be application/json, got text/plain"),
    (b'{"a": "' + b"x" * 2000 + b'"}', "application/json", 413, "too_large", "over the limit of 1024 bytes"),
])
async def test_bodies_that_are_not_a_post(proxy_and_token, raw, content_type, status, reason, message):
    proxy, _ = proxy_and_token
    got, _, answer = await post(proxy.data_port, None, raw=raw, headers={"Content-Type": content_type})
    assert (got, answer["reason"]) == (status, reason), answer
    assert message in answer["error"]
    await assert_nothing_counted(proxy, reason)


async def test_a_chunked_body_over_the_limit_is_refused(proxy_and_token):
    proxy, _ = proxy_and_token

    async def chunks():
        for _ in range(20):
            yield b"x" * 100

    got, _, answer = await post(proxy.data_port, None, raw=chunks(), headers={"Content-Type": "application/json"})
    assert got == 413 and "over the limit of 1024 bytes" in answer["error"]
    await assert_nothing_counted(proxy, "too_large")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_are_not_allowed(proxy_and_token, method):
    proxy, _ = proxy_and_token
    got, headers, answer = await post(proxy.data_port, None, method=method)
    assert got == 405 and headers["Allow"] == "POST, OPTIONS"
    assert f"{method} is not allowed here" in answer["error"]
    await assert_nothing_counted(proxy, "method")


async def assert_nothing_counted(proxy, reason: str) -> None:
    for role in (Role.STABLE, Role.CANARY):
        assert proxy.windows.snapshot(role, 60, time.time()).feedback == {}
    metrics = await scrape(proxy.admin_port)
    assert "canaryproxy_feedback_total{" not in metrics
    assert f'canaryproxy_feedback_refused_total{{reason="{reason}"}} 1.0' in metrics
