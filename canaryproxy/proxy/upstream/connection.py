"""One upstream connection: a request written, its response parsed by llhttp, its deadlines, its end.

A connection carries one exchange at a time (no pipelining): `begin()` arms it for a request and
returns the future of the response head; llhttp's callbacks fill the `UpstreamResponse` that future
resolves to, and its reader takes the body from there.

* Deadlines: one timer per connection, not per exchange (arming one costs more than the rest of
  an exchange's bookkeeping): it wakes at least every min(first byte, idle) while the connection
  is busy, checks the deadline that applies (first byte until a body byte came, then idle) against
  the time the last bytes arrived or a streamed request body last went out (`_progress`), and
  sleeps again until it is due; on an idle pooled connection it stops. So progress costs a clock
  read, and a request no timer. While the reader is behind
  (body unread, or reading paused for it), a silent upstream is not the upstream's fault: aiohttp
  stops its read timer then too.
* Flow control: past `HIGH_WATER` unread body bytes the socket is not read (the kernel's window
  then slows the upstream), until the reader takes them.
* Keep-alive only after a complete response whose framing allows it (llhttp's
  `should_keep_alive`: HTTP/1.1 without `Connection: close`, or 1.0 with keep-alive, and not
  delimited by the close), a request body sent whole, and nothing unexpected on the wire after.
* HEAD: llhttp's response parser does not know the request's method, and httptools gives no way to
  tell it the body is skipped: the response ends at its head, llhttp is stopped there and replaced
  by a fresh parser for the next response. Bytes after that head in the same read can only be a
  body the upstream should not have sent (no request is pipelined behind it): they are dropped.
* The head's future is resolved once llhttp has parsed all of the read it came in, so that bad
  framing right behind the head (a broken first chunk) fails the request before it starts, as
  aiohttp's parser did, instead of cutting off a response already under way.
* 1xx interim responses (100 Continue, 103) are skipped; 101 is refused (we never ask to upgrade).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from canaryproxy.errors import UpstreamError
from canaryproxy.proxy.upstream.policy import Failures
from canaryproxy.proxy.upstream.response import UpstreamResponse

if TYPE_CHECKING:
    from canaryproxy.proxy.upstream.pool import Pool

HIGH_WATER = 128 * 1024  # unread body bytes past which the socket is not read
WRITE_HIGH_WATER = 64 * 1024  # request bytes buffered before a streamed body waits (drain)
# aiohttp's client limits on a response head (max_field_size, max_line_size; headers counted as
# its server counts them): past them the head is refused as BAD_RESPONSE, never buffered on.
MAX_FIELD = 8190
MAX_FIELDS = 128
MAX_HEAD = 1024 * 1024  # bytes read while the head is still incomplete


class _Stop(Exception):
    """Raised from an llhttp callback to stop parsing (why: in `Connection._stop`)."""


_HEAD_DONE = object()  # `_stop` when llhttp was stopped at the end of a HEAD response's head


class Connection(asyncio.Protocol):
    """See the module docstring. `pool` owns it; `failures` words its errors."""

    __slots__ = (
        "pool", "failures", "transport", "answered", "idle_since", "stale", "keep", "writing",
        "_loop", "_parser", "_head", "_response", "_fields", "_reason", "_interim", "_busy", "_got",
        "_first", "_progress", "_timer", "_head_only", "_framed", "_read_paused", "_write_paused",
        "_drained", "_stop", "_head_bytes",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.failures: Failures = pool.failures
        self.transport: asyncio.Transport | None = None
        self.answered = 0  # responses completed on it: more than 0, it came from the pool
        self.idle_since = 0.0
        self.stale = False  # closed before any byte of a response, after having carried one
        self.keep = False  # reusable once the current response has been read
        self.writing: asyncio.Task[None] | None = None  # a streamed request body being sent
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        self._fields: list[tuple[str, str]] = []
        self._reason = ""
        self._interim = False  # the head parsed was a 1xx: its message end is not the response's
        self._busy = False  # a request is out and its response not yet complete
        self._got = False  # a byte of the current response has arrived
        self._first = True  # no body byte yet: the first-byte deadline applies
        self._progress = 0.0  # loop time bytes last arrived (or the request went out)
        self._timer: asyncio.TimerHandle | None = None
        self._head_only = False  # the request was HEAD
        self._framed = False  # the body has a Content-Length or is chunked (else: ends at close)
        self._read_paused = self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._stop: UpstreamError | object | None = None  # why a callback stopped llhttp
        self._head_bytes = 0

    # --- one exchange -----------------------------------------------------------------------------

    def begin(self, head_only: bool) -> asyncio.Future[UpstreamResponse]:
        """Arm the connection for a request about to be written; the future of its head."""
        self._head = head = self._loop.create_future()
        self._response = None
        self._busy = True
        self._got = self._interim = self.keep = self.stale = False
        self._first = True
        self._head_only = head_only
        self._head_bytes = 0
        self.writing = None
        self._fields = []
        self._progress = now = self._loop.time()
        if self._timer is None:  # else the last exchange's timer checks this one in time
            self._timer = self._loop.call_at(now + self._horizon(), self._check)
        return head

    def finish(self, reuse: bool) -> None:
        """The response was read to its end (`reuse`) or given up: back to the pool, or closed."""
        writing = self.writing
        if writing is not None and not writing.done():
            reuse = False  # the upstream answered before taking the whole request body
        self._response = None
        transport = self.transport
        if reuse and self.keep and transport is not None and not transport.is_closing():
            self.pool.put(self)
        else:
            self.abort()

    def body_failed(self, error: BaseException) -> None:
        """The streamed request body failed on the client's side: the sender, if it still waits
        for the head, gets `error` as it is; the connection closes (the request is incomplete)."""
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        self.abort()

    def abort(self) -> None:
        """Close now, dropping what is unsent: a model server stops generating when it sees it.
        A reader still reading (the exchange is closing) sees the body broken off."""
        busy, self._busy = self._busy, False
        self._cancel_timer()
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.cancel()  # its sender is gone (cancelled): nobody is to be told
        response = self._response
        if busy and response is not None:
            response.end(self.failures.broke_off("the proxy closed the connection"))
        writing = self.writing
        if writing is not None and not writing.done():
            writing.cancel()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.pool.made(self)

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            self._unexpected()
            return
        self._progress = self._loop.time()
        if self._head is not None:
            self._got = True
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail(self.failures.bad_head(f"a response head over {MAX_HEAD} bytes"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:  # _Stop from a callback among them
            if not self._parse_stopped(error):
                return
        head = self._head
        if head is not None and self._response is not None:
            self._head = None
            if not head.done():  # cancelled with its sender, whose abort() has not yet run
                head.set_result(self._response)

    def eof_received(self) -> bool | None:
        return None  # the upstream is done sending: close (connection_lost says what it means)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._cancel_timer()
        self.pool.lost(self)
        self._wake_drain(ConnectionResetError("Connection lost"))
        if self._head is not None:
            self.stale = not self._got and self.answered > 0
            self._fail(self.failures.no_response())
            return
        response = self._response
        if response is None or not self._busy:
            return
        if not self._framed and not self._head_only:
            self._complete()  # a body delimited by the close: the close is its end
        else:
            self._fail(self.failures.broke_off(_cut_short(exc)))

    def sent(self) -> None:
        """Part of a streamed request body went out: the first-byte deadline counts from the
        request's end, not from its start (a long upload is not a silent upstream)."""
        self._progress = self._loop.time()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain(None)

    async def drain(self) -> None:
        """Wait until the write buffer is below its low-water mark (a streamed request body)."""
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if self._write_paused:
            waiter = self._drained
            if waiter is None:
                waiter = self._drained = self._loop.create_future()
            await waiter

    def read_taken(self) -> None:
        """The reader took the buffered body: read the socket again if it was paused for it."""
        if self._read_paused:
            self._read_paused = False
            transport = self.transport
            if transport is not None:
                transport.resume_reading()

    # --- llhttp's callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._busy:
            raise _Stop  # bytes after the response: the connection cannot be trusted again
        self._fields = []
        self._reason = ""  # llhttp calls on_status only for a reason that is there
        self._framed = False

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._fields
        if len(name) > MAX_FIELD or len(value) > MAX_FIELD or len(fields) >= MAX_FIELDS:
            self._stop = self.failures.bad_head("a response header over aiohttp's limits")
            raise _Stop
        text = name.decode("latin-1")
        lower = text.lower()
        if lower == "content-length" or lower == "transfer-encoding":
            self._framed = True  # llhttp refused a Transfer-Encoding that does not end in chunked
        fields.append((text, value.rstrip(b" \t").decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self._stop = self.failures.bad_head("101 Switching Protocols, never asked for")
                raise _Stop
            self._interim = True  # 100 Continue, 103 Early Hints: the response is still to come
            return
        headers = CIMultiDictProxy(CIMultiDict(self._fields))
        self._response = UpstreamResponse(status, self._reason, headers, self, self._loop)  # resolved by data_received
        if status == 204 or status == 304:
            self._framed = True  # llhttp reads no body here
        if self._head_only:
            self._complete()
            # llhttp would read a body it will not get: stopped here (see the module docstring). Its
            # keep-alive verdict is conservative: a head with neither length nor chunked says close.
            self.keep = parser.should_keep_alive()
            self._stop = _HEAD_DONE
            raise _Stop

    def on_body(self, body: bytes) -> None:
        response = self._response
        assert response is not None
        self._first = False
        response.chunks.append(body)
        unread = response.unread = response.unread + len(body)
        if unread > HIGH_WATER and not self._read_paused:
            transport = self.transport
            if transport is not None:
                self._read_paused = True
                transport.pause_reading()
        waiter = response.waiter
        if waiter is not None:
            response.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete()
        self.keep = self._parser.should_keep_alive()

    # --- the end of an exchange ----------------------------------------------------------------------

    def _complete(self) -> None:
        self._busy = False  # the timer stays: it stops by itself, or checks the next exchange
        self.answered += 1
        response = self._response
        if response is not None:
            response.end(None)

    def _fail(self, error: UpstreamError) -> None:
        """The exchange failed: the head's waiter or the body's reader gets `error`; the connection
        closes."""
        self._busy = False
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(error)
        response = self._response
        if response is not None:
            response.end(error)
        self.abort()

    def _parse_stopped(self, error: httptools.HttpParserError) -> bool:
        """llhttp stopped: True when the response parsed so far stands (the end of a HEAD
        response's head; bytes past a whole response, which only cost the connection's reuse),
        False when the exchange has failed."""
        stopped, self._stop = self._stop, None
        if stopped is _HEAD_DONE:
            self._parser = httptools.HttpResponseParser(self)
            return True
        if isinstance(stopped, UpstreamError):
            self._fail(stopped)
        elif not self._busy:
            self._unexpected()  # _Stop from on_message_begin: bytes past the response
            return True  # which itself is whole
        elif self._head is not None:
            self._fail(self.failures.bad_head(error))
        else:
            self._fail(self.failures.broke_off(error))
        return False

    def _unexpected(self) -> None:
        """Bytes nobody asked for (after the response, or on an idle connection): not reused."""
        self.keep = False
        if self._response is None:
            self.abort()

    def _check(self) -> None:
        self._timer = None
        if not self._busy:
            return
        deadlines = self.pool.deadlines
        limit = deadlines.first_byte if self._first else deadlines.idle
        now = self._loop.time()
        response = self._response
        if response is not None and (response.chunks or self._read_paused):
            self._progress = now  # the reader is behind, not the upstream
        due = self._progress + limit
        if now < due:
            self._timer = self._loop.call_at(min(due, now + self._horizon()), self._check)
            return
        failures = self.failures
        if self._head is not None:
            self._fail(failures.no_head_in_time())
        else:
            self._fail(failures.no_body_in_time() if self._first else failures.idle())

    def _horizon(self) -> float:
        """How long the timer may sleep: the shorter deadline, so that whichever applies when it
        wakes (first byte, or idle once the body has begun) is never overslept."""
        deadlines = self.pool.deadlines
        return min(deadlines.first_byte, deadlines.idle)

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    def _wake_drain(self, error: BaseException | None) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


def _cut_short(exc: BaseException | None) -> str:
    return f"the connection closed before the end of the body ({exc})" if exc else \
        "the connection closed before the end of the body"
