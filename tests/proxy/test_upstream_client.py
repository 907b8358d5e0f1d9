"""What the llhttp upstream client does itself: its pool, its framing, its flow control, its retry.

Real upstreams on 127.0.0.1 (aiohttp servers, or raw peers for byte-exact replies); nothing of ours
is mocked, and every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from multidict import CIMultiDict

from canaryproxy.core.types import ErrorKind, Role
from canaryproxy.errors import UpstreamError
from canaryproxy.proxy.exchange import AiohttpExchange, Deadlines, Exchange, LlhttpExchange
from canaryproxy.proxy.upstream.connection import HIGH_WATER
from tests.proxy.test_stale_keepalive import HangingUpUpstream
from tests.support import RawPeer, Upstream, eventually


@pytest.fixture
async def made() -> AsyncIterator[list[LlhttpExchange]]:
    exchanges: list[LlhttpExchange] = []
    yield exchanges
    for exchange in exchanges:
        await exchange.close()


async def client(made: list[LlhttpExchange], url: str, deadlines: Deadlines | None = None,
                 **options) -> LlhttpExchange:
    exchange = LlhttpExchange(Role.STABLE, url, deadlines or Deadlines(), **options)
    await exchange.start()
    made.append(exchange)
    return exchange


async def body_of(response) -> bytes:
    data = b""
    while chunk := await response.read():
        data += chunk
    return data


def held(upstream: Upstream, path: str) -> tuple[asyncio.Event, list[int]]:
    """A handler on `path` that answers once its event is set, noting the client's port."""
    gate, ports = asyncio.Event(), []

    async def handler(request: web.Request) -> web.Response:
        ports.append(request.transport.get_extra_info("peername")[1])
        await gate.wait()
        return web.Response(body=b"done")

    upstream.on("GET", path, handler)
    return gate, ports


def peer_port_handler(ports: list[int]):
    async def handler(request: web.Request) -> web.Response:
        ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(body=b"ok")
    return handler


# --- the pool ----------------------------------------------------------------------------------

async def test_connections_are_reused_last_in_first_out(made, upstreams):
    stable, _ = upstreams
    (gate_a, port_a), (gate_b, port_b) = held(stable, "/a"), held(stable, "/b")
    who: list[int] = []
    stable.on("GET", "/who", peer_port_handler(who))
    exchange = await client(made, stable.url)
    sent_a = asyncio.ensure_future(exchange.send("GET", "/a", CIMultiDict()))
    sent_b = asyncio.ensure_future(exchange.send("GET", "/b", CIMultiDict()))
    await eventually(lambda: port_a and port_b)
    for gate, sent in ((gate_a, sent_a), (gate_b, sent_b)):  # a goes back to the pool first, then b
        gate.set()
        response = await sent
        assert await body_of(response) == b"done"
        response.release()
    assert exchange.pool.idle == 2 and port_a != port_b
    response = await exchange.send("GET", "/who", CIMultiDict())
    await body_of(response)
    response.release()
    assert who == port_b  # the warmest: the one released last


async def test_idle_connections_expire_after_keepalive(made, upstreams):
    stable, _ = upstreams
    ports: list[int] = []
    stable.on("GET", "/who", peer_port_handler(ports))
    exchange = await client(made, stable.url, keepalive=0.2)
    for _ in range(2):
        response = await exchange.send("GET", "/who", CIMultiDict())
        await body_of(response)
        response.release()
    assert exchange.pool.size == 1 and ports[0] == ports[1]  # reused while fresh
    started = time.monotonic()
    await eventually(lambda: exchange.pool.size == 0)
    assert time.monotonic() - started >= 0.1  # dropped by the expiry, not at once
    response = await exchange.send("GET", "/who", CIMultiDict())
    await body_of(response)
    response.release()
    assert ports[2] != ports[0]


async def test_at_the_limit_a_request_waits_for_a_connection_handed_back(made, upstreams):
    stable, _ = upstreams
    gate, ports = held(stable, "/hold")
    who: list[int] = []
    stable.on("GET", "/who", peer_port_handler(who))
    exchange = await client(made, stable.url, connections=1)
    first = asyncio.ensure_future(exchange.send("GET", "/hold", CIMultiDict()))
    await eventually(lambda: ports)
    second = asyncio.ensure_future(exchange.send("GET", "/who", CIMultiDict()))
    await eventually(lambda: len(exchange.pool._waiters) == 1)
    assert not second.done() and exchange.pool.size == 1 and not who
    gate.set()
    response = await first
    await body_of(response)
    response.release()  # handed straight to the waiting request
    response = await second
    assert await body_of(response) == b"ok" and who == ports
    response.release()


