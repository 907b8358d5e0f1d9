"""Graceful shutdown: readiness fails, listeners close, in-flight streams get the drain window."""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.support import eventually


def slow_stream(events: int, gap: float, first_sent: asyncio.Event):
    async def handler(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(events):
            await response.write(b"data: %d\n\n" % i)
            first_sent.set()
            await asyncio.sleep(gap)
        await response.write(b"data: [DONE]\n\n")
        return response
    return handler


async def test_in_flight_stream_finishes_within_the_drain_window(make_proxy, upstreams):
    stable, _ = upstreams
    first_sent = asyncio.Event()
    stable.on("GET", "/sse", slow_stream(5, 0.1, first_sent))
    proxy = await make_proxy(timeouts={"drain": "5s"})
    base = f"http://127.0.0.1:{proxy.data_port}"
    admin = f"http://127.0.0.1:{proxy.admin_port}"
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin}/readyz") as r:
            assert r.status == 200
        async with client.get(f"{base}/sse") as stream:
            await first_sent.wait()
            shutdown = asyncio.create_task(proxy.shutdown())
            await eventually(lambda: proxy.forwarder.draining)
            # New connections are refused once the listener is closed.
            with pytest.raises(aiohttp.ClientConnectorError):
                async with aiohttp.ClientSession() as other:
                    await other.get(f"{base}/new")
            body = await stream.read()
        await shutdown
    assert body.endswith(b"data: [DONE]\n\n")
    assert proxy.test_sink.outcomes[0].error is None


async def test_readiness_fails_while_draining(make_proxy, upstreams):
    stable, _ = upstreams
    first_sent = asyncio.Event()
    stable.on("GET", "/sse", slow_stream(20, 0.05, first_sent))
    proxy = await make_proxy(timeouts={"drain": "5s"})
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/sse") as stream:
            await first_sent.wait()
            shutdown = asyncio.create_task(proxy.shutdown())
            await eventually(lambda: proxy.forwarder.draining)
            async with client.get(f"http://127.0.0.1:{proxy.admin_port}/readyz") as r:
                assert r.status == 503
            async with client.get(f"http://127.0.0.1:{proxy.admin_port}/healthz") as r:
                assert r.status == 200
            await stream.read()
        await shutdown


async def test_streams_still_running_when_the_window_ends_are_aborted(make_proxy, upstreams):
    stable, _ = upstreams
    first_sent = asyncio.Event()
    stable.on("GET", "/sse", slow_stream(100, 0.05, first_sent))
    proxy = await make_proxy(timeouts={"drain": "300ms"})
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/sse") as stream:
            await first_sent.wait()
            shutdown = asyncio.create_task(proxy.shutdown())
            # The client must see a broken stream, never a clean end.
            with pytest.raises(aiohttp.ClientPayloadError):
                await stream.read()
        await asyncio.wait_for(shutdown, 5)
    outcome = proxy.test_sink.outcomes[0]
    assert outcome.error.value == "shutdown" and outcome.truncated


async def test_a_request_on_a_kept_alive_connection_while_draining_gets_503(make_proxy, upstreams):
    proxy = await make_proxy()
    proxy.forwarder.begin_drain()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    response = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 503")
    assert b"Retry-After: 1" in response and b"Connection: close" in response
