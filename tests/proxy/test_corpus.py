"""The front-door corpus: raw requests in, statuses and upstream bytes out.

Each case is the exact bytes a client sends on one connection, the statuses the proxy must answer
(in order; 1xx left out), and how many requests a byte-logging upstream must receive: 0 for every
refused request, checked against everything the upstream received, not against a response. Nothing
here knows which HTTP parser the proxy uses: the corpus is the safety net for replacing it.
Decisions and their reasons are in canaryproxy/proxy/admission.py and wire.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
import pytest_asyncio

from canaryproxy.server import CanaryProxy
from tests.support import ListSink, proxy_config


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    statuses: tuple[int, ...]
    upstream: int = 0  # requests the upstream must receive
    seen: tuple[bytes, ...] = ()  # bytes the upstream must have received
    unseen: tuple[bytes, ...] = ()  # bytes it must not have received


def req(target: str = "/", *, method: str = "GET", version: str = "HTTP/1.1",
        headers: tuple[tuple[str, str], ...] = (("Host", "h"),), body: bytes = b"",
        raw_headers: bytes = b"") -> bytes:
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    return head.encode("latin-1") + raw_headers + b"\r\n" + body


def post(body: bytes, *headers: tuple[str, str], target: str = "/") -> bytes:
    return req(target, method="POST", headers=(("Host", "h"), *headers), body=body)


def chunked(body: bytes, *headers: tuple[str, str]) -> bytes:
    return post(body, ("Transfer-Encoding", "chunked"), *headers)


def ok(name: str, data: bytes, *seen: bytes, statuses: tuple[int, ...] = (200,),
       unseen: tuple[bytes, ...] = ()) -> Case:
    return Case(name, data, statuses, upstream=statuses.count(200), seen=seen, unseen=unseen)


def refused(name: str, data: bytes, status: int = 400) -> Case:
    return Case(name, data, (status,), upstream=0)


GET = req()
LONG = "a" * 9000
ACCEPTED = [
    ok("get", GET, b"GET / HTTP/1.1\r\n"),
    ok("get-query", req("/v1/models?x=1&y=%20"), b"GET /v1/models?x=1&y=%20 HTTP/1.1"),
    ok("head", req(method="HEAD"), b"HEAD / HTTP/1.1"),
    ok("delete", req("/x", method="DELETE"), b"DELETE /x HTTP/1.1"),
    ok("put", req("/x", method="PUT", headers=(("Host", "h"), ("Content-Length", "2")), body=b"ab")),
    ok("patch", req("/x", method="PATCH", headers=(("Host", "h"), ("Content-Length", "0")))),
    ok("options-path", req("/x", method="OPTIONS"), b"OPTIONS /x HTTP/1.1"),
    ok("post-length", post(b"hello", ("Content-Length", "5")), b"\r\n\r\nhello"),
    ok("post-length-0", post(b"", ("Content-Length", "0"))),
    ok("post-length-ows", post(b"hello", ("Content-Length", "  5 "))),
    ok("chunked", chunked(b"5\r\nhello\r\n0\r\n\r\n"), b"hello"),
    ok("chunked-capitalised", post(b"5\r\nhello\r\n0\r\n\r\n", ("Transfer-Encoding", "Chunked"))),
    ok("chunked-many", chunked(b"1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n0\r\n\r\n"), b"abcdef"),
    ok("chunked-hex-upper", chunked(b"A\r\n0123456789\r\n0\r\n\r\n"), b"0123456789"),
    ok("chunked-leading-zeros", chunked(b"0005\r\nhello\r\n0\r\n\r\n"), b"hello"),
    ok("chunked-small-extension", chunked(b"5;name=value\r\nhello\r\n0\r\n\r\n"), b"hello",
       unseen=(b"name=value",)),
    ok("chunked-trailer", chunked(b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"), b"hello"),
    ok("chunked-4k-extension", chunked(b"5;" + b"e" * 4000 + b"\r\nhello\r\n0\r\n\r\n"), b"hello"),
    ok("http-1.0-no-host", req(version="HTTP/1.0", headers=()), b"GET / HTTP/1.1"),
    ok("http-1.0-host", req(version="HTTP/1.0"), b"X-Forwarded-Host: h"),
    ok("absolute-form", req("http://a/x", headers=(("Host", "a"),)), b"GET /x HTTP/1.1",
       b"X-Forwarded-Host: a\r\n"),
    ok("absolute-form-wins-over-host", req("http://a/x", headers=(("Host", "b"),)),
       b"X-Forwarded-Host: a\r\n", unseen=(b"X-Forwarded-Host: b",)),
    ok("absolute-form-https", req("https://a/x"), b"GET /x HTTP/1.1"),
    ok("absolute-form-query", req("http://a/x?y=1"), b"GET /x?y=1 HTTP/1.1"),
    ok("absolute-form-no-path", req("http://a"), b"GET / HTTP/1.1"),
    ok("absolute-form-port", req("http://a:8080/x"), b"X-Forwarded-Host: a:8080\r\n"),
    ok("absolute-form-upper-scheme", req("HTTP://a/x"), b"GET /x HTTP/1.1"),
    ok("double-slash-path", req("//a/x"), b"GET //a/x HTTP/1.1"),
    ok("percent-encoded-path", req("/a%20b%2Fc"), b"GET /a%20b%2Fc HTTP/1.1"),
    ok("host-port", req(headers=(("Host", "h:8080"),)), b"X-Forwarded-Host: h:8080"),
    ok("host-ipv4", req(headers=(("Host", "10.0.0.1"),))),
    ok("host-ipv6", req(headers=(("Host", "[::1]:80"),)), b"X-Forwarded-Host: [::1]:80"),
    ok("host-empty", req(headers=(("Host", ""),))),
    ok("header-empty-value", req(headers=(("Host", "h"), ("X-Empty", "")))),
    ok("header-tab-ows", req(raw_headers=b"X-Tab:\tv\t\r\n"), b"X-Tab: v"),
    ok("header-8000", req(headers=(("Host", "h"), ("X-Big", "b" * 8000)))),
    ok("headers-128", req(headers=(("Host", "h"),) + tuple((f"X-{i}", "v") for i in range(127)))),
    ok("url-8000", req("/" + "u" * 8000)),
    ok("connection-close", req(headers=(("Host", "h"), ("Connection", "close"))),
       unseen=(b"Connection: close",)),
    ok("hop-by-hop-named", req(headers=(("Host", "h"), ("Connection", "x-secret"), ("X-Secret", "1"))),
       unseen=(b"X-Secret",)),
    ok("expect-body-sent", post(b"hello", ("Content-Length", "5"), ("Expect", "100-continue")),
       b"hello", unseen=(b"Expect", b"expect")),
    ok("leading-crlf", b"\r\n" + GET),
    ok("pipelined-2", GET + GET, statuses=(200, 200)),
    ok("pipelined-3-bodies", post(b"a", ("Content-Length", "1")) + chunked(b"1\r\nb\r\n0\r\n\r\n")
       + post(b"c", ("Content-Length", "1")), statuses=(200, 200, 200)),
    ok("pipelined-then-bad", GET + b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", statuses=(200, 400)),
    ok("pipelined-then-http2", GET + req(version="HTTP/2.0"), statuses=(200, 505)),
    ok("body-then-junk", post(b"hello", ("Content-Length", "5")) + b"XYZ\r\n\r\n",
       statuses=(200, 400)),
    ok("trace", req(method="TRACE"), b"TRACE / HTTP/1.1"),
    ok("upgrade-no-body", req(headers=(("Host", "h"), ("Connection", "Upgrade"), ("Upgrade", "h2c"))),
       unseen=(b"Upgrade",)),
]

OPTIONS_STAR = [
    # Answered by the proxy (forward.py): never routed, never counted for a version.
    refused("options-asterisk", req("*", method="OPTIONS"), 200),
]

SMUGGLING = [
    refused("cl-and-te", post(b"0\r\n\r\n", ("Content-Length", "5"), ("Transfer-Encoding", "chunked"))),
    refused("te-and-cl", post(b"0\r\n\r\n", ("Transfer-Encoding", "chunked"), ("Content-Length", "5"))),
    refused("cl-twice-same", post(b"hello", ("Content-Length", "5"), ("Content-Length", "5"))),
    refused("cl-twice-differ", post(b"hello!", ("Content-Length", "5"), ("Content-Length", "6"))),
    refused("cl-list", post(b"hello", ("Content-Length", "5, 5"))),
    refused("cl-plus", post(b"hello", ("Content-Length", "+5"))),
    refused("cl-negative", post(b"hello", ("Content-Length", "-5"))),
    refused("cl-hex", post(b"hello", ("Content-Length", "0x5"))),
    refused("cl-letters", post(b"hello", ("Content-Length", "five"))),
    refused("cl-overflow", post(b"hello", ("Content-Length", "99999999999999999999999"))),
    refused("cl-over-limit", post(b"", ("Content-Length", "999999999999")), 413),
    refused("te-identity-chunked", post(b"5\r\nhello\r\n0\r\n\r\n",
            ("Transfer-Encoding", "identity, chunked")), 501),
    refused("te-gzip-chunked", post(b"0\r\n\r\n", ("Transfer-Encoding", "gzip, chunked")), 501),
    refused("te-chunked-chunked", post(b"0\r\n\r\n", ("Transfer-Encoding", "chunked, chunked"))),
    refused("te-chunked-identity", post(b"0\r\n\r\n", ("Transfer-Encoding", "chunked, identity"))),
    refused("te-identity", post(b"", ("Transfer-Encoding", "identity"))),
    refused("te-gzip", post(b"", ("Transfer-Encoding", "gzip"))),
    refused("te-xchunked", post(b"0\r\n\r\n", ("Transfer-Encoding", "xchunked"))),
    refused("te-chunked-x", post(b"0\r\n\r\n", ("Transfer-Encoding", "chunkedx"))),
    refused("te-two-lines", post(b"0\r\n\r\n", ("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked"))),
    refused("te-vertical-tab", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"),
    refused("te-space-before-colon", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    refused("te-http-1.0", req(method="POST", version="HTTP/1.0",
            headers=(("Host", "h"), ("Transfer-Encoding", "chunked")), body=b"0\r\n\r\n")),
    refused("te-folded", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n0\r\n\r\n"),
    refused("upgrade-with-body", req("/ws", method="POST", headers=(("Host", "h"),
            ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Content-Length", "5")), body=b"hello")),
]

HEADERS = [
    refused("obs-fold", b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n"),
    refused("space-before-colon", b"GET / HTTP/1.1\r\nHost : h\r\n\r\n"),
    refused("bare-lf-headers", b"GET / HTTP/1.1\nHost: h\n\n"),
    refused("bare-lf-one-header", b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n"),
    refused("bare-cr", b"GET / HTTP/1.1\rHost: h\r\n\r\n"),
    refused("nul-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n"),
    refused("nul-in-name", b"GET / HTTP/1.1\r\nHost: h\r\nX\x00Y: a\r\n\r\n"),
    refused("ctl-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n"),
    refused("space-in-name", b"GET / HTTP/1.1\r\nHost: h\r\nX Y: a\r\n\r\n"),
    refused("paren-in-name", b"GET / HTTP/1.1\r\nHost: h\r\nX(Y): a\r\n\r\n"),
    refused("empty-name", b"GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n"),
    refused("no-colon", b"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"),
    refused("non-ascii-name", b"GET / HTTP/1.1\r\nHost: h\r\nX\xc3\xa9: a\r\n\r\n"),
    refused("leading-space-first-header", b"GET / HTTP/1.1\r\n Host: h\r\n\r\n"),
    refused("host-missing", b"GET / HTTP/1.1\r\nX: y\r\n\r\n"),
    refused("host-twice", req(headers=(("Host", "a"), ("Host", "b")))),
    refused("host-space", req(headers=(("Host", "a b"),))),
    refused("host-userinfo", req(headers=(("Host", "a@b"),))),
    refused("host-slash", req(headers=(("Host", "a/b"),))),
    refused("host-bad-port", req(headers=(("Host", "a:b"),))),
    refused("host-open-bracket", req(headers=(("Host", "[::1"),))),
    refused("host-ctl", b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n"),
    refused("expect-unknown", req(headers=(("Host", "h"), ("Expect", "something")), method="POST",
            body=b""), 417),
    refused("expect-over-limit", post(b"", ("Content-Length", "999999999999"),
            ("Expect", "100-continue")), 413),
    refused("sec-websocket-key1", req(headers=(("Host", "h"), ("Sec-WebSocket-Key1", "x")))),
]

CHUNKS = [
    refused("chunk-size-overflow", chunked(b"fffffffffffffffffff\r\nx\r\n0\r\n\r\n")),
    refused("chunk-size-negative", chunked(b"-1\r\nx\r\n0\r\n\r\n")),
    refused("chunk-size-not-hex", chunked(b"g\r\nx\r\n0\r\n\r\n")),
    refused("chunk-size-empty", chunked(b"\r\nx\r\n0\r\n\r\n")),
    refused("chunk-size-space", chunked(b"5 \r\nhello\r\n0\r\n\r\n")),
    refused("chunk-size-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n")),
    refused("chunk-data-too-long", chunked(b"3\r\nhello\r\n0\r\n\r\n")),
    refused("chunk-no-crlf-after-data", chunked(b"5\r\nhelloXX0\r\n\r\n")),
    refused("chunk-bare-lf-size", chunked(b"5\nhello\r\n0\r\n\r\n")),
    refused("chunk-extension-5k", chunked(b"5;" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n")),
    refused("chunk-extension-100k", chunked(b"5;" + b"e" * 100_000 + b"\r\nhello\r\n0\r\n\r\n")),
    refused("chunk-extension-nul", chunked(b"5;a\x00b\r\nhello\r\n0\r\n\r\n")),
]

REQUEST_LINES = [
    refused("method-lowercase", b"get / HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("method-junk", b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("method-unknown", b"FOO / HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("method-empty", b" / HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("method-connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
    refused("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40),
    refused("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    refused("version-2.0", req(version="HTTP/2.0"), 505),
    refused("version-3.0", req(version="HTTP/3.0"), 505),
    refused("version-0.9-declared", req(version="HTTP/0.9"), 505),
    refused("version-0.9-bare", b"GET /\r\n\r\n"),
    refused("version-1.32", req(version="HTTP/1.32")),
    refused("version-no-minor", req(version="HTTP/1")),
    refused("version-lowercase", req(version="http/1.1")),
    refused("version-01.1", req(version="HTTP/01.1")),
    refused("version-missing", b"GET / \r\nHost: h\r\n\r\n"),
    refused("two-spaces-before-target", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("two-spaces-after-target", b"GET /  HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("trailing-space", b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n"),
    refused("leading-space", b" GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("tab-separator", b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("space-in-target", b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("nul-in-target", b"GET /a\x00b HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("target-missing", b"GET HTTP/1.1\r\nHost: h\r\n\r\n"),
    refused("target-relative", req("x")),
    refused("target-authority-form", req("a:80")),
    refused("target-asterisk-get", req("*")),
    refused("target-absolute-no-authority", req("http:///x")),
    refused("target-absolute-userinfo", req("http://u@a/x")),
    refused("target-absolute-ftp", req("ftp://a/x")),
    refused("target-absolute-bad-host", req("http://a b/x")),
]

LIMITS = [
    refused("url-9000", req("/" + LONG), 414),
    refused("url-100k", req("/" + "a" * 100_000), 414),
    refused("url-9000-unfinished", b"GET /" + LONG.encode(), 414),
    refused("header-value-9000", req(headers=(("Host", "h"), ("X-Big", LONG))), 431),
    refused("header-name-9000", req(headers=(("Host", "h"), ("X" * 9000, "v"))), 431),
    refused("header-9000-unfinished", b"GET / HTTP/1.1\r\nHost: h\r\nX: " + LONG.encode(), 431),
    refused("headers-129", req(headers=(("Host", "h"),) + tuple((f"X-{i}", "v") for i in range(128))), 431),
    refused("headers-1000", req(headers=(("Host", "h"),) + tuple((f"X-{i}", "v") for i in range(1000))), 431),
    # In a body (its handler is reading it), so the body's 400, like any malformed chunk.
    refused("trailer-9000", chunked(b"0\r\nX-T: " + LONG.encode() + b"\r\n\r\n")),
]

CORPUS = ACCEPTED + OPTIONS_STAR + SMUGGLING + HEADERS + CHUNKS + REQUEST_LINES + LIMITS


class ByteLog:
    """A raw upstream on 127.0.0.1: records every byte it receives, answers each complete
    request (Content-Length or chunked) with a small 200, keeps the connection open."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.requests = 0
        self._server: asyncio.AbstractServer | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        try:
            while data := await reader.read(65536):
                self.received += data
                buffer += data
                while (end := request_end(buffer)) is not None:
                    is_head = buffer.startswith(b"HEAD ")
                    buffer = buffer[end:]
                    self.requests += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + (b"" if is_head else b"ok"))
        except ConnectionError:
            pass
        finally:
            writer.close()


