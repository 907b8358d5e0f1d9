"""The data plane's HTTP server: aiohttp's low-level server, with the front door a proxy needs.

aiohttp's `RequestHandler` (the protocol of one connection) is kept, with three changes:

1. Every read goes through `RequestFraming` (wire.py) before llhttp, which refuses what llhttp
   lets through and answers its limits with 414/431/505 instead of 400. A refused head becomes an
   error message in aiohttp's own queue (answered in order, after the requests before it, and the
   connection closed); a refused chunk fails the body its handler is reading (`MalformedBody`).
2. Client-caused errors (a malformed request, a body that timed out, a client that hung up) are
   logged as one rate-limited line (logs.py) instead of an ERROR with a traceback; anything else
   keeps aiohttp's logging, traceback included.
3. A request head must arrive whole within `head_timeout` of its first byte (nginx's
   client_header_timeout): a client trickling a head (slowloris) gets 408 and the connection is
   closed, instead of holding it for as long as it likes.
4. Nothing else: keep-alive, pipelining, flow control and lingering close are aiohttp's.

The private names used (`_ErrInfo`, `_messages`, `_waiter`, `_request_count`) are aiohttp 3.14's;
tests/proxy/test_corpus.py checks the behaviour end to end, so an aiohttp upgrade that moves them
fails there, not in production.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from canaryproxy.proxy.body import MalformedBody
from canaryproxy.proxy.logs import RateLimitedLog, client_error_kind, describe
from canaryproxy.proxy.wire import Refusal, RequestFraming, WireLimits

log = logging.getLogger("canaryproxy.proxy.client")

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
HEAD_TIMEOUT = 60.0  # seconds, nginx's client_header_timeout default


class EdgeRequestHandler(RequestHandler):
    """One client connection; see the module docstring."""

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._framing = RequestFraming(manager.wire_limits)
        self._client_errors = manager.client_errors
        self._last_payload: StreamReader | None = None  # the body llhttp is filling, if any
        self._refused = False
        self._head_timeout = manager.head_timeout
        self._head_deadline: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        framing = self._framing
        if not framing.off:
            refusal = framing.feed(data)
            if refusal is not None:
                self._refuse(data, refusal)
                return
        super().data_received(data)
        if self._messages:
            self._last_payload = self._messages[-1][1]
        self._watch_head(framing.in_head)

    def _watch_head(self, in_head: bool) -> None:
        if not in_head:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None
        elif self._head_deadline is None:
            self._head_deadline = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        peer = self.peername
        where = peer[0] if isinstance(peer, tuple) else "?"
        self._client_errors.note("client_header_timeout", f"request head not complete within "
                                 f"{self._head_timeout:g}s (from {where})")
        self._refused = True
        if not self._messages and self._current_request is None:
            transport.write(REQUEST_TIMEOUT)  # nothing else is being answered on this connection
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        super().connection_lost(exc)

    def _refuse(self, data: bytes, refusal: Refusal) -> None:
        self._refused = True
        if refusal.offset:
            super().data_received(data[: refusal.offset])  # the acceptable requests before it
            if self._messages:
                self._last_payload = self._messages[-1][1]
        if refusal.in_body:
            # The head was accepted: fail the body being read; its handler answers 400.
            if self._last_payload is not None and not self._last_payload.is_eof():
                self._last_payload.set_exception(MalformedBody(refusal.reason))
            else:
                self.close()
            return
        self._request_count += 1
        error = BadHttpMessage(refusal.reason)
        self._messages.append((_ErrInfo(status=refusal.status, exc=error, message=refusal.reason),
                               EMPTY_PAYLOAD))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        kind = client_error_kind(error if isinstance(error, BaseException) else None)
        if kind is None:
            super().log_exception(*args, **kwargs)
            return
        assert isinstance(error, BaseException)
        peer = self.peername
        where = peer[0] if isinstance(peer, tuple) else "?"
        self._client_errors.note(kind, f"{describe(error)} (from {where})")


class EdgeServer(web.Server):
    """`web.Server` making `EdgeRequestHandler`s; the limits go to llhttp and to the follower."""

    def __init__(self, handler: Any, *, client_errors: RateLimitedLog | None = None,
                 max_line_size: int = 8190, max_field_size: int = 8190, max_headers: int = 128,
                 head_timeout: float = HEAD_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(handler, max_line_size=max_line_size, max_field_size=max_field_size,
                         max_headers=max_headers, **kwargs)
        self.wire_limits = WireLimits(max_line_size, max_field_size, max_headers)
        self.head_timeout = head_timeout
        self.client_errors = client_errors or RateLimitedLog(lambda line: log.warning("%s", line))

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)


class EdgeListener:
    """`EdgeServer` behind the listener interface the wiring uses (start, drain, shutdown): the
    previous engine, selected by CANARYPROXY_ENGINE=aiohttp while the llhttp one replaces it."""

    def __init__(self, handler: Any, *, keepalive_timeout: float, head_timeout: float) -> None:
        server = EdgeServer(
            handler,
            # A client that leaves must cancel its upstream request at once, not at the next write.
            handler_cancellation=True,
            keepalive_timeout=keepalive_timeout,
            head_timeout=head_timeout,
            access_log=None,
        )
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.5)
        self._site: web.TCPSite | None = None
        self.port = 0

    async def start(self, host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=backlog, reuse_port=reuse_port or None)
        await site.start()
        self._site = site
        server = site._server  # aiohttp exposes the bound port only through the asyncio server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    def drain(self) -> None:
        if self._site is not None:
            # What TCPSite.stop() does, without unregistering the site (cleanup() stops it).
            server = self._site._server
            if server is not None:
                server.close()
        if self._runner.server is not None:
            self._runner.server.pre_shutdown()  # close idle keep-alive connections now

    async def shutdown(self, timeout: float = 0.5) -> None:
        await self._runner.cleanup()
