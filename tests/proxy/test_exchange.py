"""The exchange on its own: real upstreams on 127.0.0.1, every failure one UpstreamError(kind).

No client request is involved: method, target, headers and body are all an exchange takes, which is
what a second caller (shadow traffic) needs.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from multidict import CIMultiDict

from canaryproxy.core.types import ErrorKind, Role
from canaryproxy.errors import CanaryProxyError, UpstreamError
from canaryproxy.proxy.exchange import Deadlines, Exchange
from tests.support import RawPeer, SSEScript, Upstream


@pytest.fixture
async def exchanges() -> AsyncIterator[list[Exchange]]:
    made: list[Exchange] = []
    yield made
    for exchange in made:
        await exchange.close()


async def exchange_to(made: list[Exchange], url: str, **deadlines: float) -> Exchange:
    exchange = Exchange(Role.CANARY, url, Deadlines(**deadlines))
    await exchange.start()
    made.append(exchange)
    return exchange


async def failure(awaitable) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await awaitable
    return caught.value


async def test_a_refused_connection_is_connect(exchanges, unused_tcp_port):
    exchange = await exchange_to(exchanges, f"http://127.0.0.1:{unused_tcp_port}")
    error = await failure(exchange.send("POST", "/v1/chat/completions", CIMultiDict(), b"{}"))
    assert error.kind is ErrorKind.CONNECT
    assert isinstance(error, CanaryProxyError)
    assert error.message.startswith(f"canary upstream http://127.0.0.1:{unused_tcp_port} refused")


async def test_no_response_head_in_time_is_first_byte_timeout(exchanges, upstreams):
    stable, _ = upstreams

    async def slow(request):
        await asyncio.sleep(5)
        return web.json_response({})

    stable.on("POST", "/slow", slow)
    exchange = await exchange_to(exchanges, stable.url, first_byte=0.2)
    error = await failure(exchange.send("POST", "/slow", CIMultiDict(), b"{}"))
    assert error.kind is ErrorKind.FIRST_BYTE_TIMEOUT and "0.2s" in error.message


async def test_no_connection_in_time_is_connect_timeout(exchanges):
    # A listening socket whose accept queue is full: further SYNs are dropped, connect hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    try:
        port = listener.getsockname()[1]
        exchange = await exchange_to(exchanges, f"http://127.0.0.1:{port}", connect=0.2)
        error = await failure(exchange.send("GET", "/", CIMultiDict()))
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert error.kind is ErrorKind.CONNECT_TIMEOUT


@pytest.mark.parametrize("reply, kind", [
    (b"", ErrorKind.RESET),  # closes after reading the request
    (b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", ErrorKind.BAD_RESPONSE),
    (b"garbage that is not http\r\n\r\n", ErrorKind.BAD_RESPONSE),
], ids=["closed-without-response", "bad-content-length", "not-http"])
async def test_no_usable_head_is_classified_and_never_sent_twice(exchanges, reply, kind):
    peer = RawPeer(reply=lambda data: reply if b"\r\n\r\n" in data else None)
    await peer.start()
    try:
        exchange = await exchange_to(exchanges, peer.url)
        error = await failure(exchange.send("POST", "/v1/chat/completions", CIMultiDict(), b"{}"))
    finally:
        await peer.stop()
    assert error.kind is kind
    assert peer.connections == 1 and peer.received.count(b"POST ") == 1


async def test_a_body_cut_short_is_reset(exchanges):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 100\r\n\r\n"
    peer = RawPeer(reply=lambda data: head + b"data: 1\n\n" if b"\r\n\r\n" in data else None)
    await peer.start()
    try:
        exchange = await exchange_to(exchanges, peer.url)
        upstream = await exchange.send("GET", "/sse", CIMultiDict())
        assert upstream.status == 200 and upstream.headers["Content-Type"] == "text/event-stream"
        received = b""
        with pytest.raises(UpstreamError) as caught:
            async for chunk in upstream:
                received += chunk
        upstream.close()
    finally:
        await peer.stop()
    assert caught.value.kind is ErrorKind.RESET
    assert received == b"data: 1\n\n"


async def test_a_reset_in_the_middle_of_a_stream_is_reset(exchanges, upstreams):
    stable, _ = upstreams
    stable.on("GET", "/sse", SSEScript([b"data: %d\n\n" % i for i in range(10)], fail_after=3))
    exchange = await exchange_to(exchanges, stable.url)
    upstream = await exchange.send("GET", "/sse", CIMultiDict())
    received = b""
    with pytest.raises(UpstreamError) as caught:
        while chunk := await upstream.read():
            received += chunk
    upstream.close()
    assert caught.value.kind is ErrorKind.RESET
    assert received == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_after_the_first_byte_the_idle_deadline_applies(exchanges, upstreams):
    stable, _ = upstreams
    stable.on("GET", "/sse", SSEScript([b"data: 0\n\n", b"data: 1\n\n"], gap=3))
    exchange = await exchange_to(exchanges, stable.url, first_byte=10, idle=0.3)
    upstream = await exchange.send("GET", "/sse", CIMultiDict())
    assert await upstream.read() == b"data: 0\n\n"
    started = time.monotonic()
    error = await failure(upstream.read())
    upstream.close()
    assert error.kind is ErrorKind.IDLE_TIMEOUT and "0.3s" in error.message
    assert time.monotonic() - started < 2.5  # the idle deadline, not the first-byte one


async def test_a_head_without_a_body_in_time_is_first_byte_timeout(exchanges, upstreams):
    stable, _ = upstreams

    async def head_then_nothing(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(5)
        return response

    stable.on("GET", "/sse", head_then_nothing)
    exchange = await exchange_to(exchanges, stable.url, first_byte=0.3, idle=10)
    upstream = await exchange.send("GET", "/sse", CIMultiDict())
    error = await failure(upstream.read())
    upstream.close()
    assert error.kind is ErrorKind.FIRST_BYTE_TIMEOUT


async def test_a_second_upstream_gets_the_same_request_and_connections_are_reused(exchanges):
    # What shadow traffic will do: one request, two exchanges, no client connection involved.
    first, second = Upstream("stable"), Upstream("shadow")
    await first.start()
    await second.start()
    peers: list[tuple[str, int]] = []

    async def echo(request):
        peers.append(request.transport.get_extra_info("peername"))
        body = await request.read()
        return web.Response(body=b"got " + body, content_type="application/json")

    try:
        for upstream in (first, second):
            upstream.on("POST", "/v1/chat/completions", echo)
        pair = [await exchange_to(exchanges, u.url + "/") for u in (first, second)]
        answers = []
        for _ in range(2):
            for exchange in pair:
                headers = CIMultiDict({"X-Request-Id": "r-1", "Content-Type": "application/json"})
                upstream = await exchange.send("POST", "/v1/chat/completions?x=%2F", headers, b'{"a":1}')
                answers.append(b"".join([chunk async for chunk in upstream]))
                upstream.release()
    finally:
        await first.stop()
        await second.stop()
    assert answers == [b'got {"a":1}'] * 4
    for upstream in (first, second):
        assert [seen.raw_path for seen in upstream.seen] == ["/v1/chat/completions?x=%2F"] * 2
        assert {seen.header("x-request-id") for seen in upstream.seen} == {"r-1"}
    # Each exchange kept its connection: two requests each, over one connection each.
    assert len(set(peers)) == 2


async def test_a_streamed_body_is_sent_as_it_comes(exchanges, upstreams):
    stable, _ = upstreams
    exchange = await exchange_to(exchanges, stable.url)

    async def body():
        for piece in (b"one ", b"two ", b"three"):
            await asyncio.sleep(0)
            yield piece

    upstream = await exchange.send("PUT", "/upload", CIMultiDict(), body())
    assert upstream.status == 200
    upstream.close()
    assert stable.seen[0].body == b"one two three"
