"""Reading one connection: bytes in, requests (and refusals) queued in order.

Every byte goes through `RequestFraming` (wire.py) before llhttp, which refuses what llhttp lets
through and answers its limits with 414/431/505 instead of 400; then llhttp (httptools, strict: no
lenient flag is ever set) parses it, and the checks aiohttp's parser made beyond llhttp's are made
in `head.py`, so a request is refused exactly where it was refused before.

At most `PIPELINE` requests are parsed ahead of the one being answered: the framing stops at that
message boundary, the rest is held, and the socket is not read until the queue drains. A request
body that holds more than `HIGH_WATER` unread bytes stops the reading too, until its handler has
read it down. A malformed request stops the reading for good: its refusal is queued after the
requests before it (or, when its head was accepted, fails the body its handler reads).
`Connection` (connection.py) answers what is queued here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from canaryproxy.proxy.body import MalformedBody
from canaryproxy.proxy.engine import answers
from canaryproxy.proxy.engine.answers import Answer
from canaryproxy.proxy.engine.head import Head
from canaryproxy.proxy.engine.output import Output
from canaryproxy.proxy.engine.request import HIGH_WATER, NO_BODY, BodyStream, Request
from canaryproxy.proxy.wire import Refusal, RequestFraming

if TYPE_CHECKING:
    from canaryproxy.proxy.engine.server import EngineServer

PIPELINE = 16  # requests parsed ahead of the one being answered


class Reading(asyncio.Protocol):
    """The reading half of a connection and the state both halves share."""

    __slots__ = (
        "_server", "_loop", "transport", "remote", "_parser", "_framing", "_head", "_receiving",
        "_unchecked", "_queue", "_current", "_task", "_held", "_held_paused", "_body_paused",
        "_read_paused",
        "output", "_head_timer", "_idle_timer", "_idle_since",
        "_linger_timer", "_stopped", "_closing", "_discarding", "_lingering", "_upgraded",
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
        self._queue: deque[Request | Answer] = deque()
        self._current: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._held: bytes | None = None  # read but not parsed: the queue was full
        self._held_paused = self._body_paused = self._read_paused = False
        self.output = Output(self._loop)  # what the responses write through
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._stopped = False  # nothing more is parsed (refused, upgraded, or closing)
        self._closing = False  # close once the current response is out (drain, or an error)
        self._discarding = False  # dropping a body its handler did not read
        self._lingering = False  # answered and closing: reading only to drop it
        self._upgraded = False

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._held is not None:
            self._held += data  # read before the pause took effect: after what is held
            return
        self._process(data)

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
                self._malformed(400, answers.llhttp_reason(error))
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
        self._queue.append(answers.refusal(status, message, self.remote))

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
        content = BodyStream(self, self._loop) if body and not upgrade else NO_BODY
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

    # --- what the answering half provides --------------------------------------------------

    def _next(self) -> None:
        raise NotImplementedError

    def _watch_head(self) -> None:
        raise NotImplementedError

    def _cancel_head_timer(self) -> None:
        raise NotImplementedError

    def _cancel_linger(self) -> None:
        raise NotImplementedError
