"""The simulator's answers in the real wire format: what a request asks for, what the behaviour
draws (`plan_reply`), and the JSON body or SSE events that carry it (see simulator.py for the
whole picture)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from aiohttp import web

from canaryproxy.core.units import parse_duration
from canaryproxy.errors import ConfigError
from canaryproxy.sim.instances import JSON_OBJECT_SCHEMA, VOCABULARY, output_json

# Streams write at most this often; tokens due in between travel together in one write.
WRITE_INTERVAL = 0.02
LATENCY_SIGMA = 0.25
TOKENS_SIGMA = 0.5
GUARDRAIL_KEEPS = 0.25  # share of the answer sent before a guardrail intervention cuts it
CHARS_PER_TOKEN = 4

# A token is a word with its leading space, as BPE vocabularies have them ("the", " model").
_FIRST_WORDS = VOCABULARY
_NEXT_WORDS = tuple(" " + word for word in VOCABULARY)
_ENCODED: dict[str, bytes] = {
    piece: json.dumps(piece).encode() for piece in _FIRST_WORDS + _NEXT_WORDS
}


# --- behaviour ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulated model answers. Times are seconds; rates are probabilities per request."""

    latency: float = 0.2
    ttft: float = 0.15
    tokens_mean: float = 300.0
    error_rate: float = 0.01
    guardrail_rate: float = 0.0
    schema_break_rate: float = 0.0
    truncate_rate: float = 0.0
    dislike_rate: float = 0.0  # share of the answers a user who rates them would dislike
    model: str = "sim-1"

    def __post_init__(self) -> None:
        problems = _problems(asdict(self))
        if problems:
            raise ConfigError("invalid simulator behaviour", problems)

    def updated(self, changes: Mapping[str, object]) -> Behaviour:
        """A copy with `changes` applied. Durations may be written `250ms`.

        Raises ConfigError listing every problem (unknown names, unreadable and out-of-range values).
        """
        values = self.to_dict()
        problems = [f"{name}: unknown setting; known settings: {', '.join(values)}"
                    for name in changes if name not in values]
        unreadable = set()
        for name, value in changes.items():
            if name in values:
                try:
                    values[name] = _PARSERS[name](value)
                except ValueError as exc:
                    problems.append(f"{name}: {exc}")
                    unreadable.add(name)
        problems += _problems({k: v for k, v in values.items() if k not in unreadable})
        if problems:
            raise ConfigError("invalid simulator behaviour", problems)
        return Behaviour(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


_PARSERS = {
    "latency": parse_duration,
    "ttft": parse_duration,
    "tokens_mean": _number,
    "error_rate": _number,
    "guardrail_rate": _number,
    "schema_break_rate": _number,
    "truncate_rate": _number,
    "dislike_rate": _number,
    "model": _name,
}


def _problems(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with these settings; settings that are absent are not checked."""
    problems = []
    latency, ttft = values.get("latency"), values.get("ttft")
    if latency is not None and not (math.isfinite(latency) and latency > 0):
        problems.append(f"latency: must be a duration above 0, got {latency!r}")
    elif latency is not None and ttft is not None and not 0 <= ttft <= latency:
        problems.append(f"ttft: must be a duration from 0 to latency ({latency:g}s), got {ttft!r}")
    tokens_mean = values.get("tokens_mean")
    if tokens_mean is not None and not (math.isfinite(tokens_mean) and 1 <= tokens_mean <= 100_000):
        problems.append(f"tokens_mean: must be a number from 1 to 100000, got {tokens_mean!r}")
    for name in ("error_rate", "guardrail_rate", "schema_break_rate", "truncate_rate", "dislike_rate"):
        value = values.get(name)
        if value is not None and not 0.0 <= value <= 1.0:  # False for NaN too
            problems.append(f"{name}: must be a probability from 0 to 1, got {value!r}")
    model = values.get("model")
    if model is not None and not (model and model.isprintable()):
        problems.append(f"model: must be a non-empty printable name, got {model!r}")
    return problems


# --- what one request asks for ------------------------------------------------------------------


class BadRequest(Exception):
    """A chat request the simulator cannot answer; the message goes to the client with a 400."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    stream: bool
    include_usage: bool
    prompt_chars: int
    max_tokens: int | None
    response_format: str | None  # "json_object", "json_schema" or None
    schema: Any  # the json_schema's schema
    forced_tool: tuple[str, Any] | None  # (name, parameters schema) when tool_choice forces a call


def parse_chat_request(body: bytes) -> ChatRequest:
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array")
    prompt_chars = sum(_text_chars(m.get("content")) for m in messages if isinstance(m, dict))
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise BadRequest(f"'max_tokens' must be an integer >= 1, got {max_tokens!r}")
    options = request.get("stream_options")
    response_format = request.get("response_format")
    kind, schema = None, None
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        kind = response_format["type"]
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
    return ChatRequest(
        stream=request.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        prompt_chars=prompt_chars,
        max_tokens=max_tokens,
        response_format=kind,
        schema=schema,
        forced_tool=_forced_tool(request.get("tools"), request.get("tool_choice")),
    )


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: count the text ones
        return sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def _forced_tool(tools: Any, choice: Any) -> tuple[str, Any] | None:
    """The function `tool_choice` forces: a named one, or the only tool with "required"."""
    if not isinstance(tools, list):
        return None
    functions = {
        t["function"]["name"]: t["function"].get("parameters")
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    }
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in functions:
            raise BadRequest(f"tool_choice names {name!r}, which is not in 'tools'")
        return name, functions[name]
    if choice == "required" and functions:
        name = next(iter(functions))
        return name, functions[name]
    return None


# --- what the simulator answers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer, decided before anything is sent."""

    error: bool
    latency: float  # seconds until the last byte
    ttft: float  # seconds until the first token (streams), or until the error
    pieces: tuple[str, ...]  # completion tokens: content, or the tool call's arguments
    finish_reason: str
    prompt_tokens: int
    tool: str | None = None  # the function called; `pieces` are then its arguments
    truncate: bool = False  # abort the connection halfway through the body
    disliked: bool = False  # what a user who rates this answer thinks of it (DISLIKED_HEADER)


def plan_reply(request: ChatRequest, behaviour: Behaviour, rng: random.Random) -> Reply:
    """Decide the whole answer: whether it fails, its timing, its tokens and why it ends."""
    latency = _lognormal_with_mean(rng, behaviour.latency, LATENCY_SIGMA)
    ttft = min(latency, _lognormal_with_mean(rng, behaviour.ttft, LATENCY_SIGMA))
    prompt_tokens = max(1, math.ceil(request.prompt_chars / CHARS_PER_TOKEN))
    if rng.random() < behaviour.error_rate:
        return Reply(True, ttft, ttft, (), "", prompt_tokens)
    tool = None
    finish_reason = "stop"
    if request.forced_tool is not None:
        tool, parameters = request.forced_tool
        pieces = _json_pieces(output_json(parameters, rng, behaviour.schema_break_rate))
        finish_reason = "tool_calls"
    elif request.response_format is not None:
        schema = request.schema if request.response_format == "json_schema" else JSON_OBJECT_SCHEMA
        pieces = _json_pieces(output_json(schema, rng, behaviour.schema_break_rate))
    else:
        count_ = max(1, round(_lognormal_with_mean(rng, behaviour.tokens_mean, TOKENS_SIGMA)))
        pieces = _words(rng, count_)
    if rng.random() < behaviour.guardrail_rate:
        pieces = pieces[: int(len(pieces) * GUARDRAIL_KEEPS)]
        finish_reason, tool = "content_filter", None
    if request.max_tokens is not None and len(pieces) > request.max_tokens:
        pieces = pieces[: request.max_tokens]
        finish_reason = "length"
    truncate = rng.random() < behaviour.truncate_rate
    disliked = behaviour.dislike_rate > 0 and rng.random() < behaviour.dislike_rate
    return Reply(False, latency, ttft, pieces, finish_reason, prompt_tokens, tool, truncate, disliked)


def _lognormal_with_mean(rng: random.Random, mean: float, sigma: float) -> float:
    if mean <= 0:
        return 0.0
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)


def _words(rng: random.Random, n: int) -> tuple[str, ...]:
    return (rng.choice(_FIRST_WORDS), *rng.choices(_NEXT_WORDS, k=n - 1))


def _json_pieces(text: str) -> tuple[str, ...]:
    return tuple(text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN))


