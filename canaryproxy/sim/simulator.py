"""A model server to roll out: OpenAI chat completions whose behaviour can be changed while it runs.

    canaryproxy simulate-upstream --port 8002 --error-rate 0.05 --tokens-mean 600

It speaks the real wire format, so the proxy's inspectors and the `openai` SDK read it like any
OpenAI-compatible server:

* `POST /v1/chat/completions`, streaming or not. Non-streaming answers arrive after about `latency`;
  a stream sends its headers and role chunk at once, the first token after about `ttft`, and the
  other tokens spread over the rest of `latency`, then a finish chunk, the usage-only chunk
  (`"choices": []`) when `stream_options.include_usage` is set, and `data: [DONE]`.
* `usage`: prompt tokens are the characters of the messages' text / 4; completion tokens are the
  pieces generated (words of a small built-in vocabulary, or ~4-character pieces of JSON).
* `finish_reason`: `stop`; `length` when `max_tokens` (or `max_completion_tokens`) cut the answer;
  `content_filter` for a guardrail intervention, with the content cut to a quarter; `tool_calls`
  when `tool_choice` forces a function (its arguments are an instance of the function's schema).
* Structured output: `response_format` `json_object` gets a JSON object; `json_schema` gets an
  instance of the schema when it is simple (objects of primitive types, enums, arrays, nested
  objects), `{}` otherwise.
* `GET /v1/models` lists the one model.

Misbehaviour, each with its own probability per chat request: a 500 in OpenAI's error shape after
about `ttft` (`error_rate`), a guardrail intervention (`guardrail_rate`), a broken structured output
(`schema_break_rate`: invalid JSON, or a required property missing), a connection aborted halfway
through the body (`truncate_rate`).

Random variation (one seeded `random.Random` per simulator):
* latency and ttft are lognormal with σ = 0.25 in log space, scaled so their means are `latency`
  and `ttft` (p95 ≈ 1.45 × the mean); a request's ttft never exceeds its latency;
* completion tokens are lognormal with σ = 0.5, mean `tokens_mean`, rounded, at least 1.

The behaviour changes at run time: `GET /sim/config` shows it, `POST /sim/config` with a partial
JSON object changes it (400 with a precise message on bad input); in-process,
`ModelSimulator.configure(...)` does the same.

Cost per request is kept small because the demo runs two of these beside the proxy on one core:
tokens of a stream are written in batches at most every `WRITE_INTERVAL` (one write may carry
several SSE events, as a busy server's would), and an event is the concatenation of a per-request
prefix, the pre-encoded JSON string of the token and a per-request suffix.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from itertools import count
from typing import Any, Mapping

from aiohttp import web

from canaryproxy.core.units import parse_duration
from canaryproxy.errors import ConfigError, StartupError

# Streams write at most this often; tokens due in between travel together in one write.
WRITE_INTERVAL = 0.02
LATENCY_SIGMA = 0.25
TOKENS_SIGMA = 0.5
GUARDRAIL_KEEPS = 0.25  # share of the answer sent before a guardrail intervention cuts it
CHARS_PER_TOKEN = 4

VOCABULARY = tuple(
    """the a model answer data canary stable version request token stream latency quality
    release user prompt system result value update rollout traffic server response window metric
    signal check deploy safe fast slow good better new old first next step plan state shift
    because while when then so and but or of to in for on with by from about into over after
    is are was can will should may""".split()
)
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
    for name in ("error_rate", "guardrail_rate", "schema_break_rate", "truncate_rate"):
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
        pieces = _json_pieces(_output_json(parameters, rng, behaviour))
        finish_reason = "tool_calls"
    elif request.response_format is not None:
        schema = request.schema if request.response_format == "json_schema" else _JSON_OBJECT_SCHEMA
        pieces = _json_pieces(_output_json(schema, rng, behaviour))
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
    return Reply(False, latency, ttft, pieces, finish_reason, prompt_tokens, tool, truncate)


def _lognormal_with_mean(rng: random.Random, mean: float, sigma: float) -> float:
    if mean <= 0:
        return 0.0
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)


def _words(rng: random.Random, n: int) -> tuple[str, ...]:
    return (rng.choice(_FIRST_WORDS), *rng.choices(_NEXT_WORDS, k=n - 1))


def _json_pieces(text: str) -> tuple[str, ...]:
    return tuple(text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN))


_JSON_OBJECT_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def _output_json(schema: Any, rng: random.Random, behaviour: Behaviour) -> str:
    """The JSON text of an instance of `schema`, broken with probability `schema_break_rate`:
    half the time a required property is left out (when there is one), otherwise the text is cut
    before its last character, so it does not parse."""
    try:
        value = instance_of(schema, rng)
    except _NotSimple:
        value = {}
    if rng.random() >= behaviour.schema_break_rate:
        return json.dumps(value)
    required = [name for name in schema.get("required", ()) if name in value] \
        if isinstance(schema, dict) and isinstance(value, dict) else []
    if required and rng.random() < 0.5:
        del value[rng.choice(required)]
        return json.dumps(value)
    return json.dumps(value)[:-1]


class _NotSimple(Exception):
    """A schema construct the simulator does not generate instances of ($ref, anyOf, ...)."""


_STRING_FORMATS = {"date": "2025-01-31", "date-time": "2025-01-31T12:00:00Z", "email": "user@example.com",
                   "uri": "https://example.com/", "uuid": "00000000-0000-4000-8000-000000000000"}


def instance_of(schema: Any, rng: random.Random) -> Any:
    """A small instance of a simple JSON Schema: every declared property, 1-3 array items."""
    if not isinstance(schema, dict):
        raise _NotSimple
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise _NotSimple
        return {name: instance_of(sub, rng) for name, sub in properties.items()}
    if kind == "array":
        low = schema.get("minItems", 1)
        high = max(low, min(schema.get("maxItems", 3), 3))
        return [instance_of(schema.get("items", {"type": "string"}), rng) for _ in range(rng.randint(low, high))]
    if kind == "string":
        if schema.get("format") in _STRING_FORMATS:
            return _STRING_FORMATS[schema["format"]]
        return " ".join(rng.choices(VOCABULARY, k=max(1, min(3, schema.get("minLength", 1)))))
    if kind == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 100)))
    if kind == "number":
        return round(rng.uniform(float(schema.get("minimum", 0)), float(schema.get("maximum", 1))), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    raise _NotSimple


# --- the wire format ----------------------------------------------------------------------------


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


class ModelSimulator:
    """An OpenAI-compatible model server whose behaviour can be changed while it serves.

    `start(host, port)` listens (port 0: a free one, see `port`); `configure(...)` changes the
    behaviour in-process, exactly as `POST /sim/config` does.
    """

    def __init__(self, behaviour: Behaviour | None = None, *, seed: int | None = None) -> None:
        self._behaviour = behaviour or Behaviour()
        self._rng = random.Random(seed)
        self._ids = count(1)
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0

    @property
    def behaviour(self) -> Behaviour:
        return self._behaviour

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def configure(self, changes: Mapping[str, object]) -> Behaviour:
        """Apply a partial change (validated as a whole; raises ConfigError and changes nothing)."""
        self._behaviour = self._behaviour.updated(changes)
        return self._behaviour

    def application(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.post("/v1/chat/completions", self.chat_completions),
            web.get("/v1/models", self.models),
            web.get("/sim/config", self.get_config),
            web.post("/sim/config", self.post_config),
        ])
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        # handler_cancellation: a client that hangs up stops the generation, as on a real server.
        self._runner = web.AppRunner(self.application(), handler_cancellation=True, access_log=None,
                                     handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise StartupError(f"the model simulator cannot listen on {host}:{port}: {exc}") from None
        server = site._server  # aiohttp exposes the bound port only through the asyncio server
        assert server is not None and server.sockets
        self.host, self.port = host, server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- handlers --------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        model = self._behaviour.model
        return web.json_response({"object": "list", "data": [
            {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "canaryproxy-simulator"}]})

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self._behaviour.to_dict())

    async def post_config(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            return _bad_request(f"the body must be a JSON object of settings to change: {exc}")
        if not isinstance(changes, dict):
            return _bad_request(f"the body must be a JSON object of settings to change, got {type(changes).__name__}")
        try:
            return web.json_response(self.configure(changes).to_dict())
        except ConfigError as exc:
            return _bad_request("; ".join(exc.problems))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            chat = parse_chat_request(await request.read())
        except BadRequest as exc:
            return _bad_request(str(exc))
        behaviour = self._behaviour
        reply = plan_reply(chat, behaviour, self._rng)
        completion_id = f"chatcmpl-sim{next(self._ids):x}"
        created = int(time.time())
        if reply.error:
            await asyncio.sleep(reply.ttft)
            return web.Response(status=500, body=SERVER_ERROR, content_type="application/json")
        if chat.stream:
            encoder = StreamEncoder(reply, completion_id, behaviour.model, created, chat.include_usage)
            return await self._stream(request, reply, encoder)
        body = completion_body(reply, completion_id, behaviour.model, created)
        await asyncio.sleep(reply.latency)
        if not reply.truncate:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        return _abort(request, response)

    async def _stream(self, request: web.Request, reply: Reply, encoder: StreamEncoder) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        batches = _batches(reply)
        abort_after = len(batches) // 2 if reply.truncate else None
        try:
            await response.write(encoder.opening())
            for index, (at, pieces) in enumerate(batches):
                if index == abort_after:
                    return _abort(request, response)
                delay = started + at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                data = encoder.deltas(pieces) if pieces else b""
                if index == len(batches) - 1:
                    data += encoder.ending()
                await response.write(data)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left mid-stream: nothing more to send, and nothing wrong here
        return response


def _batches(reply: Reply) -> list[tuple[float, tuple[str, ...]]]:
    """(seconds from the start, tokens) per write: the first token at ttft, the others spread
    evenly over the rest of the latency, at most one write per WRITE_INTERVAL."""
    pieces = reply.pieces
    if not pieces:
        return [(reply.latency, ())]
    rest = len(pieces) - 1
    batches = [(reply.ttft, pieces[:1])]
    span = reply.latency - reply.ttft
    writes = min(rest, max(1, int(span / WRITE_INTERVAL)))
    for j in range(writes):
        batches.append((reply.ttft + span * (j + 1) / writes,
                        pieces[1 + rest * j // writes: 1 + rest * (j + 1) // writes]))
    return batches


def _abort(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Cut the connection: the client sees the body end early, as when a model server crashes."""
    if request.transport is not None:
        request.transport.abort()
    return response


async def serve(simulator: ModelSimulator, host: str, port: int) -> None:
    """Run until SIGINT or SIGTERM (the `simulate-upstream` command)."""
    import signal

    await simulator.start(host, port)
    b = simulator.behaviour
    print(f"model simulator {b.model!r} on {simulator.url}: latency {b.latency * 1000:.0f}ms, "
          f"ttft {b.ttft * 1000:.0f}ms, {b.tokens_mean:g} tokens, error rate {b.error_rate:g}; "
          f"GET/POST {simulator.url}/sim/config to see or change it", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await simulator.stop()
