"""Writing an upstream response to the client, chunk by chunk, through the inspector.

* Chunks go down as they arrive (`readany`), so a token stream reaches the client token by token;
  `await write()` gives backpressure for free.
* A client that stops reading would pin the stream (and the upstream's work) forever: a guard
  resets its connection after `client_write_timeout` seconds of a write that does not complete.
  A reset, not a close: `transport.abort()` drops only the event loop's buffer, and the kernel
  then sends its own send buffer (megabytes) before the FIN, to a reader that takes nothing, so
  the client never learns and the socket lingers in FIN-WAIT-1. SO_LINGER 0 makes the close an
  RST that discards it (`reset_connection`).
* When the upstream fails after the response has started, the client connection is aborted:
  `write_eof()` after a broken stream would look to the client like a clean end.
* A client that goes away ends the relay; the upstream connection is then closed, not returned
  to the pool, so the model server stops generating.

The relay writes the transport's facts into the Outcome (bytes sent, the error); whether the
response counts as truncated is decided once, when the request ends (`inspection.apply`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable

import aiohttp
from multidict import CIMultiDict

from canaryproxy.core.types import ErrorKind, Outcome
from canaryproxy.errors import UpstreamError
from canaryproxy.inspection import Inspection, Inspector
from canaryproxy.proxy.exchange import UpstreamResponse
from canaryproxy.proxy.http import Request, StreamResponse

log = logging.getLogger("canaryproxy.proxy")

# Writes that may block on a slow reader only happen past the transport's write buffer, so the
# client-write guard is armed only for responses larger than that.
_WRITE_GUARD_AFTER_BYTES = 64 * 1024

_CLIENT_GONE = (ConnectionError, aiohttp.ClientConnectionResetError)

# SO_LINGER on, 0 seconds: close() discards unsent data and sends RST.
_LINGER_ZERO = struct.pack("ii", 1, 0)


def reset_connection(transport: asyncio.BaseTransport) -> None:
    """Close the connection with an RST, dropping whatever is still queued for it, in the event
    loop and in the kernel."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        except OSError:
            pass  # already closed by the peer: abort() is all there is left to do
    transport.abort()


class Relay:
    """Relays responses to clients; one per proxy, holding what every response shares."""

    __slots__ = ("_write_timeout", "_now")

    def __init__(self, client_write_timeout: float, now: Callable[[], float]) -> None:
        self._write_timeout = client_write_timeout
        self._now = now

    async def __call__(self, request: Request, upstream: UpstreamResponse, headers: CIMultiDict[str],
                       inspector: Inspector | None, inspection: Inspection | None, outcome: Outcome,
                       ) -> StreamResponse:
        """Send `upstream` to the client with `headers`, through `inspector` (None: not inspected),
        which fills `inspection`; records bytes_out and error. One coroutine for the whole body: each
        chunk's wait passes through every coroutine between the task and the socket."""
        response = StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        now = self._now
        read = upstream.read
        write = response.write
        sent = 0  # counted here and recorded once: the loop runs for every chunk
        guard: _WriteGuard | None = None
        try:
            await response.prepare(request)
            while True:
                try:
                    chunk = await read()
                except UpstreamError as error:
                    self._abort(request, upstream, outcome, error, inspector, inspection, sent)
                    return response
                if not chunk:
                    break
                if inspector is not None:
                    try:
                        chunk = inspector.feed(chunk)
                    except Exception:  # an inspector must never break a response
                        log.exception("inspector failed; forwarding the rest uninspected")
                        _inspect_failed(inspection)
                        inspector = None
                    if not chunk:
                        continue
                sent += len(chunk)
                if guard is None:
                    if sent > _WRITE_GUARD_AFTER_BYTES:
                        guard = _WriteGuard(request, self._write_timeout, now)
                    await write(chunk)
                else:
                    guard.writing = now()
                    await write(chunk)
                    guard.writing = 0.0
        except _CLIENT_GONE:
            upstream.close()
            _client_gone(outcome, guard)
            return response
        except asyncio.CancelledError:
            upstream.close()
            if guard is not None and guard.fired:
                # The reset cancels this handler (the connection is lost) before the pending write
                # fails: the client was thrown out for not reading, it did not leave.
                outcome.error = ErrorKind.CLIENT_WRITE_TIMEOUT
            raise
        finally:
            outcome.bytes_out = sent
            if guard is not None:
                guard.cancel()
        await self._end(response, upstream, inspector, inspection, outcome)
        return response

    @staticmethod
    async def _end(
        response: StreamResponse,
        upstream: UpstreamResponse,
        inspector: Inspector | None,
        inspection: Inspection | None,
        outcome: Outcome,
    ) -> None:
        """The whole body arrived: what the inspector still held, then the proper end."""
        if inspector is not None:
            try:
                tail = inspector.finish(True)
            except Exception:
                log.exception("inspector failed at the end of a response")
                _inspect_failed(inspection)
                tail = b""
            if tail:
                outcome.bytes_out += len(tail)
                await response.write(tail)
        upstream.release()
        await response.write_eof()

    @staticmethod
    def _abort(
        request: Request,
        upstream: UpstreamResponse,
        outcome: Outcome,
        error: UpstreamError,
        inspector: Inspector | None,
        inspection: Inspection | None,
        sent: int,
    ) -> None:
        """The upstream failed after the response started: abort the client connection so the
        client sees an error, never a clean-looking end of a truncated stream."""
        outcome.error = error.kind
        if inspector is not None:
            try:
                inspector.finish(False)  # what was read so far still counts; held bytes are dropped
            except Exception:
                log.exception("inspector failed at the end of a broken response")
                _inspect_failed(inspection)
        upstream.close()
        log.warning(
            "%s upstream failed mid-response (%s) after %d bytes; aborting the client connection "
            "[request_id=%s]",
            outcome.role.value, error.kind.value, sent, outcome.request_id,
        )
        transport = request.transport
        if transport is not None:
            transport.abort()


def _client_gone(outcome: Outcome, guard: _WriteGuard | None) -> None:
    """The client went away, or the guard threw out a client that stopped reading."""
    fired = guard is not None and guard.fired
    outcome.error = ErrorKind.CLIENT_WRITE_TIMEOUT if fired else ErrorKind.CLIENT_DISCONNECT


def _inspect_failed(inspection: Inspection | None) -> None:
    if inspection is not None:
        inspection.inspect_error = True


class _WriteGuard:
    """Resets the connection of a client that stops reading: one timer per large response, no
    per-write cost but a clock read. `writing` is when the pending write started (0 when none is
    pending)."""

    __slots__ = ("_request", "_timeout", "_now", "_handle", "writing", "fired")

    def __init__(self, request: Request, timeout: float, now: Callable[[], float]) -> None:
        self._request = request
        self._timeout = timeout
        self._now = now
        self.writing = 0.0
        self.fired = False
        self._handle = asyncio.get_running_loop().call_later(timeout, self._check)

    def _check(self) -> None:
        waited = self._now() - self.writing if self.writing else 0.0
        if waited >= self._timeout:
            self.fired = True
            transport = self._request.transport
            if transport is not None:
                reset_connection(transport)
            return
        self._handle = asyncio.get_running_loop().call_later(self._timeout - waited, self._check)

    def cancel(self) -> None:
        self._handle.cancel()