async def test_at_the_limit_the_wait_ends_in_connect_timeout_and_frees_nothing_it_did_not_hold(
        made, upstreams):
    stable, _ = upstreams
    gate, ports = held(stable, "/hold")
    exchange = await client(made, stable.url, Deadlines(connect=0.2), connections=1)
    first = asyncio.ensure_future(exchange.send("GET", "/hold", CIMultiDict()))
    await eventually(lambda: ports)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        await exchange.send("GET", "/other", CIMultiDict())
    assert caught.value.kind is ErrorKind.CONNECT_TIMEOUT
    assert caught.value.message == f"stable upstream {stable.url} did not accept a connection within 0.2s"
    assert 0.15 <= time.monotonic() - started < 2
    gate.set()
    response = await first
    await body_of(response)
    response.release()
    response = await exchange.send("GET", "/other", CIMultiDict())  # the slot is there again
    assert response.status == 200 and exchange.pool.size == 1
    await body_of(response)
    response.release()


async def test_closing_the_exchange_closes_every_connection(upstreams):
    stable, _ = upstreams

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while True:
            await response.write(b"data: x\n\n")
            await asyncio.sleep(0.01)

    stable.on("GET", "/sse", endless)
    exchange = LlhttpExchange(Role.STABLE, stable.url, Deadlines())
    await exchange.start()
    streaming = await exchange.send("GET", "/sse", CIMultiDict())
    assert await streaming.read()
    idle = await exchange.send("GET", "/", CIMultiDict())  # a second connection: the first is busy
    await body_of(idle)
    idle.release()
    pool = exchange.pool
    assert pool.size == 2
    await exchange.close()
    await eventually(lambda: pool.size == 0)
    with pytest.raises(UpstreamError) as caught:
        await body_of(streaming)
    assert caught.value.kind is ErrorKind.RESET
    await eventually(lambda: stable.cancelled_at)  # the upstream saw it go


