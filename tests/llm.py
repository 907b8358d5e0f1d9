"""OpenAI chat-completions responses in the exact wire format, for test upstreams."""

from __future__ import annotations

import json
import time

from aiohttp import web


def chat_completion(content: str, model: str = "m-1", prompt_tokens: int = 12,
                    completion_tokens: int | None = None, finish_reason: str = "stop") -> dict:
    completion_tokens = completion_tokens if completion_tokens is not None else len(content.split())
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chunk(delta: dict, model: str = "m-1", finish_reason: str | None = None, usage: dict | None = None,
          choices: bool = True) -> bytes:
    body: dict = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        if choices else [],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def chat_stream_events(words: list[str], model: str = "m-1", include_usage: bool = False,
                       prompt_tokens: int = 12) -> list[bytes]:
    events = [chunk({"role": "assistant", "content": ""}, model)]
    events += [chunk({"content": w}, model) for w in words]
    events.append(chunk({}, model, finish_reason="stop"))
    if include_usage:
        events.append(chunk({}, model, choices=False, usage={
            "prompt_tokens": prompt_tokens, "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words)}))
    events.append(b"data: [DONE]\n\n")
    return events


async def chat_handler(request: web.Request) -> web.StreamResponse:
    """A minimal model server: echoes the last user message back word by word."""
    body = await request.json()
    words = [w + " " for w in str(body["messages"][-1]["content"]).split()] or ["ok"]
    model = body.get("model", "m-1")
    if not body.get("stream"):
        return web.json_response(chat_completion("".join(words).strip(), model))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event in chat_stream_events(words, model, include_usage):
        await response.write(event)
    await response.write_eof()
    return response
