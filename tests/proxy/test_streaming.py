"""Bodies stream chunk by chunk in both directions; SSE events are not held back."""

import asyncio
import hashlib
import tracemalloc

import aiohttp
from aiohttp import web

from tests.support import SSEScript, eventually, raw_request, status_of

MB = 1024 * 1024


async def test_each_sse_event_reaches_the_client_before_the_upstream_sends_the_next(upstreams, make_proxy):
    stable, _ = upstreams
    received_by_client: list[asyncio.Event] = [asyncio.Event() for _ in range(5)]

    async def lockstep(request: web.Request) -> web.StreamResponse:
        # The upstream only sends event i+1 once the client has event i: a proxy that buffers
        # would deadlock here and the test would time out.
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, seen in enumerate(received_by_client):
            await response.write(f"data: {i}\n\n".encode())
            await asyncio.wait_for(seen.wait(), 5)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    stable.on("GET", "/events", lockstep)
    proxy = await make_proxy()
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/events") as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            buffer = b""
            for i, seen in enumerate(received_by_client):
                while f"data: {i}\n\n".encode() not in buffer:
                    buffer += await asyncio.wait_for(response.content.readany(), 5)
                seen.set()
            rest = await response.read()
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_a_50_mb_upload_streams_through_without_being_held_in_memory(upstreams, make_proxy):
    stable, _ = upstreams
    digest_seen_by_upstream = []
    first_bytes_at = []

    async def sink(request: web.Request) -> web.Response:
        h = hashlib.sha256()
        async for chunk in request.content.iter_any():
            if not first_bytes_at:
                first_bytes_at.append(sent[0])
            h.update(chunk)
        digest_seen_by_upstream.append(h.hexdigest())
        return web.json_response({"ok": True})

    stable.on("PUT", "/upload", sink)
    proxy = await make_proxy(limits={"max_request_body": "64MiB"})
    piece = bytes(range(256)) * 4096  # 1 MiB
    expected = hashlib.sha256(piece * 50).hexdigest()
    sent = [0]

    async def body():
        for _ in range(50):
            sent[0] += 1
            yield piece

    tracemalloc.start()
    try:
        async with aiohttp.ClientSession() as client:
            async with client.put(f"http://127.0.0.1:{proxy.data_port}/upload", data=body()) as r:
                assert r.status == 200
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest_seen_by_upstream == [expected]
    assert first_bytes_at[0] < 50, "the upstream only got bytes after the whole body was sent"
    # Client, proxy and upstream share this process: 50 MiB buffered anywhere would show here.
    assert peak < 20 * MB, f"peak traced memory {peak / MB:.1f} MiB"


async def test_a_50_mb_download_streams_through(upstreams, make_proxy):
    stable, _ = upstreams
    piece = b"x" * MB

    async def source(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = 50 * MB
        await response.prepare(request)
        for _ in range(50):
            await response.write(piece)
        await response.write_eof()
        return response

    stable.on("GET", "/big", source)
    proxy = await make_proxy()
    tracemalloc.start()
    try:
        total = 0
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{proxy.data_port}/big") as r:
                assert r.headers["Content-Length"] == str(50 * MB)
                async for chunk in r.content.iter_any():
                    total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 50 * MB
    assert peak < 20 * MB, f"peak traced memory {peak / MB:.1f} MiB"


async def test_methods_paths_and_query_strings_pass_unchanged(upstreams, make_proxy):
    stable, _ = upstreams
    proxy = await make_proxy()
    target = "/a/b%20c/../d?x=1&y=%2F&x=2&empty="
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"):
        body = b"payload" if method not in ("GET", "HEAD") else b""
        response = await raw_request(
            proxy.data_port,
            f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode() + body,
        )
        assert status_of(response) == 200
    assert [s.method for s in stable.seen] == ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"]
    # The raw target goes upstream as the client wrote it: no normalisation, no re-quoting.
    assert {s.raw_path for s in stable.seen} == {target}
    assert stable.seen[1].body == b"payload"


async def test_compressed_bodies_pass_through_untouched(upstreams, make_proxy):
    import gzip

    stable, _ = upstreams
    compressed = gzip.compress(b'{"hello": "world"}' * 100)

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip",
                                                       "Content-Type": "application/json"})

    stable.on("GET", "/gz", gzipped)
    proxy = await make_proxy()
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/gz",
                              skip_auto_headers=["Accept-Encoding"]) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert await r.read() == compressed
    # The proxy did not ask for compression on the client's behalf.
    assert stable.seen[0].header("accept-encoding") is None
    assert stable.seen[0].header("user-agent") is not None  # aiohttp client of this test sent one


async def test_one_outcome_per_request_with_sizes_and_timings(upstreams, make_proxy):
    stable, _ = upstreams
    stable.on("GET", "/sse", SSEScript([b"data: 1\n\n", b"data: 2\n\n"]))
    proxy = await make_proxy()
    sink = proxy.test_sink
    async with aiohttp.ClientSession() as client:
        async with client.post(f"http://127.0.0.1:{proxy.data_port}/x", data=b"12345") as r:
            await r.read()
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/sse") as r:
            await r.read()
    await eventually(lambda: len(sink.outcomes) == 2)
    post, sse = sink.outcomes
    assert (post.role.value, post.status, post.bytes_in, post.error, post.truncated) == ("stable", 200, 5, None, False)
    assert sse.bytes_out == 18 and sse.ttfb is not None and 0 < sse.ttfb <= sse.latency
    assert len(post.request_id) == 32