def request_end(buffer: bytes) -> int | None:
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buffer[:head_end].lower()
    start = head_end + 4
    if b"transfer-encoding: chunked" in head:
        end = buffer.find(b"\r\n0\r\n\r\n", start - 2)
        return None if end < 0 else end + 7
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            return start + length if len(buffer) >= start + length else None
    return start


async def exchange(port: int, data: bytes, expected: int, timeout: float = 3.0) -> list[int]:
    """Send `data` on a fresh connection; the final statuses of the responses, until `expected`
    arrived or the proxy closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await statuses_read(reader, expected, data.startswith(b"HEAD "), timeout)
    finally:
        writer.close()


async def statuses_read(reader: asyncio.StreamReader, expected: int, sent_head: bool,
                        timeout: float) -> list[int]:
    """The final statuses of the responses `reader` gets, until `expected` arrived, the peer
    closed or `timeout` seconds passed."""
    statuses: list[int] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    try:
        while len(statuses) < expected:
            while (parsed := _response(buffer, sent_head)) is not None:
                status, buffer = parsed
                if status >= 200:
                    statuses.append(status)
            if len(statuses) >= expected:
                break
            chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
            if not chunk:
                break
            buffer += chunk
    except (asyncio.TimeoutError, ConnectionError):
        pass
    return statuses


def _response(buffer: bytes, head_only: bool) -> tuple[int, bytes] | None:
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buffer[:head_end]
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and not head_only and status >= 200:
            length = int(value)
    end = head_end + 4 + length
    return (status, buffer[end:]) if len(buffer) >= end else None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig():
    upstream = ByteLog()
    await upstream.start()
    proxy = CanaryProxy(proxy_config(upstream.url, upstream.url), sink=ListSink())
    await proxy.start()
    yield proxy, upstream
    await proxy.shutdown()
    await upstream.stop()


def test_the_corpus_is_large_and_named_once():
    assert len(CORPUS) >= 100
    assert len({case.name for case in CORPUS}) == len(CORPUS)


@pytest.mark.asyncio(loop_scope="module")  # one proxy for the whole corpus: a few seconds
@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.name)
async def test_corpus(rig, case: Case):
    proxy, upstream = rig
    requests_before, received_before = upstream.requests, len(upstream.received)
    statuses = await exchange(proxy.data_port, case.data, len(case.statuses))
    assert tuple(statuses) == case.statuses
    if case.upstream == 0:
        # Nothing at all: the proxy answers only after it sent what it would send upstream.
        assert bytes(upstream.received[received_before:]) == b"", "the upstream received bytes"
    else:
        assert upstream.requests - requests_before == case.upstream
    seen = bytes(upstream.received[received_before:])
    for needle in case.seen:
        assert needle in seen, f"upstream did not receive {needle!r}"
    for needle in case.unseen:
        assert needle not in seen, f"upstream received {needle!r}"
