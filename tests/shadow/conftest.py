"""Shadow tests: real aiohttp upstreams on 127.0.0.1 standing in for stable and the canary, a real
CanaryProxy whose plan starts with a shadow stage copying every request (`shadow: 100`)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.llm import chat_completion, chat_stream_events

CHAT = "/v1/chat/completions"


def shadow_rollout(share: float = 100, hold: str = "1h", **rollout: Any) -> dict[str, Any]:
    """A plan that starts with a shadow stage, then one live stage; the judge on (it must be)."""
    return {"start": "auto", "stages": [{"shadow": share, "hold": hold}, {"weight": 5, "hold": "1h"}],
            "evaluate_every": "1h", "judge": {"enabled": True}, **rollout}


def words_handler(words: list[str], *, delay: float = 0.0, status: int = 200):
    """A model server answering every chat request with `words` (JSON or SSE, as asked)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if delay:
            await asyncio.sleep(delay)
        if status != 200:
            return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=status)
        if not body.get("stream"):
            return web.json_response(chat_completion(" ".join(words)))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in chat_stream_events([w + " " for w in words], include_usage=include_usage):
            await response.write(event)
        await response.write_eof()
        return response
    return handler


async def chat(port: int, *, stream: bool = False, user: str | None = None, content: str = "hello there",
               timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    body = {"model": "m-1", "messages": [{"role": "user", "content": content}], "stream": stream}
    headers = {"x-user-id": user} if user else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as client:
        async with client.post(f"http://127.0.0.1:{port}{CHAT}", data=json.dumps(body),
                               headers={"Content-Type": "application/json", **headers}) as response:
            return response.status, dict(response.headers), await response.read()


@pytest.fixture
def stable_and_canary(upstreams):
    stable, canary = upstreams
    stable.on("POST", CHAT, words_handler(["the", "answer", "is", "42"]))
    canary.on("POST", CHAT, words_handler(["the", "answer", "is", "42"]))
    return stable, canary


def held_handler(release: asyncio.Event):
    """A model server that answers only once `release` is set: a canary that has fallen behind."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        await release.wait()
        return web.json_response({"choices": []})
    return handler
