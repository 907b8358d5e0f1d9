"""The keep-alive pool of one upstream (host, port): at most `limit` connections, idle ones reused
last-in first-out and dropped after `keepalive` idle seconds.

* LIFO: the connection used last is the warmest (its congestion window, the upstream's caches), and
  the ones at the bottom are left to expire, so a burst's extra connections close after it.
* Expiry: one timer for the whole pool, due when the oldest idle connection expires; the idle
  stack is ordered by age, so a check drops from its bottom and re-arms for the next.
* The limit counts connections open or being opened. At the limit a request waits (first come,
  first served) for a connection handed back or a slot freed, within the connect deadline: waiting
  for a slot counts against it, as it did with aiohttp's connector.
"""

from __future__ import annotations

import asyncio
from collections import deque

from canaryproxy.proxy.upstream.connection import Connection
from canaryproxy.proxy.upstream.policy import Deadlines, Failures


class Refused(Exception):
    """The connection could not be made (refused, unreachable): no byte reached the upstream."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class Pool:
    __slots__ = (
        "host", "port", "limit", "keepalive", "deadlines", "failures", "loop", "_idle", "_open",
        "_opening", "_waiters", "_timer", "_closed",
    )

    def __init__(self, host: str, port: int, limit: int, keepalive: float, deadlines: Deadlines,
                 failures: Failures) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.keepalive = keepalive
        self.deadlines = deadlines
        self.failures = failures
        self.loop = asyncio.get_running_loop()
        self._idle: deque[Connection] = deque()  # oldest at the left, warmest at the right
        self._open: set[Connection] = set()  # made and not yet lost, idle or busy
        self._opening = 0  # connections being made: they count against the limit too
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def size(self) -> int:
        """Connections open, idle or busy."""
        return len(self._open)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take(self) -> Connection | None:
        """The warmest idle connection, or None."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if transport is not None and not transport.is_closing():
                return connection
        return None

    async def connect(self) -> Connection:
        """A connection for a request when none was idle: a new one, or one handed back while
        waiting at the limit. Raises Refused, or UpstreamError(CONNECT_TIMEOUT)."""
        loop = self.loop
        deadline = loop.time() + self.deadlines.connect
        try:
            async with asyncio.timeout_at(deadline):
                while len(self._open) + self._opening >= self.limit:
                    handed = await self._wait()
                    if handed is not None:
                        return handed
                self._opening += 1
                try:
                    _, connection = await loop.create_connection(lambda: Connection(self), self.host, self.port)
                except OSError as exc:
                    raise Refused(exc) from exc
                finally:
                    self._opening -= 1
        except TimeoutError:
            self._wake_one()  # the slot this request may have held is free
            raise self.failures.connect_timeout() from None
        except Refused:
            self._wake_one()
            raise
        if self._closed or connection.transport is None:
            connection.abort()
            raise self.failures.no_response()
        return connection

    def made(self, connection: Connection) -> None:
        """A connection is up (from its connection_made, so that one lost at once is counted)."""
        self._open.add(connection)

    def put(self, connection: Connection) -> None:
        """A connection whose response was read: to a waiting request, or onto the idle stack."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = now = self.loop.time()
        self._idle.append(connection)
        if self._timer is None:
            self._timer = self.loop.call_at(now + self.keepalive, self._expire)

    def lost(self, connection: Connection) -> None:
        """A connection closed: its slot is free."""
        if connection not in self._open:
            return
        self._open.discard(connection)
        try:
            self._idle.remove(connection)
        except ValueError:
            pass
        self._wake_one()

    def close(self) -> None:
        """Close every connection, idle or busy (their readers see the upstream break off)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for connection in list(self._open):
            connection.abort()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(self.failures.no_response())
        self._waiters.clear()

    # --- internals -------------------------------------------------------------------------------

    async def _wait(self) -> Connection | None:
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Timed out (or cancelled) as a connection was handed over: pass it on.
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is not None:
                    self.put(handed)
                else:
                    self._wake_one()
            raise

    def _wake_one(self) -> None:
        """A slot is free: the first request waiting for one opens a connection."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        self._timer = None
        idle = self._idle
        now = self.loop.time()
        keepalive = self.keepalive
        while idle and now - idle[0].idle_since >= keepalive:
            idle.popleft().abort()
        if idle:
            self._timer = self.loop.call_at(idle[0].idle_since + keepalive, self._expire)
