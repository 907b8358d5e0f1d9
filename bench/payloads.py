"""The canned traffic of the benchmark: what the load generator sends and the upstream answers.

Shaped like OpenAI chat completions on the wire, so a proxy that inspects LLM traffic does the work
it does in production:

* JSON: a POST of a small chat request answered by a ~600-byte `chat.completion` with a `usage`
  block;
* SSE: the same request with `"stream": true` answered by 50 events (role, 46 words, finish,
  usage, `data: [DONE]`), sent chunked, one write per event.

The upstream tells the two apart by `"stream": true` in the request body, as OpenAI servers do.
"""

from __future__ import annotations

import json

MODEL = "bench-model"
PATH = "/v1/chat/completions"
STICKY_HEADER = "x-user-id"
# Distinct sticky keys the load generator cycles through: enough for the hash split to come out
# close to 90/10, few enough to build every request once up front.
USERS = 1000

_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write two sentences about reverse proxies."},
]
_ANSWER_WORDS = (
    "A reverse proxy sits in front of a group of servers and forwards each client request to "
    "one of them, so clients see a single address. It can split traffic between two versions, "
    "watch what they answer and roll back the new one when it fails."
).split()
_CREATED = 1_700_000_000
_USAGE = {"prompt_tokens": 24, "completion_tokens": len(_ANSWER_WORDS), "total_tokens": 24 + len(_ANSWER_WORDS)}


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


JSON_REQUEST_BODY = _compact({"model": MODEL, "messages": _MESSAGES, "max_tokens": 64})
SSE_REQUEST_BODY = _compact(
    {
        "model": MODEL,
        "messages": _MESSAGES,
        "max_tokens": 64,
        "stream": True,
        # Ask for the usage chunk ourselves, so no proxy has to inject the option and hide the chunk.
        "stream_options": {"include_usage": True},
    }
)

JSON_RESPONSE_BODY = _compact(
    {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": _CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(_ANSWER_WORDS), "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
        "system_fingerprint": "fp_bench",
    }
)


def _chunk_event(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return b"data: " + _compact(chunk) + b"\n\n"


def _usage_event() -> bytes:
    chunk = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [],
        "usage": _USAGE,
    }
    return b"data: " + _compact(chunk) + b"\n\n"


SSE_EVENTS: tuple[bytes, ...] = (
    _chunk_event({"role": "assistant", "content": ""}),
    *(_chunk_event({"content": word if i == 0 else " " + word}) for i, word in enumerate(_ANSWER_WORDS)),
    _chunk_event({}, finish_reason="stop"),
    _usage_event(),
    b"data: [DONE]\n\n",
)
SSE_RESPONSE_BODY = b"".join(SSE_EVENTS)

# The request bodies by workload name, in the order the benchmark runs them.
WORKLOADS: dict[str, bytes] = {"json": JSON_REQUEST_BODY, "sse": SSE_REQUEST_BODY}
EXPECTED_BODY: dict[str, bytes] = {"json": JSON_RESPONSE_BODY, "sse": SSE_RESPONSE_BODY}


def chat_request(body: bytes, host: str, user: int) -> bytes:
    """One complete HTTP/1.1 request as the load generators send it."""
    return (
        f"POST {PATH} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: application/json\r\n"
        f"{STICKY_HEADER}: user-{user}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body
