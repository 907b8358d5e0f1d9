from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from tests.llm import chat_handler

KEY = "test-feedback-key-0123456789abcdef-one"
OLD_KEY = "test-feedback-key-0123456789abcdef-old"
PATH = "/canaryproxy/v1/feedback"
HEADER = "Canaryproxy-Feedback-Token"
NAMES = {
    "thumbs": {"type": "boolean", "negative": False},
    "rating": {"type": "integer", "min": 1, "max": 5, "negative_below": 3},
    "downstream_error": {"type": "boolean", "negative": True, "kind": "downstream_error"},
    "reason": {"type": "category", "values": ["wrong", "slow", "other"], "negative": ["wrong"]},
}


def feedback_section(**overrides: Any) -> dict[str, Any]:
    return {"enabled": True, "keys": [KEY], "names": NAMES, **overrides}


@pytest.fixture
async def llm(upstreams):
    for upstream in upstreams:
        upstream.on("POST", "/v1/chat/completions", chat_handler)
    return upstreams


@pytest.fixture
async def feedback_proxy(llm, make_proxy):
    return await make_proxy(routing={"weight": 50, "sticky": ["header:x-user-id"]}, feedback=feedback_section())


@pytest.fixture
async def sdk(feedback_proxy):
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{feedback_proxy.data_port}/v1", api_key="sk-test",
                                max_retries=0)
    yield client
    await client.close()


async def post(port: int, body: Any, *, headers: dict[str, str] | None = None, method: str = "POST",
               raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """One request to the feedback endpoint: (status, headers, JSON body or None)."""
    async with aiohttp.ClientSession() as client:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with client.request(method, f"http://127.0.0.1:{port}{PATH}", **kwargs) as response:
            text = await response.read()
            document = None
            if response.content_type == "application/json":
                document = await response.json()
            return response.status, dict(response.headers), document if text else None
