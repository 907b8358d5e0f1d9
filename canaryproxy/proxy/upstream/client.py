"""The exchange on llhttp: one upstream, its pool, the one retry, every failure an UpstreamError.

The semantics are the ones canaryproxy/proxy/exchange.py describes (they are the data plane's, not
this client's); here is how they are carried out:

* A retry needs to know what Go's transport knows and aiohttp did not say: whether the connection
  came from the pool (`answered` > 0) and whether any byte of this response arrived (`stale`, set
  by the connection when it closes before one did).
* Both attempts run inline in `send`, not in a helper coroutine: every coroutine in the chain
  between the task and the socket costs on each suspension and resumption.
"""

from __future__ import annotations

import asyncio
import logging

from multidict import CIMultiDict
from yarl import URL

from canaryproxy.core.types import Role
from canaryproxy.errors import UpstreamError
from canaryproxy.proxy.upstream.pool import Pool, Refused
from canaryproxy.proxy.upstream.policy import (
    RETRY_CONNECT_REFUSED, RETRY_REASONS, RETRY_STALE_CONNECTION, Body, Deadlines, Failures, replayable,
)
from canaryproxy.proxy.upstream.request import CONTENT_LENGTH, head, send_stream
from canaryproxy.proxy.upstream.response import UpstreamResponse

log = logging.getLogger("canaryproxy.proxy")


class Exchange:
    """One plain-HTTP upstream and its keep-alive pool. `start()` inside the event loop first."""

    __slots__ = (
        "role", "base", "deadlines", "retries", "failures", "pool", "_connections", "_keepalive",
        "_retry", "_host", "_port", "_host_line", "_prefix",
    )

    def __init__(
        self,
        role: Role,
        base_url: str,
        deadlines: Deadlines,
        *,
        connections: int = 1000,
        keepalive: float = 4.0,
        retry: bool = True,
    ) -> None:
        """`retry` False: never send a request twice (a shadow copy: nobody waits for it)."""
        url = URL(base_url)
        if url.scheme != "http" or not url.raw_host:
            raise ValueError(f"the llhttp upstream client speaks plain http only, not {base_url!r} "
                             "(https upstreams go through aiohttp: see canaryproxy/proxy/exchange.py)")
        self.role = role  # named in error messages
        self.base = base_url.rstrip("/")
        self.deadlines = deadlines
        # Requests sent a second time, by reason (RETRY_REASONS); read by the exporter at scrape.
        self.retries = dict.fromkeys(RETRY_REASONS, 0)
        self.failures = Failures(f"{role.value} upstream {self.base}", deadlines)
        self.pool: Pool | None = None
        self._connections = connections
        self._keepalive = keepalive
        self._retry = retry
        self._host = url.raw_host
        self._port = url.port or 80
        authority = f"[{self._host}]" if ":" in self._host else self._host
        if url.explicit_port and url.port != 80:
            authority += f":{url.port}"
        self._host_line = f"Host: {authority}\r\n"
        self._prefix = url.raw_path.rstrip("/")  # a base URL with a path: targets go under it

    async def start(self) -> None:
        self.pool = Pool(self._host, self._port, self._connections, self._keepalive, self.deadlines,
                         self.failures)

    async def close(self) -> None:
        pool = self.pool
        if pool is not None:
            self.pool = None
            pool.close()
            await asyncio.sleep(0)  # the transports' connection_lost runs before the loop may close

    async def send(
        self, method: str, target: str, headers: CIMultiDict[str], body: Body = None
    ) -> UpstreamResponse:
        """Send one request; its response once the head has arrived.

        `target` is the origin-form request target, percent-encoded as received. A bytes body gets
        its Content-Length from us (any passed is dropped). Raises UpstreamError when no usable
        response head arrived; an exception of a streamed body's own passes through unchanged.
        """
        pool = self.pool
        assert pool is not None, "Exchange.start() first"
        buffered = body is None or isinstance(body, bytes)
        data = head(method, self._prefix + target, self._host_line, headers, body)
        head_only = method == "HEAD"
        retried = False
        while True:
            connection = pool.take()
            if connection is None:
                try:
                    connection = await pool.connect()
                except Refused as exc:
                    # Refused at connect: no byte reached the upstream. A streamed body may have been
                    # consumed, so only a buffered one (or none) is sent again.
                    if retried or not (self._retry and buffered):
                        raise self.failures.refused(exc.os_error) from exc
                    retried = True
                    self.retries[RETRY_CONNECT_REFUSED] += 1
                    continue
            response = connection.begin(head_only)
            transport = connection.transport
            assert transport is not None  # taken or made open, in this same step
            if len(data) == 1:
                transport.write(data[0])
            else:
                transport.writelines(data)
            if not buffered:
                chunked = CONTENT_LENGTH not in headers
                connection.writing = send_stream(connection, body, chunked)  # type: ignore[arg-type]
            try:
                return await response
            except UpstreamError:
                if retried or not (self._retry and connection.stale and replayable(method, headers, body)):
                    raise
                retried = True
                self.retries[RETRY_STALE_CONNECTION] += 1
                log.debug("%s upstream %s closed a pooled connection under %s %s; sending it again",
                          self.role.value, self.base, method, target)
            except asyncio.CancelledError:
                connection.abort()  # the client left: the upstream stops working on it
                raise
