"""One client connection: bytes in, requests to the handler in order, responses out.

Every byte goes through `RequestFraming` (wire.py) before llhttp, which refuses what llhttp lets
through and answers its limits with 414/431/505 instead of 400; then llhttp (httptools, strict: no
lenient flag is ever set) parses it, and the checks aiohttp's parser made beyond llhttp's are made
here (`_Head`), so a request is refused exactly where it was refused before.

- A request is handed to the handler when its head is parsed (the body streams in behind it), on a
  task of its own, which the client's disconnect cancels at once. Pipelined requests wait in order;
  at most `PIPELINE` are parsed ahead: the framing stops at that message boundary, the rest is held
  and the socket is not read until the queue drains.
- An answer the connection makes itself (a refused head, 408) takes its place in the same queue,
  after the requests before it. A connection that ends after an answer (that one, or a response
  that closes) closes lingering: FIN first, then reading and dropping what the client still sends
  for up to `LINGER` seconds, so the client reads the answer instead of a reset destroying it.
- A head must be whole within `head_timeout` of its first byte (408); an idle keep-alive connection
  closes after `keepalive_timeout`. A body the handler left unread is read and thrown away for up to
  `LINGER` seconds (then the connection is kept), else the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from canaryproxy.proxy.body import MalformedBody
from canaryproxy.proxy.engine.head import Head
from canaryproxy.proxy.engine.request import HIGH_WATER, NO_BODY, BodyStream, Request
from canaryproxy.proxy.engine.response import Response, StreamResponse, http_date, reason_of
from canaryproxy.proxy.logs import client_error_kind, describe
from canaryproxy.proxy.wire import Refusal, RequestFraming

if TYPE_CHECKING:
    from canaryproxy.proxy.engine.server import EngineServer

log = logging.getLogger("canaryproxy.proxy.client")

PIPELINE = 16  # requests parsed ahead of the one being answered
LINGER = 2.0  # seconds a closing connection still reads (and drops) what the client sends
DISCARD = 10.0  # seconds an unread body may take to arrive and be dropped (aiohttp's lingering time)
WRITE_HIGH_WATER = 64 * 1024  # the transport's buffer past which writes wait for the client

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_SERVER_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"


class _Answer:
    """An answer of the connection's own, waiting in the queue for its turn; then the close."""

    __slots__ = ("data", "kind", "detail")

    def __init__(self, data: bytes, kind: str, detail: str) -> None:
        self.data, self.kind, self.detail = data, kind, detail


def refusal_bytes(status: int, message: str) -> bytes:
    """A refused head's answer: its reason as plain text, as aiohttp's server answered it."""
    body = message.encode("utf-8", "backslashreplace")
    return (f"HTTP/1.1 {status} {reason_of(status)}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nDate: {http_date()}\r\nConnection: close\r\n\r\n"
            ).encode() + body


