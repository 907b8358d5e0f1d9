"""One client connection: the requests queued by its reading half answered in order, the timers,
the close.

- A request is handed to the handler when its head is parsed (the body streams in behind it), on a
  task of its own, which the client's disconnect cancels at once; the next starts when its
  response is out.
- An answer the connection makes itself (a refused head, 408) takes its place in the same queue.
  A connection that ends after an answer (that one, or a response that closes) closes lingering:
  FIN first, then reading and dropping what the client still sends for up to `LINGER` seconds,
  so the client reads the answer instead of a reset destroying it.
- A head must be whole within `head_timeout` of its first byte (408); an idle keep-alive connection
  closes after `keepalive_timeout`. A body the handler left unread is read and thrown away for up to
  `DISCARD` seconds (then the connection goes on), else the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import cast

from canaryproxy.proxy.engine import answers
from canaryproxy.proxy.engine.answers import Answer
from canaryproxy.proxy.engine.output import HIGH_WATER as WRITE_HIGH_WATER
from canaryproxy.proxy.engine.reading import PIPELINE, Reading
from canaryproxy.proxy.engine.request import NO_BODY, Request
from canaryproxy.proxy.engine.response import StreamResponse
from canaryproxy.proxy.logs import client_error_kind, describe

__all__ = ["PIPELINE", "Connection"]

log = logging.getLogger("canaryproxy.proxy.client")

LINGER = 2.0  # seconds a closing connection still reads (and drops) what the client sends
DISCARD = 10.0  # seconds an unread body may take to arrive and be dropped (aiohttp's lingering time)


class Connection(Reading):
    """See the module docstring."""

    __slots__ = ()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = self.output.transport = transport = cast(asyncio.Transport, transport)
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
        if self._server.keepalive_timeout > 0:  # zero: no keep-alive, yet a first request may come
            self._became_idle()

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
        self.output.lost()
        self._server.forget(self)

    def pause_writing(self) -> None:
        self.output.pause()

    def resume_writing(self) -> None:
        self.output.resume()

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
        if isinstance(item, Answer):
            self._answer(item)
            return
        self._current = item
        self.output.responding = False
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
        if self.transport is None or self.output.responding:
            self._close(abort=True)
            return None
        return answers.failure(exc)

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

    def _answer(self, answer: Answer) -> None:
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
        self._queue.append(answers.head_timeout(self._server.head_timeout, self.remote))
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

