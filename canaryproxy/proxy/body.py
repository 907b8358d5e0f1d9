"""Reading the client's request body: buffered when small, streamed with a byte count otherwise.

Small bodies with a declared length are buffered, so an LLM request can be inspected (and
rewritten) and a request refused at connect can be sent again. Larger or chunked bodies are
streamed upstream chunk by chunk; aiohttp's `client_max_size` does not apply to a streamed body, so
the bytes are counted here (413), and a deadline bounds the whole body (408): without one a client
sending a byte now and then holds the request open forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from canaryproxy.core.types import ErrorKind
from canaryproxy.proxy.http import Request, write_continue


class ClientBodyTimeout(Exception):
    """Set on the request stream when the body did not arrive within the client body timeout."""


class BodyTooLarge(Exception):
    """Raised into the upstream send when a streamed body passes the limit."""


class MalformedBody(Exception):
    """Set on the request stream when its chunked framing was refused (engine/connection.py)."""


class StreamedBody:
    """A body without a declared length (chunked) or too large to buffer, and what went wrong
    with it (read after the send ends: aiohttp may report the failure of the body it was sending
    as an upstream error).

    `buffer(size)` reads ahead before any upstream is contacted (nginx's request buffering): a
    chunked body that ends within `size` bytes is sent whole, and one refused within them
    (too large, too slow, malformed) costs the upstream nothing. One deadline bounds the whole
    body, from the first read to the last; `close()` ends it.
    """

    __slots__ = ("error", "malformed", "bytes", "_request", "_limit", "_timeout", "_timer",
                 "_ahead")

    def __init__(self, request: Request, limit: int, timeout: float) -> None:
        self.error: ErrorKind | None = None
        self.malformed = False
        self.bytes = 0
        self._request = request
        self._limit = limit
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._ahead: list[bytes] = []

    async def _read(self) -> bytes:
        """The next piece of the body (b"" at its end), counted against the limit."""
        content = self._request.content
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self._timeout, content.set_exception, ClientBodyTimeout()
            )
        try:
            chunk = await content.readany()
        except ClientBodyTimeout:
            self.error = ErrorKind.CLIENT_BODY_TIMEOUT
            raise
        except MalformedBody:
            # Not the upstream's doing, and the connection is closed on it.
            self.error, self.malformed = ErrorKind.CLIENT_DISCONNECT, True
            raise
        self.bytes += len(chunk)
        if self.bytes > self._limit:
            self.error = ErrorKind.BODY_TOO_LARGE
            raise BodyTooLarge()
        return chunk

    async def buffer(self, size: int) -> bytes | None:
        """The whole body when it ends within `size` bytes; otherwise None, and what was read
        is sent first by `chunks()`."""
        ahead = self._ahead
        total = 0
        while total <= size:
            chunk = await self._read()
            if not chunk:
                self.close()
                return b"".join(ahead)
            ahead.append(chunk)
            total += len(chunk)
        return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk, counting bytes against the limit, within the deadline."""
        try:
            for chunk in self._ahead:
                yield chunk
            self._ahead = []
            while chunk := await self._read():
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


async def read_small_body(request: Request, timeout: float) -> bytes:
    """The whole body of a request whose declared length is within the buffering limit.

    Raises ClientBodyTimeout when it did not arrive within `timeout` seconds.
    """
    content = request.content
    if content.is_eof():
        # The common case: a small JSON body that arrived with the headers. No timer needed.
        return await content.read()
    timer = asyncio.get_running_loop().call_later(timeout, content.set_exception, ClientBodyTimeout())
    try:
        return await content.read()
    finally:
        timer.cancel()


async def send_continue(request: Request) -> None:
    """Tell a client waiting on `Expect: 100-continue` to send its body (as nginx does, instead of
    forwarding Expect: an upstream that never answers 100 would leave the body waiting). Only once
    the request is accepted: a refused one gets its final status instead (RFC 9110 §10.1.1)."""
    if request.version >= (1, 1):  # an HTTP/1.0 client cannot mean it (RFC 9110 §10.1.1)
        await write_continue(request)
