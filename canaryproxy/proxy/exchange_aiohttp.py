"""The upstream client on aiohttp's ClientSession: what the data plane used before its own client
on llhttp (canaryproxy/proxy/upstream/), kept for https upstreams and, while the new client is
young, selectable with CANARYPROXY_UPSTREAM=aiohttp. The semantics (pool, retry, deadlines,
failures) are the ones canaryproxy/proxy/exchange.py describes; the words of the failures come from
upstream/policy.py, so both clients say the same.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from canaryproxy.core.types import Role
from canaryproxy.errors import UpstreamError
from canaryproxy.proxy.upstream.policy import (
    RETRY_CONNECT_REFUSED, RETRY_REASONS, RETRY_STALE_CONNECTION, Body, ChunkIteration, Deadlines, Failures,
    replayable,
)

log = logging.getLogger("canaryproxy.proxy")

# Targets repeat (a handful of API paths carry nearly all traffic): parsing the URL once per target
# instead of once per request. Bounded, since query strings can make every target new.
_URL_CACHE_SIZE = 256


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


class AiohttpExchange:
    """One upstream and its keep-alive pool. `start()` inside the event loop before sending."""

    __slots__ = (
        "role", "base", "deadlines", "retries", "_connections", "_keepalive", "_session", "_urls",
        "_retry", "failures",
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
        self.failures = Failures(f"{role.value} upstream {self.base}", deadlines)

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
    ) -> AiohttpResponse:
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
        return AiohttpResponse(response, self)

    def _failure(self, exc: BaseException) -> UpstreamError:
        """What went wrong before a response head arrived, in the operator's words."""
        failures = self.failures
        if isinstance(exc, _NoResponse):
            exc = exc.cause
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return failures.connect_timeout()
        if isinstance(exc, asyncio.TimeoutError):
            return failures.no_head_in_time()
        if isinstance(exc, aiohttp.ClientConnectorError):
            return failures.refused(exc.os_error)
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            return failures.no_response()
        return failures.bad_head(exc)


class AiohttpResponse(ChunkIteration):
    """An upstream's answer: its head, and its body to read chunk by chunk.

    End with `release()` after reading the whole body (the connection goes back to the pool) or
    `close()` otherwise: a model server stops generating when its connection closes.
    """

    __slots__ = ("status", "reason", "headers", "_response", "_content", "_exchange", "_first")

    def __init__(self, response: aiohttp.ClientResponse, exchange: AiohttpExchange) -> None:
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
            raise self._exchange.failures.broke_off(exc) from exc
        if self._first and chunk:
            self._first = False
            if not self._content.is_eof():
                self._idle_from_now_on()
        return chunk


    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()

    def _timed_out(self) -> UpstreamError:
        failures = self._exchange.failures
        return failures.no_body_in_time() if self._first else failures.idle()

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
