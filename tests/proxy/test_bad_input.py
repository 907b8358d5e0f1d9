"""Malformed or abusive requests get a precise error, and the upstream receives no bytes."""

import asyncio

import aiohttp
import pytest

from tests.support import RawPeer, eventually, json_body, raw_request, status_of


@pytest.fixture
async def peer():
    peer = RawPeer(reply=lambda data: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                   if b"\r\n\r\n" in data else None)
    await peer.start()
    yield peer
    await peer.stop()


async def refused_before_upstream(proxy, peer, request: bytes) -> tuple[int, dict]:
    response = await raw_request(proxy.data_port, request)
    assert peer.received == b"" and peer.connections == 0, "the upstream received bytes"
    return status_of(response), json_body(response)


async def test_transfer_encoding_on_http_1_0_is_refused(make_proxy, peer):
    proxy = await make_proxy(stable_url=peer.url)
    status, body = await refused_before_upstream(proxy, peer, (
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"))
    assert status == 400 and body["error"]["code"] == "bad_framing"
    assert "HTTP/1.0" in body["error"]["message"]


async def test_upgrade_with_a_body_is_refused(make_proxy, peer):
    proxy = await make_proxy(stable_url=peer.url)
    status, body = await refused_before_upstream(proxy, peer, (
        b"POST /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 5\r\n\r\nhello"))
    assert status == 400 and "Upgrade" in body["error"]["message"]


@pytest.mark.parametrize("request_bytes", [
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    b"GET / HTTP/1.32\r\nHost: h\r\n\r\n",
], ids=["cl+te", "te-twice", "cl-twice", "obs-fold", "space-before-colon", "version"])
# absolute-form targets are accepted (RFC 9112 §3.2.2: a server MUST): see tests/proxy/test_corpus.py
async def test_smuggling_shapes_never_reach_the_upstream(make_proxy, peer, request_bytes):
    proxy = await make_proxy(stable_url=peer.url)
    response = await raw_request(proxy.data_port, request_bytes)
    assert status_of(response) == 400
    assert peer.received == b""


async def test_a_declared_body_over_the_limit_is_413_before_any_upstream_byte(make_proxy, peer):
    proxy = await make_proxy(stable_url=peer.url, limits={"max_request_body": "1KiB"})
    status, body = await refused_before_upstream(proxy, peer, (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 1025\r\n\r\n" + b"x" * 1025))
    assert status == 413 and body["error"]["code"] == "body_too_large"


async def test_a_chunked_body_that_grows_over_the_limit_is_413(make_proxy, upstreams):
    proxy = await make_proxy(limits={"max_request_body": "64KiB"})

    async def body():
        for _ in range(20):
            yield b"y" * 8192

    async with aiohttp.ClientSession() as client:
        async with client.post(f"http://127.0.0.1:{proxy.data_port}/upload", data=body()) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "body_too_large"
    outcome = await eventually(lambda: proxy.test_sink.outcomes)
    assert outcome[0].error.value == "body_too_large" and not outcome[0].counts_for_version


async def test_a_trickling_body_is_408(make_proxy, peer):
    proxy = await make_proxy(stable_url=peer.url, timeouts={"client_body": "300ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n")
    response = b""

    async def trickle():
        for _ in range(100):
            writer.write(b"x")
            await asyncio.sleep(0.05)

    trickler = asyncio.create_task(trickle())
    try:
        response = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        trickler.cancel()
        writer.close()
    assert status_of(response) == 408
    assert json_body(response)["error"]["code"] == "client_body_timeout"
    assert peer.received == b""


async def test_a_trickling_streamed_body_is_408(make_proxy, upstreams):
    proxy = await make_proxy(timeouts={"client_body": "300ms"}, limits={"max_request_body": "10MiB"})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5000000\r\n\r\n")

    async def trickle():
        for _ in range(100):
            writer.write(b"x" * 10)
            await asyncio.sleep(0.05)

    trickler = asyncio.create_task(trickle())
    try:
        response = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        trickler.cancel()
        writer.close()
    assert status_of(response) == 408


async def test_proxy_keeps_serving_after_bad_input(make_proxy, upstreams):
    proxy = await make_proxy()
    for junk in (b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"):
        await raw_request(proxy.data_port, junk)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/still-ok") as r:
            assert r.status == 200
