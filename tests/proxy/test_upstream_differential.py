"""The two upstream clients side by side: the same requests to the same scripted upstreams through the
llhttp client and through aiohttp's, and what the upstream received and what the caller got must be
the same, byte for byte, status for status, error kind for error kind.

Each response script is sent as raw bytes by a peer on 127.0.0.1 once it has read a whole request;
each request is sent twice on one exchange, so reuse (or not) of the connection shows too. The one
difference by design is aiohttp's `Accept: */*` (it adds it when the caller passes none; the llhttp
client adds nothing): it is taken out of what aiohttp's upstream received before comparing. Error
messages differ in their detail (each parser words its own complaint), so errors compare by kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from multidict import CIMultiDict

from canaryproxy.core.types import Role
from canaryproxy.errors import UpstreamError
from canaryproxy.proxy.exchange import AiohttpExchange, Body, Deadlines, LlhttpExchange
from tests.proxy.test_corpus import request_end

CLIENTS = {"aiohttp": AiohttpExchange, "llhttp": LlhttpExchange}


class ScriptedPeer:
    """Answers every whole request with `reply`, then closes if `close` (else keeps the connection)."""

    def __init__(self, reply: bytes, close: bool) -> None:
        self.reply, self.close = reply, close
        self.received: list[bytes] = []  # every request, as read
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                while (end := request_end(buffer)) is not None:
                    self.received.append(buffer[:end])
                    buffer = buffer[end:]
                    writer.write(self.reply)
                    await writer.drain()
                    if self.close:
                        return
        except ConnectionError:
            pass
        finally:
            writer.close()


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    streamed: bool = False  # send `body` as an async iterable, in two pieces


REQUESTS = {
    "get": Request("GET", "/v1/models"),
    "post-json": Request("POST", "/v1/chat/completions?x=%2F&y=a%20b",
                         (("Content-Type", "application/json"), ("X-Request-Id", "r-1"), ("x-lower", "v")),
                         b'{"model": "m", "messages": []}'),
    "post-none": Request("POST", "/empty"),
    "delete-none": Request("DELETE", "/thing/1"),
    "repeated-headers": Request("GET", "/", (("X-A", "1"), ("x-b", "2"), ("X-A", "3"))),
    "put-streamed-chunked": Request("PUT", "/upload", (("Content-Type", "text/plain"),), b"one two three", True),
    "put-streamed-length": Request("PUT", "/upload", (("Content-Length", "13"),), b"one two three", True),
    "post-large": Request("POST", "/big", (), b"x" * 100_000),
    "head": Request("HEAD", "/"),
    "options": Request("OPTIONS", "/"),
}

OK_JSON = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'
RESPONSES = {
    "length": (OK_JSON, False),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Case: Kept\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", False),
    "chunked-with-trailers": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"2\r\nhi\r\n0\r\nX-Trailer: t\r\n\r\n", False),
    "chunk-extension": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;name=v\r\nhi\r\n0\r\n\r\n", False),
    "connection-close": (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", True),
    "close-delimited": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", True),
    "http10-close-delimited": (b"HTTP/1.0 200 OK\r\n\r\nold", True),
    "http10-keep-alive": (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nold", False),
    "continue-then-200": (b"HTTP/1.1 100 Continue\r\n\r\n" + OK_JSON, False),
    "early-hints-then-200": (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_JSON, False),
    "no-content": (b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", False),
    "not-modified": (b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n", False),
    "error-status": (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nbusy", False),
    "custom-reason": (b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n", False),
    "empty-reason": (b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", False),
    "header-spaces": (b"HTTP/1.1 200 OK\r\nX-Pad:   padded  \r\nX-Empty:\r\nContent-Length: 0\r\n\r\n", False),
    "utf8-header": ("HTTP/1.1 200 OK\r\nX-Name: café\r\nContent-Length: 0\r\n\r\n".encode(), False),
    "cut-short-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True),
    "cut-short-chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", True),
    "bad-chunk-size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", False),
    "bad-content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", False),
    "two-content-lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", False),
    "not-http": (b"garbage that is not http\r\n\r\n", True),
    "closed-without-response": (b"", True),
    "partial-head": (b"HTTP/1.1 200 OK\r\nContent-Ty", True),
}


async def body_of(request: Request) -> Body:
    if not request.streamed:
        return request.body

    async def pieces() -> AsyncIterator[bytes]:
        assert request.body is not None
        half = len(request.body) // 2
        for piece in (request.body[:half], request.body[half:]):
            await asyncio.sleep(0)
            yield piece

    return pieces()


async def outcome(exchange: AiohttpExchange | LlhttpExchange, request: Request) -> tuple:
    """What the caller got: the head, the body and how it ended."""
    try:
        response = await exchange.send(request.method, request.target, CIMultiDict(request.headers),
                                       await body_of(request))
    except UpstreamError as error:
        return ("failed before the head", error.kind.value)
    body, error = b"", None
    try:
        while chunk := await response.read():
            body += chunk
    except UpstreamError as failed:
        error = failed.kind.value
    # aiohttp spells the names it knows its own way (`Etag` for `ETag`); the llhttp client keeps
    # them as received (test_upstream_client.py checks that): compared here without case.
    head = (response.status, response.reason, [(k.lower(), v) for k, v in response.headers.items()])
    if error is None:
        response.release()
    else:
        response.close()
    return head, body, error


def without_body(reply: bytes) -> bytes:
    """What an upstream answers to HEAD: the heads of `reply` (interim ones too), no body."""
    final = reply.rfind(b"HTTP/1.")
    end = reply.find(b"\r\n\r\n", final)
    return reply if final < 0 or end < 0 else reply[:end + 4]


async def run(client: str, request: Request, reply: bytes, close: bool) -> tuple:
    peer = ScriptedPeer(without_body(reply) if request.method == "HEAD" else reply, close)
    await peer.start()
    exchange = CLIENTS[client](Role.CANARY, f"http://127.0.0.1:{peer.port}", Deadlines(first_byte=2, idle=2),
                               retry=False)
    await exchange.start()
    try:
        results = [await outcome(exchange, request) for _ in range(2)]
    finally:
        await exchange.close()
        await peer.stop()
    received = [r.replace(b"Accept: */*\r\n", b"").replace(str(peer.port).encode(), b"PORT")
                for r in peer.received]
    return results, received, peer.connections


@pytest.mark.parametrize("response", list(RESPONSES))
@pytest.mark.parametrize("request_name", ["get", "post-json", "head"])
async def test_both_clients_read_every_response_alike(request_name, response):
    reply, close = RESPONSES[response]
    request = REQUESTS[request_name]
    assert await run("llhttp", request, reply, close) == await run("aiohttp", request, reply, close)


@pytest.mark.parametrize("request_name", list(REQUESTS))
@pytest.mark.parametrize("response", ["length", "chunked", "connection-close"])
async def test_both_clients_send_every_request_alike(request_name, response):
    reply, close = RESPONSES[response]
    request = REQUESTS[request_name]
    assert await run("llhttp", request, reply, close) == await run("aiohttp", request, reply, close)