async def test_close_ends_the_upstreams_work(made, upstreams):
    stable, _ = upstreams
    exchange = await client(made, stable.url)

    async def head_then_wait(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await asyncio.sleep(30)
        return response

    stable.on("GET", "/stream", head_then_wait)
    response = await exchange.send("GET", "/stream", CIMultiDict())
    response.close()
    await eventually(lambda: stable.cancelled_at)
    await eventually(lambda: exchange.pool.size == 0)


# --- sending -----------------------------------------------------------------------------------

async def test_a_streamed_body_without_a_length_is_sent_chunked_with_backpressure(made, upstreams):
    stable, _ = upstreams
    got: dict[str, object] = {}

    async def upload(request: web.Request) -> web.Response:
        got["te"] = request.headers.get("Transfer-Encoding")
        got["length"] = request.headers.get("Content-Length")
        got["body"] = await request.read()
        return web.Response(body=b"stored")

    stable.on("PUT", "/upload", upload)
    exchange = await client(made, stable.url)
    piece = b"0123456789abcdef" * 16384  # 256 KiB; 32 of them: far past the write buffer's limit

    async def body() -> AsyncIterator[bytes]:
        for _ in range(32):
            yield piece
        yield b""  # an empty piece must not end the chunked body early
        yield b"end"

    response = await exchange.send("PUT", "/upload", CIMultiDict({"Content-Type": "text/plain"}), body())
    assert await body_of(response) == b"stored"
    response.release()
    assert got == {"te": "chunked", "length": None, "body": piece * 32 + b"end"}
    assert exchange.pool.idle == 1  # a whole request and a whole response: reusable


async def test_a_streamed_body_with_the_clients_length_is_sent_as_is(made, upstreams):
    stable, _ = upstreams
    exchange = await client(made, stable.url)

    async def body() -> AsyncIterator[bytes]:
        yield b"12345"
        yield b"67890"

    response = await exchange.send("POST", "/echo", CIMultiDict({"Content-Length": "10"}), body())
    assert response.status == 200
    await body_of(response)
    response.release()
    assert stable.seen[0].body == b"1234567890"
    assert stable.seen[0].header("content-length") == "10" and stable.seen[0].header("transfer-encoding") is None


class ClientSideFailure(Exception):
    pass


async def test_a_body_failing_on_the_clients_side_passes_through_and_closes_the_connection(
        made, upstreams):
    stable, _ = upstreams

    async def read_all(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"never")

    stable.on("PUT", "/upload", read_all)
    exchange = await client(made, stable.url)

    async def body() -> AsyncIterator[bytes]:
        yield b"part"
        raise ClientSideFailure("the client's body broke")

    with pytest.raises(ClientSideFailure):
        await exchange.send("PUT", "/upload", CIMultiDict(), body())
    await eventually(lambda: exchange.pool.size == 0)
    assert exchange.retries == {"connect_refused": 0, "stale_connection": 0}


async def test_a_base_url_with_a_path_puts_targets_under_it(made, upstreams):
    stable, _ = upstreams
    exchange = await client(made, stable.url + "/prefix/")
    response = await exchange.send("GET", "/v1/models?q=%2F", CIMultiDict())
    await body_of(response)
    response.release()
    assert stable.seen[0].raw_path == "/prefix/v1/models?q=%2F"


def test_https_stays_on_aiohttp(monkeypatch):
    monkeypatch.delenv("CANARYPROXY_UPSTREAM", raising=False)
    with pytest.raises(ValueError, match="plain http only"):
        LlhttpExchange(Role.STABLE, "https://127.0.0.1:1", Deadlines())
    assert isinstance(Exchange(Role.STABLE, "https://127.0.0.1:1", Deadlines()), AiohttpExchange)
    assert type(Exchange(Role.STABLE, "http://127.0.0.1:1", Deadlines())) is Exchange


# --- reading -----------------------------------------------------------------------------------

async def raw(reply: bytes, *, close: bool) -> RawPeer:
    peer = RawPeer(reply=lambda data: reply if b"\r\n\r\n" in data else None, close_after_reply=close)
    await peer.start()
    return peer


async def test_a_close_delimited_body_ends_at_the_close_and_its_connection_is_not_reused(made):
    peer = await raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread me until the end", close=True)
    try:
        exchange = await client(made, peer.url)
        for _ in range(2):
            response = await exchange.send("GET", "/", CIMultiDict())
            assert await body_of(response) == b"read me until the end"
            response.release()
    finally:
        await peer.stop()
    assert peer.connections == 2


async def test_interim_responses_are_skipped(made):
    peer = await raw(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
                     b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", close=False)
    try:
        exchange = await client(made, peer.url)
        response = await exchange.send("POST", "/", CIMultiDict(), b"{}")
        assert (response.status, response.reason) == (201, "Created")
        assert "Link" not in response.headers
        assert await body_of(response) == b"ok"
        response.release()
        assert exchange.pool.idle == 1
    finally:
        await peer.stop()


async def test_head_204_and_304_have_no_body_and_keep_their_connection(made):
    def reply(data: bytes) -> bytes | None:
        if b"\r\n\r\n" not in data:
            return None
        if data.startswith(b"HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        if b" /204 " in data:
            return b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
        if b" /304 " in data:
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    peer = RawPeer(reply=reply, close_after_reply=False)
    await peer.start()
    try:
        exchange = await client(made, peer.url)
        for method, target, status, body in [("HEAD", "/", 200, b""), ("GET", "/204", 204, b""),
                                             ("GET", "/304", 304, b""), ("GET", "/", 200, b"ok")]:
            response = await exchange.send(method, target, CIMultiDict())
            assert (response.status, await body_of(response)) == (status, body)
            response.release()
    finally:
        await peer.stop()
    assert peer.connections == 1


async def test_header_names_are_kept_as_received(made):
    peer = await raw(b"HTTP/1.1 200 Fine\r\nETag: \"e\"\r\nx-lower: a\r\nX-UPPER: b\r\nX-UPPER: c\r\n"
                     b"Content-Length: 0\r\n\r\n", close=False)
    try:
        exchange = await client(made, peer.url)
        response = await exchange.send("GET", "/", CIMultiDict())
        await body_of(response)
        response.release()
    finally:
        await peer.stop()
    assert response.reason == "Fine"
    assert list(response.headers.items()) == [("ETag", '"e"'), ("x-lower", "a"), ("X-UPPER", "b"),
                                              ("X-UPPER", "c"), ("Content-Length", "0")]
    assert response.headers.getall("x-upper") == ["b", "c"]


async def test_a_reason_is_the_responses_own(made):
    replies = [b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"]
    peer = RawPeer(reply=lambda data: replies.pop(0) if b"\r\n\r\n" in data else None, close_after_reply=False)
    await peer.start()
    try:
        exchange = await client(made, peer.url)
        reasons = []
        for _ in range(2):
            response = await exchange.send("GET", "/", CIMultiDict())
            reasons.append(response.reason)
            await body_of(response)
            response.release()
    finally:
        await peer.stop()
    assert reasons == ["Fine", ""] and peer.connections == 1


async def test_a_reader_that_falls_behind_pauses_the_upstream(made, upstreams):
    stable, _ = upstreams
    total, piece = 32 * 1024 * 1024, b"z" * 65536
    progress = {"written": 0, "write_started": 0.0}

    async def flood(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(total)})
        await response.prepare(request)
        while progress["written"] < total:
            progress["write_started"] = time.monotonic()
            await response.write(piece)
            progress["write_started"] = 0.0
            progress["written"] += len(piece)
        return response

    def upstream_blocked() -> bool:
        started = progress["write_started"]
        return bool(started) and time.monotonic() - started > 0.3

    stable.on("GET", "/flood", flood)
    exchange = await client(made, stable.url)
    response = await exchange.send("GET", "/flood", CIMultiDict())
    await eventually(upstream_blocked)  # nothing read: the upstream's write waits on the socket
    assert progress["written"] < total
    assert response.unread <= HIGH_WATER + 256 * 1024  # what was read before the pause, no more
    received = len(await response.read())
    while chunk := await response.read():
        received += len(chunk)
    assert received == total
    response.release()
    assert exchange.pool.idle == 1


# --- the retry -----------------------------------------------------------------------------------

async def test_a_stale_pooled_connection_is_retried_only_when_retry_is_on(made):
    for retry, expected in ((True, 1), (False, 0)):
        upstream = HangingUpUpstream(answer=1, then="close_unread")
        await upstream.start()
        try:
            exchange = await client(made, upstream.url, retry=retry)
            response = await exchange.send("GET", "/first", CIMultiDict())
            await body_of(response)
            response.release()
            try:
                response = await exchange.send("GET", "/second", CIMultiDict())
            except UpstreamError as error:
                assert not retry and error.kind is ErrorKind.RESET
            else:
                assert retry and await body_of(response) == b"ok"
                response.release()
        finally:
            await upstream.stop()
        assert exchange.retries == {"connect_refused": 0, "stale_connection": expected}
        assert upstream.read == ["/first", "/second"][: 1 + expected] and upstream.unread == 1


async def test_a_refused_connection_is_retried_once_for_a_buffered_body_only(made, unused_tcp_port):
    url = f"http://127.0.0.1:{unused_tcp_port}"

    async def streamed() -> AsyncIterator[bytes]:
        yield b"x"

    for body, retry, expected in ((b"{}", True, 1), (None, True, 1), ("stream", True, 0), (b"{}", False, 0)):
        exchange = await client(made, url, retry=retry)
        with pytest.raises(UpstreamError) as caught:
            await exchange.send("POST", "/", CIMultiDict(), streamed() if body == "stream" else body)
        assert caught.value.kind is ErrorKind.CONNECT
        assert exchange.retries == {"connect_refused": expected, "stale_connection": 0}


@pytest.mark.parametrize("name, value, target", [
    ("X-Note", "a\r\nInjected: 1", "/v1/chat"),  # a header of its own
    ("X-Note", "a\rb", "/v1/chat"),  # a bare CR
    ("X-Note", "a\nb", "/v1/chat"),  # a bare LF
    ("X-Note", "fine", "/v1/chat HTTP/1.1\r\nInjected: 1\r\nX:"),  # in the target
])
def test_a_request_head_with_a_line_break_inside_a_field_is_refused(name, value, target) -> None:
    from canaryproxy.proxy.upstream.request import head

    with pytest.raises(ValueError, match="newline or carriage return"):
        head("POST", target, "Host: up\r\n", CIMultiDict({name: value}), b"{}")


def test_a_request_head_is_written_as_given() -> None:
    from canaryproxy.proxy.upstream.request import head

    with_host = head("GET", "/a?b=1", "Host: up\r\n", CIMultiDict({"X-A": "1", "X-B": "2"}), None)
    assert with_host == (b"GET /a?b=1 HTTP/1.1\r\nHost: up\r\nX-A: 1\r\nX-B: 2\r\n\r\n",)
    own_host = head("POST", "/a", "Host: up\r\n", CIMultiDict({"Host": "other", "Content-Length": "9"}), b"{}")
    assert own_host == (b"POST /a HTTP/1.1\r\nHost: other\r\nContent-Length: 2\r\n\r\n{}",)
