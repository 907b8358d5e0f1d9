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
through the body (`truncate_rate`). And what users think of the answers: with `dislike_rate`, a
share of the answers carry `X-Sim-Verdict: disliked` (others `liked`) — what a user who rates the
answer would say, which the demo's users read to post their feedback.

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
import random
import time
from itertools import count
from typing import Mapping

from aiohttp import web

from canaryproxy.errors import ConfigError, StartupError
from canaryproxy.sim.replies import (
    SERVER_ERROR,
    WRITE_INTERVAL,
    BadRequest,
    Behaviour,
    Reply,
    StreamEncoder,
    _bad_request,
    completion_body,
    parse_chat_request,
    plan_reply,
)

VERDICT_HEADER = "X-Sim-Verdict"  # what a user who rates this answer would think of it


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
        verdict = {VERDICT_HEADER: "disliked" if reply.disliked else "liked"}
        if chat.stream:
            encoder = StreamEncoder(reply, completion_id, behaviour.model, created, chat.include_usage)
            return await self._stream(request, reply, encoder, verdict)
        body = completion_body(reply, completion_id, behaviour.model, created)
        await asyncio.sleep(reply.latency)
        if not reply.truncate:
            return web.Response(body=body, content_type="application/json", headers=verdict)
        response = web.StreamResponse(headers={"Content-Type": "application/json", **verdict})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        return _abort(request, response)

    async def _stream(self, request: web.Request, reply: Reply, encoder: StreamEncoder,
                      verdict: Mapping[str, str]) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               **verdict})
        batches = _batches(reply)
        abort_after = len(batches) // 2 if reply.truncate else None
        try:
            # The client may be gone before the headers: the proxy cancels its shadow copies when
            # it shuts down.
            await response.prepare(request)
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
