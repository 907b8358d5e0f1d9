"""Sending one request to one upstream and reading its answer: pool, retry, deadlines, failures.

An `Exchange` is one upstream (a base URL) with its own keep-alive pool. It takes a method, an
origin-form target (`/path?query`, as received), headers and a body, and nothing from the client's
connection, so the same request can be sent to a second upstream through a second exchange.

* No total timeout: a stream lasts minutes, and aiohttp's default (300 s) would kill it. A connect
  timeout (waiting for a pool slot counts against it), a first-byte deadline (prefill can be
  slow), then an idle deadline between body chunks from the first byte on.
* Pooled connections are dropped after `keepalive` idle seconds, which must stay below the
  upstream's own idle timeout (uvicorn, and so vLLM, closes after 5 s): a request sent on a
  connection the upstream is closing at that moment is lost.
* At most one retry, on the same upstream, and only of a request whose body is buffered (or
  absent), when sending it again does no harm:
  - refused at connect: no byte reached the upstream;
  - a pooled connection (it had carried a response) closed before any byte of this response, and
    the method is safe (GET, HEAD, OPTIONS, TRACE) or the request carries an `Idempotency-Key`:
    what Go's transport retries (`shouldRetryRequest`, `isReplayable`). On the wire a stale
    connection looks exactly like an upstream that read the request and then hung up, so it may
    have started on it: nothing else is sent again (RFC 9110 §9.2.2: "A proxy MUST NOT
    automatically retry non-idempotent requests"), nor a request that failed on a fresh
    connection (the upstream hung up on that request, not on an idle connection), nor one that
    got part of a response.
  aiohttp's own retry (any idempotent method, fresh connection or not, partial response or not)
  never sees a failure: `_PooledResponse` reports it as `_NoResponse`.
* Every failure is one `UpstreamError` whose `kind` says what happened; exceptions that are not the
  upstream's (a request body that failed on the client's side) pass through unchanged.

The body is read with `UpstreamResponse.read()` (or `async for`), which raises `UpstreamError` too.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from canaryproxy.core.types import ErrorKind, Role
from canaryproxy.errors import UpstreamError

# What can be sent: nothing, a buffered body (may be sent twice), or a stream (sent at most once).
Body = bytes | AsyncIterable[bytes] | None

log = logging.getLogger("canaryproxy.proxy")

# Why a request was sent a second time: the labels of canaryproxy_upstream_retries_total.
RETRY_CONNECT_REFUSED = "connect_refused"
RETRY_STALE_CONNECTION = "stale_connection"
RETRY_REASONS = (RETRY_CONNECT_REFUSED, RETRY_STALE_CONNECTION)

# Methods whose requests can be replayed after a stale connection, as Go's `isReplayable` has them
# (safe methods; PUT and DELETE are idempotent but not safe, and Go leaves them out too), and the
# headers that make any request replayable (draft-ietf-httpapi-idempotency-key-header).
_REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_IDEMPOTENCY_KEYS = ("Idempotency-Key", "X-Idempotency-Key")

# Targets repeat (a handful of API paths carry nearly all traffic): parsing the URL once per target
# instead of once per request. Bounded, since query strings can make every target new.
_URL_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Deadlines:
    connect: float = 5.0  # a connection, or a slot in the pool
    first_byte: float = 300.0  # the response head and the first body chunk
    idle: float = 60.0  # any gap between body chunks after the first


class _NoResponse(aiohttp.ClientConnectionError):
    """The connection ended before a response head: what aiohttp raised (`cause`), and whether the
    connection was a stale pooled one (it had carried a response, and no byte of this one came)."""

    def __init__(self, cause: aiohttp.ClientConnectionError, stale: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.stale = stale


# Connections (aiohttp's protocol objects) that have delivered a response head: one found here again
# came from the pool. Weak, so a closed connection leaves by itself.
_ANSWERED: weakref.WeakSet[object] = weakref.WeakSet()


class _PooledResponse(aiohttp.ClientResponse):
    """aiohttp's response, telling a stale pooled connection from any other failure before the head.

    aiohttp does not say whether a connection was reused, nor (for a reset) whether part of a
    response had arrived; Go's transport does both (`isReused`, `nothingWrittenError`, the peek for
    the first byte). A clean close with nothing parsed is `ServerDisconnectedError("Server
    disconnected")`; after part of a head its message is the partial head instead."""

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        reused = protocol in _ANSWERED
        try:
            response = await super().start(connection)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            nothing_arrived = not isinstance(exc, aiohttp.ServerDisconnectedError) or isinstance(
                exc.message, str
            )
            raise _NoResponse(exc, reused and nothing_arrived) from exc
        _ANSWERED.add(protocol)
        return response


def replayable(method: str, headers: CIMultiDict[str], body: Body) -> bool:
    """May this request be sent again after a stale connection lost it? (Go's `isReplayable`.)"""
    if not (body is None or isinstance(body, bytes)):
        return False  # a streamed body has been consumed
    return method in _REPLAYABLE_METHODS or any(key in headers for key in _IDEMPOTENCY_KEYS)


class Exchange:
    """One upstream and its keep-alive pool. `start()` inside the event loop before sending."""

    __slots__ = (
        "role", "base", "deadlines", "retries", "_connections", "_keepalive", "_session", "_urls",
        "_retry",
    )

    def __init__(
        self,
        role: Role,
        base_url: str,
        deadlines: Deadlines,
        *,
        connections: int = 1000,
        keepalive: float = 4.0,
        retry: bool = True,
    ) -> None:
        """`retry` False: never send a request twice (a shadow copy: nobody waits for it)."""
        self.role = role  # named in error messages
        self.base = base_url.rstrip("/")
        self.deadlines = deadlines
        # Requests sent a second time, by reason (RETRY_REASONS); read by the exporter at scrape.
        self.retries = dict.fromkeys(RETRY_REASONS, 0)
        self._connections = connections
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self._retry = retry

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
            response_class=_PooledResponse,
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
                if not (self._retry and (body is None or isinstance(body, bytes))):
                    raise
                self.retries[RETRY_CONNECT_REFUSED] += 1
                response = await session.request(
                    method, url, headers=headers, data=body, allow_redirects=False, compress=None
                )
            except _NoResponse as failure:
                if not (self._retry and failure.stale and replayable(method, headers, body)):
                    raise
                self.retries[RETRY_STALE_CONNECTION] += 1
                log.debug("%s upstream %s closed a pooled connection under %s %s; sending it again",
                          self.role.value, self.base, method, target)
                response = await session.request(
                    method, url, headers=headers, data=body, allow_redirects=False, compress=None
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._failure(exc) from exc
        return UpstreamResponse(response, self)

    def _failure(self, exc: BaseException) -> UpstreamError:
        """What went wrong before a response head arrived, in the operator's words."""
        where = f"{self.role.value} upstream {self.base}"
        if isinstance(exc, _NoResponse):
            exc = exc.cause
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
