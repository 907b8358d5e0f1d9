"""The data-plane listener: accepts connections for the handler, drains and shuts down.

`start()` listens (`loop.create_server`; `reuse_port` lets `run --workers N` share the port).
Shutting down is two steps, as the wiring (server.py) drives it: `drain()` stops accepting and
closes idle connections (busy ones close after their response); `shutdown()`, once the drain
window is over, cancels what still runs (the forwarder aborts those connections: a truncation the
client can see) and closes the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from canaryproxy.proxy.engine.connection import Connection
from canaryproxy.proxy.engine.request import Request
from canaryproxy.proxy.engine.response import StreamResponse
from canaryproxy.proxy.logs import RateLimitedLog
from canaryproxy.proxy.wire import WireLimits

log = logging.getLogger("canaryproxy.proxy.client")

HEAD_TIMEOUT = 60.0  # seconds, nginx's client_header_timeout default
KEEPALIVE_TIMEOUT = 75.0  # seconds, nginx's keepalive_timeout default

Handler = Callable[[Request], Awaitable[StreamResponse]]


class EngineServer:
    """One listener's connections and what they share (handler, limits, timeouts, the log)."""

    def __init__(self, handler: Handler, *, client_errors: RateLimitedLog | None = None,
                 limits: WireLimits = WireLimits(), head_timeout: float = HEAD_TIMEOUT,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> None:
        self.handler = handler
        self.limits = limits
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.client_errors = client_errors or RateLimitedLog(lambda line: log.warning("%s", line))
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._gone: asyncio.Event | None = None  # set when the last connection has closed
        self.port = 0

    async def start(self, host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False) -> int:
        """Listen; the bound port (port 0 picks a free one)."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Connection(self), host, port, backlog=backlog, reuse_port=reuse_port or None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._gone is not None:
            self._gone.set()

    def drain(self) -> None:
        """Stop accepting; close the idle connections now and the busy ones after their response."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self.connections):
            connection.drain_connection()

    async def shutdown(self, timeout: float = 0.5) -> None:
        """End every connection: cancel what still runs, and wait up to `timeout` for them to go."""
        self.drain()
        if not self.connections:
            return
        self._gone = asyncio.Event()
        for connection in list(self.connections):
            connection.abandon()
        try:
            await asyncio.wait_for(self._gone.wait(), timeout)
        except asyncio.TimeoutError:
            for connection in list(self.connections):
                transport = connection.transport
                if transport is not None:
                    transport.abort()
