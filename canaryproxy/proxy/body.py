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

from aiohttp import web

from canaryproxy.core.types import ErrorKind


class ClientBodyTimeout(Exception):
    """Set on the request stream when the body did not arrive within the client body timeout."""


class BodyTooLarge(Exception):
    """Raised into the upstream send when a streamed body passes the limit."""


class StreamedBody:
    """A request body streamed upstream, and what went wrong with it (read after the send ends:
    aiohttp may report the failure of the body it was sending as an upstream error)."""

    __slots__ = ("error", "bytes", "_request", "_limit", "_timeout")

    def __init__(self, request: web.BaseRequest, limit: int, timeout: float) -> None:
        self.error: ErrorKind | None = None
        self.bytes = 0
        self._request = request
        self._limit = limit
        self._timeout = timeout

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body chunk by chunk, counting bytes against the limit, within the deadline."""
        content = self._request.content
        timer = asyncio.get_running_loop().call_later(
            self._timeout, content.set_exception, ClientBodyTimeout()
        )
        try:
            while True:
                try:
                    chunk = await content.readany()
                except ClientBodyTimeout:
                    self.error = ErrorKind.CLIENT_BODY_TIMEOUT
                    raise
                if not chunk:
                    return
                self.bytes += len(chunk)
                if self.bytes > self._limit:
                    self.error = ErrorKind.BODY_TOO_LARGE
                    raise BodyTooLarge()
                yield chunk
        finally:
            timer.cancel()


async def read_small_body(request: web.BaseRequest, timeout: float) -> bytes:
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
