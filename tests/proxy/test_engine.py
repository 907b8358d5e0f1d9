"""What the llhttp engine does itself that aiohttp's server did for it: pipelining with a bound,
request-body flow control, the idle keep-alive timeout, HTTP/1.0 framing, a body left unread.

Real sockets, a real proxy and real upstreams; the connection's queue and buffers are read only to
show they stay bounded.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from canaryproxy.proxy import http
from canaryproxy.proxy.engine.connection import PIPELINE
from canaryproxy.proxy.engine.request import HIGH_WATER
from tests.proxy.test_corpus import exchange
from tests.support import eventually

pytestmark = pytest.mark.skipif(http.ENGINE != "llhttp", reason="the llhttp engine's own behaviour")

GET = b"GET /held HTTP/1.1\r\nHost: h\r\n\r\n"


def connections(proxy):
    return proxy._listener.connections


async def test_pipelined_requests_are_answered_in_order_and_parsed_ahead_only_so_far(make_proxy, upstreams):
    stable, _ = upstreams
    release = asyncio.Event()
    order: list[str] = []

    async def held(request: web.Request) -> web.Response:
        order.append(request.query["n"])
        if request.query["n"] == "0":
            await release.wait()  # the first request holds up every one behind it
        return web.Response(text=request.query["n"])

    stable.on("GET", "/held", held)
    proxy = await make_proxy()
    count = PIPELINE * 4
    data = b"".join(b"GET /held?n=%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(count))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write(data)
    await eventually(lambda: order == ["0"])
    [connection] = connections(proxy)
    await eventually(lambda: connection._held is not None)  # the rest waits unparsed
    assert len(connection._queue) <= PIPELINE
    release.set()
    received = b""
    while received.count(b"HTTP/1.1 200 ") < count:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, "the proxy closed before answering every request"
        received += chunk
    writer.close()
    bodies = [part.rpartition(b"\r\n\r\n")[2][:len(str(i))] for i, part in
              enumerate(received.split(b"HTTP/1.1 200 ")[1:])]
    assert bodies == [str(i).encode() for i in range(count)]
    assert order == [str(i) for i in range(count)]


async def test_a_slow_upstream_slows_the_client_instead_of_filling_memory(make_proxy, upstreams):
    stable, _ = upstreams
    reading = asyncio.Event()
    got = 0

    async def slow_reader(request: web.Request) -> web.Response:
        nonlocal got
        await reading.wait()
        while chunk := await request.content.readany():
            got += len(chunk)
        return web.Response(text=str(got))

    stable.on("POST", "/upload", slow_reader)
    proxy = await make_proxy(limits={"max_request_body": "64MiB"})
    size = 16 * 1024**2
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
    block = b"x" * 65536
    sent = 0

    async def send() -> None:
        nonlocal sent
        while sent < size:
            writer.write(block)
            sent += len(block)
            await writer.drain()

    sender = asyncio.create_task(send())
    [connection] = await eventually(lambda: list(connections(proxy)))
    await eventually(lambda: connection._body_paused)
    assert not sender.done() and sent < size  # the client is held back
    assert connection._receiving is not None and connection._receiving.size < 4 * HIGH_WATER
    reading.set()
    await asyncio.wait_for(sender, 20)
    answer = await asyncio.wait_for(reader.read(65536), 20)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(str(size).encode())


async def test_an_idle_keepalive_connection_is_closed_after_the_timeout(make_proxy, upstreams):
    proxy = await make_proxy(timeouts={"keepalive": "300ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    assert answer.startswith(b"HTTP/1.1 200 ")
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(65536), 5) == b""  # closed by the proxy
    assert 0.2 < time.monotonic() - started < 2.0
    writer.close()


async def test_http_1_0_is_answered_in_1_0_and_closed_unless_kept_alive(make_proxy, upstreams):
    proxy = await make_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.0 200 ") and b"Connection: keep-alive" in head
    writer.write(b"GET / HTTP/1.0\r\n\r\n")  # the second time without keep-alive
    rest = await asyncio.wait_for(reader.read(), 5)  # read until the proxy closes
    writer.close()
    assert rest.count(b"HTTP/1.0 200 ") == 1 and b"Connection: keep-alive" not in rest.split(b"}")[-2]


async def test_a_body_left_unread_is_dropped_and_the_connection_goes_on(make_proxy, upstreams):
    proxy = await make_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    # OPTIONS * is answered by the proxy without reading its body; the body arrives later.
    writer.write(b"OPTIONS * HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in head
    writer.write(b"world" + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"upstream": "stable"' in answer


async def test_a_head_request_gets_the_length_and_no_body(make_proxy, upstreams):
    proxy = await make_proxy()
    statuses = await exchange(proxy.data_port, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n" + GET.replace(
        b"/held", b"/"), 2)
    assert statuses == [200, 200]  # a body after the HEAD answer would have read as a response


class _CountedSends:
    """The connection's transport, counting the sends made through it (what reaches the kernel
    as one `send` each); everything else is the real transport's."""

    def __init__(self, transport):
        self._transport = transport
        self.sends: list[bytes] = []

    def write(self, data):
        self.sends.append(bytes(data))
        self._transport.write(data)

    def writelines(self, parts):
        data = b"".join(parts)
        self.sends.append(data)
        self._transport.write(data)

    def __getattr__(self, name):
        return getattr(self._transport, name)


async def test_a_json_answer_that_came_whole_goes_out_in_one_send(make_proxy, upstreams):
    proxy = await make_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write(b"GET /warm HTTP/1.1\r\nHost: h\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"}"), 5)
    [connection] = connections(proxy)
    counted = connection.output.transport = _CountedSends(connection.output.transport)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    # The head waited for the body that arrived with it: one send, not a head and then a body.
    assert len(counted.sends) == 1 and counted.sends[0] == answer


async def test_a_head_is_not_held_back_while_the_upstream_has_not_sent_its_body(make_proxy, upstreams):
    stable, _ = upstreams
    release = asyncio.Event()

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)  # the head now, the first event much later
        await release.wait()
        await response.write(b"data: late\n\n")
        return response

    stable.on("GET", "/slow-body", slow_body)
    proxy = await make_proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write(b"GET /slow-body HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # while the body is held
    assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in head
    release.set()
    event = await asyncio.wait_for(reader.readuntil(b"late\n\n\r\n"), 5)
    writer.close()
    assert event.endswith(b"data: late\n\n\r\n")
