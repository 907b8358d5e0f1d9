"""A client that leaves cancels its upstream request at once, and that connection is closed."""

import asyncio
import time

from aiohttp import web

from tests.support import eventually


async def open_and_abandon(port: int, path: str, wait_for) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    await writer.drain()
    await wait_for()
    left_at = time.monotonic()
    writer.transport.abort()  # the client vanishes (RST), as a killed process would
    return left_at


async def test_client_leaving_during_prefill_cancels_the_upstream_within_100ms(make_proxy, upstreams):
    stable, _ = upstreams
    started = asyncio.Event()

    async def prefill(request):
        started.set()
        await asyncio.sleep(10)  # a long prefill: no byte of the response yet
        return web.Response(text="late")

    stable.on("GET", "/prefill", prefill)
    proxy = await make_proxy()
    left_at = await open_and_abandon(proxy.data_port, "/prefill", started.wait)
    await eventually(lambda: stable.cancelled_at, timeout=2)
    assert stable.cancelled_at[0] - left_at < 0.1
    outcome = await eventually(lambda: proxy.test_sink.outcomes and proxy.test_sink.outcomes[0])
    assert outcome.error.value == "client_disconnect" and not outcome.counts_for_version


async def test_client_leaving_mid_stream_cancels_the_upstream_within_100ms(make_proxy, upstreams):
    stable, _ = upstreams
    streaming = asyncio.Event()

    async def endless(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while True:
            await response.write(b"data: token\n\n")
            streaming.set()
            await asyncio.sleep(0.01)

    stable.on("GET", "/stream", endless)
    proxy = await make_proxy()
    left_at = await open_and_abandon(proxy.data_port, "/stream", streaming.wait)
    # aiohttp cancels an upstream handler only when its connection is lost: the cancellation is
    # proof that the proxy closed the upstream connection rather than pooling it.
    await eventually(lambda: stable.cancelled_at, timeout=2)
    assert stable.cancelled_at[0] - left_at < 0.1