def _usage(reply: Reply) -> dict[str, int]:
    completion = len(reply.pieces)
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": completion,
            "total_tokens": reply.prompt_tokens + completion}


def completion_body(reply: Reply, completion_id: str, model: str, created: int) -> bytes:
    """The `chat.completion` object of a non-streaming answer."""
    text = "".join(reply.pieces)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if reply.tool is not None:
        message["content"] = None
        message["tool_calls"] = [{"id": "call_" + completion_id, "type": "function",
                                  "function": {"name": reply.tool, "arguments": text}}]
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
        "usage": _usage(reply),
        "system_fingerprint": None,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class StreamEncoder:
    """The SSE events of one streamed answer, built from a per-request prefix and suffix."""

    __slots__ = ("_reply", "_call_id", "_head", "_usage_null", "_include_usage", "_delta_head", "_delta_tail")

    def __init__(self, reply: Reply, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self._reply = reply
        self._call_id = "call_" + completion_id
        self._include_usage = include_usage
        self._head = (b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
                      b'"system_fingerprint":null,"choices":'
                      % (completion_id.encode(), created, json.dumps(model).encode()))
        # With include_usage every chunk carries "usage": null, and the last one the counts.
        self._usage_null = b',"usage":null' if include_usage else b""
        member = b'{"tool_calls":[{"index":0,"function":{"arguments":' if reply.tool else b'{"content":'
        closing = b"}}]}" if reply.tool else b"}"
        self._delta_head = self._head + b'[{"index":0,"delta":' + member
        self._delta_tail = closing + b',"logprobs":null,"finish_reason":null}]' + self._usage_null + b"}\n\n"

    def _chunk(self, delta: bytes, finish_reason: str | None) -> bytes:
        finish = b"null" if finish_reason is None else b'"%s"' % finish_reason.encode()
        return (self._head + b'[{"index":0,"delta":' + delta + b',"logprobs":null,"finish_reason":'
                + finish + b"}]" + self._usage_null + b"}\n\n")

    def opening(self) -> bytes:
        """The role chunk (and, for a tool call, the call's id and name)."""
        if self._reply.tool is None:
            return self._chunk(b'{"role":"assistant","content":""}', None)
        call = {"index": 0, "id": self._call_id, "type": "function",
                "function": {"name": self._reply.tool, "arguments": ""}}
        return self._chunk(b'{"role":"assistant","content":null,"tool_calls":[%s]}'
                           % json.dumps(call, separators=(",", ":")).encode(), None)

    def deltas(self, pieces: tuple[str, ...]) -> bytes:
        """One event per token, joined for a single write."""
        encoded = [_ENCODED.get(p) or json.dumps(p).encode() for p in pieces]
        between = self._delta_tail + self._delta_head
        return self._delta_head + between.join(encoded) + self._delta_tail

    def ending(self) -> bytes:
        """Finish chunk, the usage-only chunk when asked for, and [DONE]."""
        end = self._chunk(b"{}", self._reply.finish_reason)
        if self._include_usage:
            usage = json.dumps(_usage(self._reply), separators=(",", ":")).encode()
            end += self._head + b'[],"usage":' + usage + b"}\n\n"
        return end + b"data: [DONE]\n\n"


def _error_body(message: str, kind: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


SERVER_ERROR = json.dumps(_error_body(
    "The simulated model server failed (error_rate).", "server_error", "simulated_failure")).encode()


def _bad_request(message: str) -> web.Response:
    return web.json_response(_error_body(message, "invalid_request_error", "invalid_request"), status=400)


# --- the server ---------------------------------------------------------------------------------


