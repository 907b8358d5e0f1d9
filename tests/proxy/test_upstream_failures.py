"""What the client sees when an upstream fails: before, and in the middle of, a response."""

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from tests.support import RawPeer, SSEScript, eventually


async def post(proxy, path="/v1/chat/completions", **kwargs):
    async with aiohttp.ClientSession() as client:
        async with client.post(f"http://127.0.0.1:{proxy.data_port}{path}", json={"x": 1}, **kwargs) as r:
            return r.status, await r.json(), r.headers


async def test_refused_connection_is_502_naming_the_role(make_proxy, unused_tcp_port):
    proxy = await make_proxy(canary_url=f"http://127.0.0.1:{unused_tcp_port}", routing={"weight": 100})
    status, body, headers = await post(proxy)
    assert status == 502
    assert body["error"]["code"] == "upstream_connect" and body["error"]["upstream"] == "canary"
    assert headers["x-canary-version"] == "canary"
    outcome = proxy.test_sink.outcomes[0]
    assert outcome.failed and outcome.error.value == "connect"


@pytest.mark.parametrize("reply, code", [
    (lambda data: b"", "upstream_reset"),  # closes after reading the request
    (lambda data: b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", "upstream_bad_response"),
    (lambda data: b"garbage that is not http\r\n\r\n", "upstream_bad_response"),
], ids=["closed-without-response", "bad-content-length", "not-http"])
async def test_unusable_response_is_502_and_never_retried(make_proxy, reply, code):
    peer = RawPeer(reply=lambda data: reply(data) if b"\r\n\r\n" in data else None)
    await peer.start()
    proxy = await make_proxy(stable_url=peer.url)
    status, body, _ = await post(proxy)
    await peer.stop()
    assert status == 502, body
    assert body["error"]["code"] == code
    # The request's bytes reached the upstream: it must not be sent a second time.
    assert peer.connections == 1 and peer.received.count(b"POST ") == 1


async def test_no_first_byte_in_time_is_504(make_proxy, upstreams):
    stable, _ = upstreams

    async def slow(request):
        await asyncio.sleep(5)
        return web.json_response({})

    stable.on("POST", "/slow", slow)
    proxy = await make_proxy(timeouts={"first_byte": "200ms"})
    status, body, _ = await post(proxy, "/slow")
    assert status == 504 and body["error"]["code"] == "upstream_first_byte_timeout"
    assert "0.2s" in body["error"]["message"]
    # The abandoned upstream request was cancelled, not left generating.
    await eventually(lambda: stable.cancelled_at)


async def test_no_connection_in_time_is_504(make_proxy):
    # A listening socket whose accept queue is full: further SYNs are dropped, connect hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    try:
        proxy = await make_proxy(stable_url=f"http://127.0.0.1:{port}", timeouts={"connect": "200ms"})
        status, body, _ = await post(proxy)
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert status == 504 and body["error"]["code"] == "upstream_connect_timeout"


async def test_upstream_reset_mid_stream_aborts_the_client(make_proxy, upstreams):
    stable, _ = upstreams
    stable.on("GET", "/sse", SSEScript([b"data: %d\n\n" % i for i in range(10)], fail_after=3))
    proxy = await make_proxy()
    received = b""
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/sse") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in r.content.iter_any():
                    received += chunk
    assert received == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    outcome = await eventually(lambda: proxy.test_sink.outcomes and proxy.test_sink.outcomes[0])
    assert outcome.truncated and outcome.failed and outcome.error.value == "reset"


async def test_a_stalled_stream_hits_the_idle_timeout_and_aborts_the_client(make_proxy, upstreams):
    stable, _ = upstreams
    stable.on("GET", "/sse", SSEScript([b"data: 0\n\n", b"data: 1\n\n"], gap=3))
    proxy = await make_proxy(timeouts={"idle": "300ms"})
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/sse") as r:
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
    outcome = await eventually(lambda: proxy.test_sink.outcomes and proxy.test_sink.outcomes[0])
    assert outcome.error.value == "idle_timeout" and outcome.truncated


async def test_a_slow_prefill_is_bounded_by_first_byte_not_idle(make_proxy, upstreams):
    stable, _ = upstreams

    async def prefill_then_stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(0.5)  # longer than idle, shorter than first_byte
        await response.write(b"data: a\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    stable.on("GET", "/sse", prefill_then_stream)
    proxy = await make_proxy(timeouts={"idle": "200ms", "first_byte": "3s"})
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/sse") as r:
            assert await r.read() == b"data: a\n\ndata: [DONE]\n\n"


async def test_stable_keeps_flowing_while_the_canary_is_down(make_proxy, unused_tcp_port):
    proxy = await make_proxy(canary_url=f"http://127.0.0.1:{unused_tcp_port}",
                             routing={"weight": 50, "sticky": ["header:x-user-id"]})
    results = []
    async with aiohttp.ClientSession() as client:
        for i in range(40):
            async with client.get(f"http://127.0.0.1:{proxy.data_port}/",
                                  headers={"x-user-id": f"u{i}"}) as r:
                results.append((r.headers["x-canary-version"], r.status))
    assert {s for role, s in results if role == "stable"} == {200}
    assert {s for role, s in results if role == "canary"} == {502}
