"""One parsed request, as the data plane reads it, and its body as it arrives.

`Request` offers what the data plane read of aiohttp's `web.BaseRequest` (same names, same
meanings), so the forwarder, the relay and the feedback endpoint read either: `method`, `raw_path`
(the target as received), `path` (percent-decoded, without the query), `query`, `version`,
`headers`, `content_length`, `content_type`, `body_exists`, `cookies`, `remote`, `scheme`,
`transport` and `content`. What costs something to build (path decoding, query, cookies) is built
when first read: most requests never read it.

`BodyStream` is the body: the connection feeds it, the handler reads it (`read`, `readany`). The
connection stops reading from the socket while a body holds more than `HIGH_WATER` unread bytes and
starts again once the handler has read it below `LOW_WATER`, so a slow upstream slows the client
instead of filling memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple, Protocol

from multidict import CIMultiDictProxy, MultiDictProxy
from yarl import URL

if TYPE_CHECKING:
    from canaryproxy.proxy.engine.reading import Reading as Connection

# Unread body bytes past which the connection stops reading, and below which it reads again.
HIGH_WATER = 128 * 1024
LOW_WATER = 64 * 1024

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpVersion(NamedTuple):
    """Compares and indexes like aiohttp's HttpVersion: `version >= (1, 1)`, `version[0]`."""

    major: int
    minor: int


HTTP10 = HttpVersion(1, 0)
HTTP11 = HttpVersion(1, 1)


class _FlowControl(Protocol):
    def body_drained(self) -> None:
        """The handler read the body below the low-water mark."""


class BodyStream:
    """A request body: fed by the connection, read by the handler (the subset of aiohttp's
    StreamReader the data plane uses, with its semantics: an exception set on the stream is
    raised by the next read, even with data still buffered)."""

    __slots__ = ("_chunks", "size", "_eof", "_exception", "_waiter", "_flow", "_loop")

    def __init__(self, flow: _FlowControl | None, loop: asyncio.AbstractEventLoop | None) -> None:
        self._chunks: deque[bytes] = deque()
        self.size = 0  # bytes received and not yet read
        self._eof = False
        self._exception: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._flow = flow
        self._loop = loop  # get_running_loop() costs a getpid() on Python < 3.12: once per wait

    # --- the connection's side --------------------------------------------------------------

    def feed_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        self._exception = exc
        self._wake()

    def detach(self) -> None:
        """The handler is done with it: drop what it did not read, and stop telling the
        connection about reads."""
        self._chunks.clear()
        self.size = 0
        self._flow = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- the handler's side -----------------------------------------------------------------

    def is_eof(self) -> bool:
        """The whole body has arrived (it may not all have been read)."""
        return self._eof

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def exception(self) -> BaseException | None:
        return self._exception

    async def readany(self) -> bytes:
        """What has arrived and not been read yet (waiting for some); b"" at the end."""
        chunks = self._chunks
        while True:
            if self._exception is not None:
                raise self._exception
            if chunks:
                break
            if self._eof:
                return b""
            await self._wait()
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._consumed(len(data))
        return data

    async def read(self, n: int = -1) -> bytes:
        """The rest of the body (n < 0), or up to n bytes of it."""
        if n < 0:
            parts = []
            while chunk := await self.readany():
                parts.append(chunk)
            return b"".join(parts)
        data = await self.readany()
        if len(data) > n:
            self._chunks.appendleft(data[n:])
            self.size += len(data) - n
            data = data[:n]
        return data

    def _consumed(self, size: int) -> None:
        self.size -= size
        flow = self._flow
        if flow is not None and self.size < LOW_WATER:
            flow.body_drained()

    async def _wait(self) -> None:
        loop = self._loop or asyncio.get_running_loop()  # NO_BODY has none, and never waits
        self._waiter = waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None


class _NoBody(BodyStream):
    """The body of a request that has none: at its end from the start, and nothing to set."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(None, None)
        self._eof = True

    def set_exception(self, exc: BaseException) -> None:
        pass  # shared by every request without a body: a timer meant for one must not end all


NO_BODY = _NoBody()


class Request:
    """One request; see the module docstring. Made by the connection when its head is parsed."""

    __slots__ = ("method", "raw_path", "version", "headers", "content", "body_exists",
                 "keep_alive", "remote", "_connection", "_path", "_query", "_cookies")

    scheme = "http"  # the data listener speaks plain HTTP; TLS ends in front of it

    def __init__(self, connection: Connection, method: str, raw_path: str, version: HttpVersion,
                 headers: CIMultiDictProxy[str], content: BodyStream, keep_alive: bool) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.content = content
        self.body_exists = content is not NO_BODY
        self.keep_alive = keep_alive  # what the request's version and Connection header allow
        self.remote = connection.remote
        self._connection = connection
        self._path: str | None = None
        self._query: MultiDictProxy[str] | None = None
        self._cookies: MappingProxyType[str, str] | None = None

    @property
    def transport(self) -> asyncio.Transport | None:
        """The client's connection; None once it has closed."""
        return self._connection.transport

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return None if value is None else int(value)

    @property
    def content_type(self) -> str:
        """The media type, lower case and without parameters (aiohttp's default when absent)."""
        raw = self.headers.get("Content-Type")
        if raw is None:
            return "application/octet-stream"
        media = raw.partition(";")[0].strip().lower()
        return media if media.count("/") == 1 else "text/plain"

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = _path_of(self.raw_path)
        return self._path

    @property
    def query(self) -> MultiDictProxy[str]:
        if self._query is None:
            query = _split(self.raw_path)[1]
            self._query = URL.build(query_string=query, encoded=True).query
        return self._query

    @property
    def cookies(self) -> MappingProxyType[str, str]:
        if self._cookies is None:
            self._cookies = _cookies_of(self.headers.get("Cookie", ""))
        return self._cookies


def _split(target: str) -> tuple[str, str]:
    """The path and the query of a request target (origin- or absolute-form), fragment dropped."""
    if target[:1] != "/" and target != "*":
        rest = target.partition("://")[2]
        at = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
                 default=len(rest))
        target = rest[at:]
    path, _, query = target.partition("?")
    if "#" in path:
        path = path.partition("#")[0]
        query = ""
    else:
        query = query.partition("#")[0]
    return path or "/", query


def _path_of(target: str) -> str:
    path = _split(target)[0]
    if "%" not in path and "/." not in path:
        return path  # nothing to decode or normalise: the usual API path
    # Decoded and normalised exactly as aiohttp's parser had it (through yarl).
    if target[:1] == "/":
        return URL.build(path=path, encoded=True).path
    return URL(target, encoded=True).path


def _cookies_of(header: str) -> MappingProxyType[str, str]:
    """`name=value; name2=value2` (RFC 6265 §5.4); a quoted value loses its quotes; the last of a
    repeated name wins, as in aiohttp."""
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        cookies[name] = value
    return MappingProxyType(cookies)


async def write_continue(request: Request) -> None:
    """Tell a client waiting on `Expect: 100-continue` to send its body."""
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.write(CONTINUE)
