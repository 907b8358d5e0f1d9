"""An upstream's answer as the data plane reads it: its head, then its body chunk by chunk.

The connection (connection.py) appends what llhttp hands it to `chunks` and calls `end()`; the
reader takes everything buffered at once, so a token stream reaches the client as it arrives and a
reader that fell behind catches up in one write.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from multidict import CIMultiDictProxy

from canaryproxy.errors import UpstreamError
from canaryproxy.proxy.upstream.policy import ChunkIteration

if TYPE_CHECKING:
    from canaryproxy.proxy.upstream.connection import Connection


class UpstreamResponse(ChunkIteration):
    """An upstream's answer: its head, and its body to read chunk by chunk.

    End with `release()` after reading the whole body (the connection goes back to the pool) or
    `close()` otherwise: a model server stops generating when its connection closes.
    """

    # `chunks`, `unread`, `waiter`, `done` and `error` are written by the connection.
    __slots__ = ("status", "reason", "headers", "chunks", "unread", "waiter", "done", "error", "_connection",
                 "_loop")

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str], connection: Connection,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers  # header names as received
        self.chunks: list[bytes] = []  # arrived, not yet read
        self.unread = 0  # bytes in `chunks`
        self.waiter: asyncio.Future[None] | None = None  # the reader, waiting for more
        self.done = False  # the body is complete (what is in `chunks` is its end)
        self.error: UpstreamError | None = None  # what the reader gets once `chunks` is read
        self._connection: Connection | None = connection
        self._loop = loop  # get_running_loop() costs a getpid() on Python < 3.12: once per wait

    async def read(self) -> bytes:
        """The next chunk of the body as it arrived, b"" at its end.

        Raises UpstreamError(FIRST_BYTE_TIMEOUT or IDLE_TIMEOUT) when a deadline passed, and
        UpstreamError(RESET) when the body was cut short or broke its framing.
        """
        while True:
            chunks = self.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.unread = 0
                connection = self._connection
                if connection is not None:
                    connection.read_taken()
                return data
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            self.waiter = waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None


    def release(self) -> None:
        """The body was read: the connection goes back to the pool if its framing allows, and
        closes otherwise (a body not read to its end, a response that said `Connection: close`)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.finish(self.done and not self.chunks and self.error is None)

    def close(self) -> None:
        """Give up on the response: its connection closes, so the upstream stops working on it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.finish(False)

    def end(self, error: UpstreamError | None) -> None:
        """Called by the connection: the body is complete (None) or failed (`error`)."""
        if error is None:
            self.done = True
        elif not self.done:
            self.error = error
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)
