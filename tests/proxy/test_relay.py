"""The relay on its own, between a real upstream (through an exchange) and a real client.

A bare server whose handler is only exchange + relay: no forwarder, no routing. The relay writes
the data plane's response type, so the bare server is the data plane's own engine (llhttp, or
aiohttp's server while CANARYPROXY_ENGINE=aiohttp still selects the previous one).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from canaryproxy.core.types import ErrorKind, Outcome, Role
from canaryproxy.inspection import (
    Inspection,
    InspectionSettings,
    apply,
    inspector_for,
    read_request,
)
from canaryproxy.proxy.exchange import Deadlines, Exchange
from canaryproxy.proxy import http
from canaryproxy.proxy.engine.server import EngineServer
from canaryproxy.proxy.headers import downstream_response_headers
from canaryproxy.proxy.relay import Relay
from tests.support import SSEScript, eventually

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CHAT = "/v1/chat/completions"


Handler = Callable[[http.Request], Awaitable[http.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """Start a bare data-plane server on 127.0.0.1 with `handler`; its port."""
    runners: list[web.ServerRunner] = []
    servers: list[EngineServer] = []

    async def start(handler: Handler) -> int:
        if http.ENGINE != "aiohttp":
            server = EngineServer(handler)
            servers.append(server)
            return await server.start("127.0.0.1", 0)
        runner = web.ServerRunner(web.Server(handler, handler_cancellation=True, access_log=None))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return site._server.sockets[0].getsockname()[1]

    yield start
    for runner in runners:
        await runner.cleanup()
    for server in servers:
        await server.shutdown()


async def relayed(serve, upstream_url: str, path: str, *, inspect: bool = False):
    """A server relaying `path` from `upstream_url`; the outcome it fills (applied at the end)."""
    exchange = Exchange(Role.STABLE, upstream_url, Deadlines())
    await exchange.start()
    relay = Relay(client_write_timeout=5.0, now=time.monotonic)
    outcome = Outcome(Role.STABLE, time.monotonic())
    settings = InspectionSettings(inject_stream_usage=False)

    async def handler(request: http.Request) -> http.StreamResponse:
        inspection = inspector = None
        try:
            upstream = await exchange.send(request.method, request.raw_path, CIMultiDict())
            outcome.ttfb, outcome.status = time.monotonic() - outcome.started, upstream.status
            if inspect:
                _, facts = read_request(CHAT, json.dumps({"model": "m", "stream": True}).encode(), settings)
                inspection = Inspection()
                inspector = inspector_for(facts, upstream.status, upstream.headers["Content-Type"],
                                          upstream.headers, inspection, settings,
                                          role=Role.STABLE, started=outcome.started, now=time.monotonic)
            headers = downstream_response_headers(upstream.headers)
            return await relay(request, upstream, headers, inspector, inspection, outcome)
        finally:
            apply(outcome, inspection, cut_short=outcome.error is ErrorKind.RESET)
            outcome.latency = 1.0  # marks the end: the handler is done
            await exchange.close()

    port = await serve(handler)
    return f"http://127.0.0.1:{port}{path}", outcome


async def test_a_whole_stream_goes_down_byte_for_byte_through_the_inspector(serve, upstreams):
    stable, _ = upstreams
    body = (FIXTURES / "openai_chat_stream.sse").read_bytes()
    events = [event + b"\n\n" for event in body.split(b"\n\n") if event]
    stable.on("GET", "/sse", SSEScript(events))
    url, outcome = await relayed(serve, stable.url, "/sse", inspect=True)
    async with aiohttp.ClientSession() as client:
        async with client.get(url) as response:
            assert await response.read() == body
    await eventually(lambda: outcome.latency)
    assert outcome.error is None and outcome.bytes_out == len(body)
    assert (outcome.stream, outcome.output_chars, outcome.finish_reason, outcome.truncated) == (True, 34, "stop", False)


async def test_an_upstream_reset_aborts_the_client_never_a_clean_end(serve, upstreams):
    stable, _ = upstreams
    stable.on("GET", "/sse", SSEScript([b"data: %d\n\n" % i for i in range(10)], fail_after=3))
    url, outcome = await relayed(serve, stable.url, "/sse")
    received = b""
    async with aiohttp.ClientSession() as client:
        async with client.get(url) as response:
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in response.content.iter_any():
                    received += chunk
    await eventually(lambda: outcome.latency)
    assert received == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert (outcome.error, outcome.bytes_out, outcome.truncated) == (ErrorKind.RESET, len(received), True)
