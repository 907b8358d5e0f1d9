"""`Expect: 100-continue`: the proxy answers 100 itself once the request is accepted, and never
forwards Expect (what nginx does). The upstream here is a real aiohttp server that never sends 100."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

HEAD = (b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")


class SilentUpstream:
    """An aiohttp server whose route never answers 100 Continue (its expect handler does nothing),
    recording the headers and body of every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def no_continue(request: web.Request) -> None:
            return None

        async def handle(request: web.Request) -> web.Response:
            self.seen.append((dict(request.headers), await request.read()))
            return web.Response(text="done")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle, expect_handler=no_continue)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def silent():
    upstream = SilentUpstream()
    await upstream.start()
    yield upstream
    await upstream.stop()


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
        if not chunk:
            break
        data += chunk
    return data


async def test_the_proxy_sends_100_before_reading_the_body_and_the_upstream_sees_no_expect(
        make_proxy, silent):
    proxy = await make_proxy(stable_url=silent.url, canary_url=silent.url)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    try:
        writer.write(HEAD)  # the body is held back until the proxy says 100
        interim = await read_until(reader, b"\r\n\r\n", timeout=2.0)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert silent.seen == [], "the body was not sent, so nothing can have been forwarded"
        writer.write(b"hello")
        final = await read_until(reader, b"done", timeout=2.0)
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    assert final.startswith(b"HTTP/1.1 200 ") and final.endswith(b"done")
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    [(headers, body)] = silent.seen
    assert body == b"hello"
    assert not any(name.lower() == "expect" for name in headers)


async def test_a_refused_request_gets_its_final_status_without_100(make_proxy, silent):
    proxy = await make_proxy(stable_url=silent.url, canary_url=silent.url,
                             limits={"max_request_body": "1KiB"})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5000\r\n\r\n")
        response = await read_until(reader, b"body_too_large", timeout=2.0)
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in response
    assert silent.seen == []


async def test_a_body_sent_with_the_head_needs_no_100(make_proxy, silent):
    proxy = await make_proxy(stable_url=silent.url, canary_url=silent.url)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    try:
        writer.write(HEAD + b"hello")  # the printf: the body did not wait
        response = await read_until(reader, b"done", timeout=2.0)
    finally:
        writer.close()
    assert response.startswith(b"HTTP/1.1 200 ") and time.monotonic() - started < 1.0
    [(headers, body)] = silent.seen
    assert body == b"hello" and not any(name.lower() == "expect" for name in headers)
