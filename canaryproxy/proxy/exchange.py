"""Sending one request to one upstream and reading its answer: pool, retry, deadlines, failures.

An `Exchange` is one upstream (a base URL) with its own keep-alive pool. It takes a method, an
origin-form target (`/path?query`, as received), headers and a body, and nothing from the client's
connection, so the same request can be sent to a second upstream through a second exchange.

* No total timeout: a stream lasts minutes, and aiohttp's default (300 s) would kill it. A connect
  timeout (waiting for a pool slot counts against it), a first-byte deadline (prefill can be
  slow), then an idle deadline between body chunks from the first byte on.
* A connection refused at connect is sent once more, on the same upstream, when the body is
  buffered: no byte reached the upstream, and a buffered body can be sent again. A streamed body
  may have been consumed, and anything that reached the upstream is never sent twice.
* Every failure is one `UpstreamError` whose `kind` says what happened; exceptions that are not the
  upstream's (a request body that failed on the client's side) pass through unchanged.

The body is read with `UpstreamResponse.read()` (or `async for`), which raises `UpstreamError` too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from canaryproxy.core.types import ErrorKind, Role
from canaryproxy.errors import UpstreamError

# What can be sent: nothing, a buffered body (may be sent twice), or a stream (sent at most once).
Body = bytes | AsyncIterable[bytes] | None

# Targets repeat (a handful of API paths carry nearly all traffic): parsing the URL once per target
# instead of once per request. Bounded, since query strings can make every target new.
_URL_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Deadlines:
    connect: float = 5.0  # a connection, or a slot in the pool
    first_byte: float = 300.0  # the response head and the first body chunk
    idle: float = 60.0  # any gap between body chunks after the first


class Exchange:
    """One upstream and its keep-alive pool. `start()` inside the event loop before sending."""

    __slots__ = ("role", "base", "deadlines", "_connections", "_keepalive", "_session", "_urls")

    def __init__(
        self,
        role: Role,
        base_url: str,
        deadlines: Deadlines,
        *,
        connections: int = 1000,
        keepalive: float = 60.0,
    ) -> None:
        self.role = role  # named in error messages
        self.base = base_url.rstrip("/")
        self.deadlines = deadlines
        self._connections = connections
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    async def start(self) -> None:
        d = self.deadlines
        connector = aiohttp.TCPConnector(
            limit=self._connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive,
            ttl_dns_cache=10,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # A proxy passes bytes through untouched and adds nothing behind the user's back.
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            # The default jar would replay one user's upstream cookies to every other user.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=d.connect, sock_connect=d.connect, sock_read=d.first_byte
            ),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, method: str, target: str, headers: CIMultiDict[str], body: Body = None
    ) -> UpstreamResponse:
        """Send one request; its response once the head has arrived.

        `target` is the origin-form request target, percent-encoded as received. A bytes body gets
        its Content-Length from aiohttp (drop the client's if it was rewritten). Raises
        UpstreamError when no usable response head arrived.
        """
        session = self._session
        assert session is not None, "Exchange.start() first"
        url = self._urls.get(target)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[target] = URL(self.base + target, encoded=True)
        # Both attempts inline, not in a helper coroutine: every coroutine in the chain between the
        # task and the socket costs on each suspension and resumption.
        try:
            try:
                response = await session.request(
                    method, url, headers=headers, data=body, allow_redirects=False, compress=None
                )
            except aiohttp.ClientConnectorError:
                # Refused at connect: no byte reached the upstream. A streamed body may have been
                # consumed, so only a buffered one (or none) is sent again.
                if not (body is None or isinstance(body, bytes)):
                    raise
                response = await session.request(
                    method, url, headers=headers, data=body, allow_redirects=False, compress=None
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._failure(exc) from exc
        return UpstreamResponse(response, self)

    def _failure(self, exc: BaseException) -> UpstreamError:
        """What went wrong before a response head arrived, in the operator's words."""
        where = f"{self.role.value} upstream {self.base}"
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamError(
                ErrorKind.CONNECT_TIMEOUT,
                f"{where} did not accept a connection within {self.deadlines.connect:g}s",
            )
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamError(
                ErrorKind.FIRST_BYTE_TIMEOUT,
                f"{where} sent no response within {self.deadlines.first_byte:g}s",
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamError(
                ErrorKind.CONNECT, f"{where} refused or could not be reached: {exc.os_error}"
            )
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            return UpstreamError(ErrorKind.RESET, f"{where} closed the connection without a response")
        return UpstreamError(ErrorKind.BAD_RESPONSE, f"{where} sent an invalid response: {_short(exc)}")


class UpstreamResponse:
    """An upstream's answer: its head, and its body to read chunk by chunk.

    End with `release()` after reading the whole body (the connection goes back to the pool) or
    `close()` otherwise: a model server stops generating when its connection closes.
    """

    __slots__ = ("status", "reason", "headers", "_response", "_content", "_exchange", "_first")

    def __init__(self, response: aiohttp.ClientResponse, exchange: Exchange) -> None:
        self.status = response.status
        self.reason = response.reason
        self.headers: CIMultiDictProxy[str] = response.headers
        self._response = response
        self._content = response.content
        self._exchange = exchange
        self._first = True  # no body chunk read yet: the first-byte deadline still applies

    async def read(self) -> bytes:
        """The next chunk of the body as it arrived, b"" at its end.

        Raises UpstreamError(FIRST_BYTE_TIMEOUT or IDLE_TIMEOUT) when a deadline passed, and
        UpstreamError(RESET) when the body was cut short or broke its framing.
        """
        try:
            chunk = await self._content.readany()
        except asyncio.TimeoutError as exc:  # before ClientError: aiohttp's timeouts are both
            raise self._timed_out() from exc
        except aiohttp.ClientError as exc:  # ClientPayloadError among them: a body cut short
            where = f"{self._exchange.role.value} upstream {self._exchange.base}"
            raise UpstreamError(
                ErrorKind.RESET, f"{where} broke off the response body: {_short(exc)}"
            ) from exc
        if self._first and chunk:
            self._first = False
            if not self._content.is_eof():
                self._idle_from_now_on()
        return chunk

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        # `async for` costs a StopAsyncIteration per response: the relay calls read() instead.
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()

    def _timed_out(self) -> UpstreamError:
        exchange = self._exchange
        where = f"{exchange.role.value} upstream {exchange.base}"
        if self._first:
            return UpstreamError(
                ErrorKind.FIRST_BYTE_TIMEOUT,
                f"{where} sent no body within {exchange.deadlines.first_byte:g}s",
            )
        return UpstreamError(
            ErrorKind.IDLE_TIMEOUT,
            f"{where} sent nothing for {exchange.deadlines.idle:g}s in the middle of the body",
        )

    def _idle_from_now_on(self) -> None:
        """The first byte arrived: from now on the gaps between chunks are bounded by the idle
        deadline instead of the (long) first-byte one. aiohttp has no public way to change the
        read timeout of a response in flight, so this sets it on the connection's protocol."""
        connection = self._response.connection
        if connection is None or connection.protocol is None:
            return
        protocol = connection.protocol
        protocol.read_timeout = self._exchange.deadlines.idle
        protocol.start_timeout()


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