class Connection(asyncio.Protocol):
    """See the module docstring."""

    __slots__ = (
        "_server", "_loop", "transport", "remote", "_parser", "_framing", "_head", "_receiving",
        "_unchecked",        "_queue", "_current", "_task", "_held", "_held_paused", "_body_paused", "_read_paused",
        "write_paused", "_drain_waiter", "_head_timer", "_idle_timer", "_idle_since",
        "_linger_timer", "_stopped", "_closing", "_discarding", "_lingering", "_upgraded",
        "responding",
    )

    def __init__(self, server: EngineServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._framing = RequestFraming(server.limits)
        self._head = Head(server.limits)
        self._receiving: BodyStream | None = None  # the body llhttp is filling
        # The request whose head llhttp has just handed over: llhttp checks its framing (a
        # Transfer-Encoding it will not read) only after that, so it starts once feed_data is done.
        self._unchecked: Request | None = None
        self._queue: deque[Request | _Answer] = deque()
        self._current: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._held: bytes | None = None  # read but not parsed: the queue was full
        self._held_paused = self._body_paused = self._read_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._stopped = False  # nothing more is parsed (refused, upgraded, or closing)
        self._closing = False  # close once the current response is out (drain, or an error)
        self._discarding = False  # dropping a body its handler did not read
        self._lingering = False  # answered and closing: reading only to drop it
        self._upgraded = False
        self.responding = False  # the current request's response has begun (set by prepare)

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, (tuple, list)) else (str(peer) if peer else None)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass  # not TCP (a test's socket pair): nothing to tune
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._server.connections.add(self)
        self._became_idle()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._held is not None:
            self._held += data  # read before the pause took effect: after what is held
            return
        self._process(data)

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: close (aiohttp's server does the same)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._stopped = True
        for timer in (self._head_timer, self._idle_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        lost = ConnectionResetError("Connection lost")
        for item in (self._current, *self._queue):
            if isinstance(item, Request) and not item.content.is_eof():
                item.content.set_exception(lost)
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()  # the client left: its upstream request ends now
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(lost)
        self._server.forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- writing (for the responses) -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.write(data)

    def write_chunk(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))

    async def drain(self) -> None:
        """Wait until the client has read the write buffer below its low-water mark."""
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if not self.write_paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self._loop.create_future()
        await asyncio.shield(waiter)

    # --- reading: framing, then llhttp ----------------------------------------------------------

    def _process(self, data: bytes) -> None:
        framing = self._framing
        if framing.off:
            self._parse(data)
            return
        room = PIPELINE - len(self._queue)
        if room <= 0:
            self._hold(data)
            return
        refusal = framing.feed(data, room)
        if refusal is not None:
            self._refuse(data, refusal)
            return
        taken = framing.consumed
        if taken < len(data):
            self._parse(data[:taken])
            self._hold(data[taken:])
        else:
            self._parse(data)
        self._watch_head()

    def _parse(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unchecked = None
            # llhttp stops after a request asking to switch protocols (Upgrade, CONNECT). The
            # proxy switches to nothing: that request is answered in HTTP/1.1 and the connection
            # then closes, so what the client sent after it is never read as HTTP.
            self._stopped = self._upgraded = True
        except httptools.HttpParserError as error:
            unchecked = self._unchecked
            if unchecked is not None:  # its framing failed: it never was a request
                self._unchecked = self._receiving = None
                self._queue.remove(unchecked)
            refused = self._head.refused
            self._head.refused = None
            if refused is not None:
                self._malformed(refused.status, refused.message)
            else:
                self._malformed(400, _llhttp_reason(error))
        else:
            self._unchecked = None
        if self._current is None:
            self._next()

    def _refuse(self, data: bytes, refusal: Refusal) -> None:
        if refusal.offset:
            self._parse(data[: refusal.offset])  # the acceptable requests before it
        self._malformed(refusal.status, refusal.reason)
        if self._current is None:
            self._next()

    def _malformed(self, status: int, message: str) -> None:
        """Stop parsing. The body being received fails (its handler answers 400); otherwise the
        refusal is answered after the requests before it."""
        if self._stopped:
            return  # already ending (an earlier refusal, a timeout, an upgrade)
        self._stopped = True
        self._cancel_head_timer()
        receiving = self._receiving
        if receiving is not None:
            self._receiving = None
            receiving.set_exception(MalformedBody(message))
            self._closing = True
            return
        where = self.remote or "?"
        self._queue.append(_Answer(refusal_bytes(status, message), "malformed_request",
                                   f"{message.splitlines()[0][:200]} (from {where})"))

    def _hold(self, data: bytes) -> None:
        self._held = data
        self._held_paused = True
        self._cancel_head_timer()  # its clock starts again when reading does
        self._flow()

    def _unhold(self) -> None:
        data, self._held = self._held, None
        self._held_paused = False
        if data:
            self._process(data)
        self._flow()

    def body_drained(self) -> None:
        if self._body_paused:
            self._body_paused = False
            self._flow()

    def _flow(self) -> None:
        """Read from the socket unless requests or a body are waiting on the handler."""
        transport = self.transport
        paused = self._held_paused or self._body_paused
        if transport is None or paused == self._read_paused or transport.is_closing():
            return
        self._read_paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()
            self._watch_head()

    # --- llhttp's callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head.begin()

    def on_url(self, url: bytes) -> None:
        self._head.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._receiving is None:  # trailers (after a chunked body) are dropped
            self._head.add(name, value)

    def on_headers_complete(self) -> None:
        parser = self._parser
        head = self._head
        method, target, version, headers, body = head.complete(parser)  # or HeadRefused
        upgrade = parser.should_upgrade()
        content = BodyStream(self) if body and not upgrade else NO_BODY
        request = Request(self, method, target, version, CIMultiDictProxy(CIMultiDict(headers)),
                          content, parser.should_keep_alive() and not upgrade)
        if content is not NO_BODY:
            self._receiving = content
        self._queue.append(request)
        self._unchecked = request

    def on_body(self, body: bytes) -> None:
        self._unchecked = None
        receiving = self._receiving
        if receiving is None:
            return
        if self._discarding:
            return  # a body nobody reads any more
        receiving.feed_data(body)
        if receiving.size > HIGH_WATER and not self._body_paused:
            self._body_paused = True
            self._flow()

    def on_message_complete(self) -> None:
        self._unchecked = None
        receiving = self._receiving
        if receiving is not None:
            self._receiving = None
            receiving.feed_eof()
        if self._discarding:
            self._discarding = False  # the next request starts once feed_data is done
            self._cancel_linger()

    # --- answering, in order --------------------------------------------------------------------

    def _next(self) -> None:
        """Start on the next request in the queue (or answer the next answer of our own)."""
        if self._discarding:
            return
        queue = self._queue
        if not queue and self._held is not None:
            self._unhold()  # the first request parsed from it starts from on_headers_complete
        if self._current is not None or self._lingering or self.transport is None:
            return
        if not queue:
            if self._closing or (self._stopped and self._receiving is None):
                self._close()
            else:
                self._became_idle()
            return
        item = queue.popleft()
        if isinstance(item, _Answer):
            self._answer(item)
            return
        self._current = item
        self.responding = False
        self._task = self._loop.create_task(self._serve(item))
        if self._held is not None and len(queue) < PIPELINE // 2:
            self._unhold()

    async def _serve(self, request: Request) -> None:
        response: StreamResponse | None = None
        try:
            try:
                response = await self._server.handler(request)
            except (asyncio.CancelledError, ConnectionError):
                raise
            except Exception as exc:
                response = self._failed(exc)
                if response is None:
                    return
            await response.prepare(request)
            await response.write_eof()
        except asyncio.CancelledError:
            self._close(abort=True)
            return
        except ConnectionError as exc:
            self._note(client_error_kind(exc) or "client_disconnect", describe(exc))
            self._close()
            return
        except Exception:
            log.exception("error answering a request")
            self._close(abort=True)
            return
        finally:
            self._current = None
            self._task = None
        self._finished(request, response)

    def _failed(self, exc: Exception) -> StreamResponse | None:
        """The handler raised: 500 (504 for a timeout, as aiohttp answered), unless its response
        had begun, when all that is left is to close."""
        kind = client_error_kind(exc)
        if kind is None:
            log.exception("Error handling request from %s", self.remote, exc_info=exc)
        else:
            self._note(kind, describe(exc))
        if self.transport is None or self.responding:
            self._close(abort=True)
            return None
        if isinstance(exc, asyncio.TimeoutError):
            response = Response(status=504)
        else:
            response = Response(status=500, text=_SERVER_ERROR)
        response.force_close()
        return response

    def _finished(self, request: Request, response: StreamResponse) -> None:
        if self.transport is None:
            return
        body = request.content
        keep = response.keep_alive and not self._closing and not self._upgraded
        if body is not NO_BODY and not body.is_eof():
            body.detach()
            if not keep:
                self._linger()
                return
            self._discarding = True  # the rest of the body is read and dropped, then on we go
            self._cancel_linger()
            self._linger_timer = self._loop.call_later(DISCARD, self._close)
            self.body_drained()
            return
        if not keep:
            self._linger()  # the client may still be sending: let it read this answer first
            return
        self._next()

    def _answer(self, answer: _Answer) -> None:
        self._note(answer.kind, answer.detail)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(answer.data)
        self._linger()

    # --- timers and closing ---------------------------------------------------------------------

    def _watch_head(self) -> None:
        if not self._framing.in_head or self._read_paused:
            self._cancel_head_timer()
        elif self._head_timer is None:
            self._head_timer = self._loop.call_later(self._server.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._stopped:
            return
        self._stopped = True
        self._queue.append(_Answer(REQUEST_TIMEOUT, "client_header_timeout",
                                   f"request head not complete within {self._server.head_timeout:g}s "
                                   f"(from {self.remote or '?'})"))
        if self._current is None:
            self._next()

    def _became_idle(self) -> None:
        self._idle_since = self._loop.time()
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_later(self._server.keepalive_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.transport is None:
            return
        if not self.idle:
            return  # armed again when it next becomes idle
        waited = self._loop.time() - self._idle_since
        if waited >= self._server.keepalive_timeout:
            self._close()
        else:
            self._idle_timer = self._loop.call_later(self._server.keepalive_timeout - waited,
                                                     self._idle_check)

    @property
    def idle(self) -> bool:
        return self._current is None and not self._queue and not self._discarding

    def drain_connection(self) -> None:
        """Shutting down: an idle connection closes now, a busy one after its response."""
        self._closing = True
        if self.idle:
            self._close()

    def _linger(self) -> None:
        """Close after what was written, reading (and dropping) what the client still sends, so
        that its unread bytes do not turn the close into a reset that destroys the answer."""
        self._stopped = self._lingering = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._read_paused:
            self._read_paused = self._held_paused = self._body_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._cancel_linger()
        self._linger_timer = self._loop.call_later(LINGER, self._close)

    def _cancel_linger(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _close(self, abort: bool = False) -> None:
        self._stopped = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if abort:
                transport.abort()
            else:
                transport.close()

    def abandon(self) -> None:
        """Shutdown after the drain window: end what is still running, then the connection."""
        if self._task is not None:
            self._task.cancel()
        else:
            self._close()

    def _note(self, kind: str, detail: str) -> None:
        self._server.client_errors.note(kind, detail)


def _llhttp_reason(error: httptools.HttpParserError) -> str:
    text = str(error) or type(error).__name__
    return text[:200]
