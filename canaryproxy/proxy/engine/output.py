"""The write side of one connection: what the responses write through, with backpressure.

The transport buffers up to `HIGH_WATER` bytes; past that, asyncio calls `pause_writing` and a
response's next `drain()` waits until the client has read it down (`resume_writing`). So a client
that reads slowly slows the relay, and through it the upstream, instead of the proxy buffering an
answer without bound. A write on a connection that is gone raises ConnectionResetError, which the
relay takes as the client having left.
"""

from __future__ import annotations

import asyncio

HIGH_WATER = 64 * 1024


def _gone() -> ConnectionResetError:
    return ConnectionResetError("Cannot write to closing transport")


class Output:
    __slots__ = ("transport", "paused", "responding", "_waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.responding = False  # the current request's response has begun (set by prepare)
        self._waiter: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise _gone()
        transport.write(data)

    def write_chunk(self, data: bytes) -> None:
        """One chunk of a chunked body (never an empty one: that ends the body)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise _gone()
        transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))

    async def drain(self) -> None:
        """Wait until the client has read the write buffer below its low-water mark."""
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if not self.paused:
            return
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)  # several may wait; a cancelled one leaves it for the rest

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake(None)

    def lost(self) -> None:
        self.transport = None
        self._wake(ConnectionResetError("Connection lost"))

    def _wake(self, error: BaseException | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
