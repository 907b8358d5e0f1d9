"""The write side of one connection: what the responses write through, with backpressure.

The transport buffers up to `HIGH_WATER` bytes; past that, asyncio calls `pause_writing` and a
response's next `drain()` waits until the client has read it down (`resume_writing`). So a client
that reads slowly slows the relay, and through it the upstream, instead of the proxy buffering an
answer without bound. A write on a connection that is gone raises ConnectionResetError, which the
relay takes as the client having left.

A response's head is not written on its own: it waits for the response's first body bytes and goes
out with them in one send, or, when none are at hand, at the end of the current event-loop step
(`call_soon`), so it is never delayed by a wait for the upstream. A JSON answer whose body arrived
with its head costs one send instead of two.
"""

from __future__ import annotations

import asyncio

HIGH_WATER = 64 * 1024


def _gone() -> ConnectionResetError:
    return ConnectionResetError("Cannot write to closing transport")


class Output:
    __slots__ = ("transport", "paused", "responding", "_loop", "_waiter", "_head", "_head_flush")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Kept: asyncio.get_running_loop() costs a getpid() system call on Python < 3.12 (its
        # check for a fork), once for every response head otherwise.
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.responding = False  # the current request's response has begun (set by prepare)
        self._waiter: asyncio.Future[None] | None = None
        self._head: bytes | None = None  # a response head waiting for its first body bytes
        self._head_flush: asyncio.Handle | None = None

    def write_head(self, head: bytes) -> None:
        """A response head: sent with the first body bytes written in this loop step, else at
        its end."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise _gone()
        self._head = head
        self._head_flush = self._loop.call_soon(self.flush)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise _gone()
        head = self._head
        if head is not None:
            self._take_head()
            data = head + data
        transport.write(data)

    def write_chunk(self, data: bytes) -> None:
        """One chunk of a chunked body (never an empty one: that ends the body)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise _gone()
        head = self._head
        if head is not None:
            self._take_head()
            transport.writelines((head, b"%x\r\n" % len(data), data, b"\r\n"))
            return
        transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))

    def flush(self) -> None:
        """Send a head still waiting for body bytes (a response ending, or the loop step over)."""
        head = self._head
        if head is None:
            return
        self._take_head()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(head)

    def _take_head(self) -> None:
        self._head = None
        handle = self._head_flush
        if handle is not None:
            self._head_flush = None
            handle.cancel()

    async def drain(self) -> None:
        """Wait until the client has read the write buffer below its low-water mark."""
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if not self.paused:
            return
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = self._loop.create_future()
        await asyncio.shield(waiter)  # several may wait; a cancelled one leaves it for the rest

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake(None)

    def lost(self) -> None:
        self.transport = None
        if self._head is not None:
            self._take_head()
        self._wake(ConnectionResetError("Connection lost"))

    def _wake(self, error: BaseException | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
