"""Forwarding one request: route, stream the body up, stream the response down, record the outcome.

The order of events and why:

1. Refuse what must never reach an upstream (faulty framing, an oversized declared body, a request
   while draining) before opening any upstream connection: the upstream receives no bytes.
2. Route (sticky split or override header) and build the upstream headers (headers.py).
3. Read the request body: small bodies with a known length are buffered (so an LLM request can be
   inspected, and a request refused at connect can be retried once); larger or chunked bodies are
   streamed chunk by chunk with a byte count (413) and a deadline (408).
4. Send upstream on the role's own keep-alive pool. No total timeout (streams last minutes); a
   connect timeout, a first-byte deadline (prefill can be slow), then an idle deadline between
   chunks.
5. Stream the response down chunk by chunk as it arrives (`readany`), through the inspector.
   `await write()` gives backpressure; a guard aborts a client that stops reading.
6. Anything that goes wrong after the response started aborts the client connection: a truncated
   stream must never look like a clean end.
7. Exactly one `Outcome` per request goes to the sink, whatever happened.

Client disconnects arrive as task cancellation (`handler_cancellation=True`); the upstream
response is then closed, not returned to the pool, so the model server stops generating.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Mapping

import aiohttp
from aiohttp import web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict
from yarl import URL

from canaryproxy.core.types import Role, ErrorKind, Outcome, OutcomeSink
from canaryproxy.proxy.accesslog import AccessLog
from canaryproxy.proxy.headers import (
    ACCEPT_ENCODING,
    CONTENT_LENGTH,
    X_REQUEST_ID,
    TrustedProxies,
    downstream_response_headers,
    upstream_request_headers,
)
from canaryproxy.proxy.responses import error_response
from canaryproxy.proxy.routing import Router

log = logging.getLogger("canaryproxy.proxy")

_random_bits = random.Random().getrandbits

# Writes that may block on a slow reader only happen past aiohttp's 64 KiB write buffer, so the
# client-write guard is armed only for responses larger than that.
_WRITE_GUARD_AFTER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ProxySettings:
    upstreams: Mapping[Role, str]  # base URLs without trailing slash
    connect_timeout: float = 5.0
    first_byte_timeout: float = 300.0
    idle_timeout: float = 60.0
    client_body_timeout: float = 30.0
    client_write_timeout: float = 60.0
    max_request_body: int = 32 * 1024**2
    buffer_request_body: int = 1024**2  # bodies up to this size (and with a length) are buffered
    upstream_connections: int = 1000
    upstream_keepalive: float = 60.0
    served_by_header: str | None = "x-canary-version"
    access_log: bool = True
    # Ask LLM upstreams for uncompressed responses on inspected paths, so they can be read.
    identity_encoding: bool = True


class _ClientBodyTimeout(Exception):
    """Set on the request stream when the body did not arrive within timeouts.client_body."""


class _BodyTooLarge(Exception):
    pass


class _BodyState:
    """What happened while streaming a request body up (read by the handler after a failure)."""

    __slots__ = ("error", "bytes")

    def __init__(self) -> None:
        self.error: ErrorKind | None = None
        self.bytes = 0


def new_request_id() -> str:
    # Unique, not secret: a Mersenne Twister draw costs no system call (os.urandom costs ~5 µs).
    return f"{_random_bits(128):032x}"


def _acceptable_request_id(value: str | None) -> bool:
    # Echoed into logs and upstream headers: keep it short and printable.
    return bool(value) and len(value) <= 128 and value.isascii() and value.isprintable() and " " not in value


class Forwarder:
    """The data-plane request handler. One per proxy; one keep-alive pool per role."""

    def __init__(
        self,
        settings: ProxySettings,
        router: Router,
        trusted: TrustedProxies,
        sink: OutcomeSink,
        inspection: Any | None = None,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.router = router
        self.trusted = trusted
        self.sink = sink
        self.inspection = inspection  # canaryproxy.inspection settings, or None for no inspection
        self.access_log = AccessLog() if settings.access_log else None
        self._now = now
        self._wall = wall  # wall-clock seconds: when a request was routed, as other hosts read it
        self._upstream_base = {role: url.rstrip("/") for role, url in settings.upstreams.items()}
        self._sessions: dict[Role, aiohttp.ClientSession] = {}
        self.draining = False
        self.in_flight = 0
        self._drained: asyncio.Event | None = None
        if inspection is not None:
            from canaryproxy import inspection as inspect_module

            self._inspect = inspect_module
        else:
            self._inspect = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        for role in (Role.STABLE, Role.CANARY):
            connector = aiohttp.TCPConnector(
                limit=s.upstream_connections,
                limit_per_host=0,
                keepalive_timeout=s.upstream_keepalive,
                ttl_dns_cache=10,
            )
            self._sessions[role] = aiohttp.ClientSession(
                connector=connector,
                # A proxy passes bytes through untouched and adds nothing behind the user's back.
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                # The default jar would replay one user's upstream cookies to every other user.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=s.connect_timeout,
                    sock_connect=s.connect_timeout,
                    sock_read=s.first_byte_timeout,
                ),
            )

    async def close(self) -> None:
        if self.access_log is not None:
            self.access_log.flush()
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    def begin_drain(self) -> None:
        self.draining = True
        self._drained = asyncio.Event()
        if self.in_flight == 0:
            self._drained.set()

    async def wait_drained(self, timeout: float) -> bool:
        """Wait until no request is in flight, up to `timeout` seconds. True when drained."""
        assert self._drained is not None, "begin_drain() first"
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # --- the handler ---------------------------------------------------------------------------

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = self._now()
        headers = request.headers
        request_id = headers.get(X_REQUEST_ID)
        if not _acceptable_request_id(request_id):
            request_id = new_request_id()

        if self.draining:
            return error_response(
                503, "draining", "canaryproxy is shutting down; retry on another replica",
                request_id=request_id, retry_after=1, close=True,
            )
        refusal = self._refuse_framing(request, request_id)
        if refusal is not None:
            return refusal

        role, hash64 = self.router.route(request)
        outcome = Outcome(
            role,
            started,
            weight=self.router.splitter.weight,
            key_hash=hash64,
            request_id=request_id,
            method=request.method,
            routed_at=self._wall(),
        )
        self.in_flight += 1
        try:
            return await self._forward(request, outcome)
        except asyncio.CancelledError:
            if outcome.error is None:
                outcome.error = ErrorKind.SHUTDOWN if self.draining else ErrorKind.CLIENT_DISCONNECT
            if outcome.status:
                outcome.truncated = outcome.truncated or self.draining
            if self.draining and request.transport is not None:
                # Shutdown ends the rest as detectable truncations, never as clean-looking ends.
                request.transport.abort()
            raise
        finally:
            self.in_flight -= 1
            outcome.latency = self._now() - started
            self._finish(outcome, request.path)
            if self._drained is not None and self.in_flight == 0:
                self._drained.set()

    def _refuse_framing(self, request: web.BaseRequest, request_id: str) -> web.Response | None:
        headers = request.headers
        has_te = "Transfer-Encoding" in headers
        if has_te and request.version < HttpVersion11:
            # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
            return error_response(
                400, "bad_framing", "Transfer-Encoding is not allowed on an HTTP/1.0 request",
                request_id=request_id, close=True,
            )
        content_length = request.content_length
        if "Upgrade" in headers and (has_te or (content_length or 0) > 0):
            return error_response(
                400, "bad_framing", "an Upgrade request must not carry a body",
                request_id=request_id, close=True,
            )
        if content_length is not None and content_length > self.settings.max_request_body:
            return error_response(
                413, "body_too_large",
                f"request body of {content_length} bytes is over the limit of "
                f"{self.settings.max_request_body} bytes",
                request_id=request_id, close=True,
            )
        if not request.raw_path.startswith("/"):
            return error_response(
                400, "bad_request_target",
                "only origin-form request targets (/path?query) are forwarded",
                request_id=request_id, close=True,
            )
        return None

    async def _forward(self, request: web.BaseRequest, outcome: Outcome) -> web.StreamResponse:
        settings = self.settings
        role = outcome.role
        body_state = _BodyState()
        body: bytes | AsyncIterator[bytes] | None
        facts = None

        # 3. The request body.
        if not request.body_exists:
            body = None
        elif request.content_length is not None and request.content_length <= settings.buffer_request_body:
            try:
                body = await self._read_small_body(request)
            except _ClientBodyTimeout:
                outcome.error = ErrorKind.CLIENT_BODY_TIMEOUT
                return self._client_body_timeout(request, outcome)
            outcome.bytes_in = len(body)
            if self._inspect is not None:
                api = self._inspect.api_for_path(request.path)
                if api:
                    body, facts = self._inspect.read_request(request.path, body, self.inspection)
        else:
            body = self._stream_body(request, body_state)

        up_headers = upstream_request_headers(
            request.headers,
            peer=request.remote,
            scheme=request.scheme,
            trusted=self.trusted.trusts(request.remote),
            request_id=outcome.request_id,
        )
        if isinstance(body, bytes):
            # aiohttp sets the length of a bytes body itself (it may have been rewritten).
            up_headers.popall(CONTENT_LENGTH, None)
        if facts is not None and settings.identity_encoding:
            up_headers[ACCEPT_ENCODING] = "identity"

        # 4. Upstream.
        url = URL(self._upstream_base[role] + request.raw_path, encoded=True)
        session = self._sessions[role]
        try:
            upstream = await self._send(session, request.method, url, up_headers, body)
        except (_BodyTooLarge, _ClientBodyTimeout):
            pass  # reported through body_state below
        except aiohttp.ClientError as exc:
            if body_state.error is None:
                return self._upstream_failure(request, outcome, exc)
        except asyncio.TimeoutError as exc:
            if body_state.error is None:
                return self._upstream_failure(request, outcome, exc)
        else:
            if body_state.error is None:
                return await self._relay(request, outcome, upstream, facts)
            upstream.close()
        outcome.bytes_in = body_state.bytes
        outcome.error = body_state.error
        if body_state.error is ErrorKind.BODY_TOO_LARGE:
            return error_response(
                413, "body_too_large",
                f"request body is over the limit of {settings.max_request_body} bytes",
                role=role, served_by_header=settings.served_by_header,
                request_id=outcome.request_id, close=True,
            )
        return self._client_body_timeout(request, outcome)

    async def _read_small_body(self, request: web.BaseRequest) -> bytes:
        content = request.content
        if content.is_eof():
            # The common case: a small JSON body that arrived with the headers. No timer needed.
            return await content.read()
        loop = asyncio.get_running_loop()
        timer = loop.call_later(
            self.settings.client_body_timeout, content.set_exception, _ClientBodyTimeout()
        )
        try:
            return await content.read()
        finally:
            timer.cancel()

    async def _stream_body(self, request: web.BaseRequest, state: _BodyState) -> AsyncIterator[bytes]:
        """Yield the request body chunk by chunk, counting bytes against the limit."""
        content = request.content
        limit = self.settings.max_request_body
        loop = asyncio.get_running_loop()
        timer = loop.call_later(
            self.settings.client_body_timeout, content.set_exception, _ClientBodyTimeout()
        )
        try:
            while True:
                try:
                    chunk = await content.readany()
                except _ClientBodyTimeout:
                    state.error = ErrorKind.CLIENT_BODY_TIMEOUT
                    raise
                if not chunk:
                    return
                state.bytes += len(chunk)
                if state.bytes > limit:
                    state.error = ErrorKind.BODY_TOO_LARGE
                    raise _BodyTooLarge()
                yield chunk
        finally:
            timer.cancel()

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        try:
            return await session.request(
                method, url, headers=headers, data=body, allow_redirects=False, compress=None
            )
        except aiohttp.ClientConnectorError:
            # Refused at connect: no byte reached the upstream, so one retry on the same role is
            # safe. A streamed body may have been consumed, so it is never retried.
            if not (body is None or isinstance(body, bytes)):
                raise
            return await session.request(
                method, url, headers=headers, data=body, allow_redirects=False, compress=None
            )

    async def _relay(
        self,
        request: web.BaseRequest,
        outcome: Outcome,
        upstream: aiohttp.ClientResponse,
        facts: Any,
    ) -> web.StreamResponse:
        """Stream the upstream response down to the client."""
        settings = self.settings
        now = self._now
        outcome.ttfb = now() - outcome.started
        outcome.status = upstream.status
        headers = downstream_response_headers(upstream.headers)
        if settings.served_by_header:
            headers[settings.served_by_header] = outcome.role.value
        if X_REQUEST_ID not in headers:
            headers[X_REQUEST_ID] = outcome.request_id

        inspector = None
        if facts is not None:
            try:
                inspector = self._inspect.inspector_for(
                    facts, upstream.status, upstream.headers.get("Content-Type", ""),
                    upstream.headers, outcome, self.inspection, now,
                )
                if facts.usage_injected:
                    # The inspector removes the usage chunk the client did not ask for.
                    headers.popall(CONTENT_LENGTH, None)
            except Exception:  # an inspector must never break a response
                log.exception("inspector setup failed; forwarding without inspection")
                outcome.inspect_error = True
                inspector = None

        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        try:
            await response.prepare(request)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            upstream.close()
            outcome.error = ErrorKind.CLIENT_DISCONNECT
            return response

        content = upstream.content
        first = True
        guard: _WriteGuard | None = None
        try:
            while True:
                try:
                    chunk = await content.readany()
                except asyncio.TimeoutError:
                    outcome.error = ErrorKind.FIRST_BYTE_TIMEOUT if first else ErrorKind.IDLE_TIMEOUT
                    return self._abort_mid_response(request, response, upstream, outcome, inspector)
                except aiohttp.ClientError:  # ClientPayloadError among them: a body cut short
                    outcome.error = ErrorKind.RESET
                    return self._abort_mid_response(request, response, upstream, outcome, inspector)
                if not chunk:
                    break
                if first:
                    first = False
                    if not content.is_eof():
                        # The first byte arrived: from now on the gaps between chunks are bounded
                        # by the idle timeout instead of the (long) first-byte one.
                        self._switch_to_idle_timeout(upstream)
                if inspector is not None:
                    try:
                        chunk = inspector.feed(chunk)
                    except Exception:
                        log.exception("inspector failed; forwarding the rest uninspected")
                        outcome.inspect_error = True
                        inspector = None
                    if not chunk:
                        continue
                outcome.bytes_out += len(chunk)
                if guard is None:
                    if outcome.bytes_out > _WRITE_GUARD_AFTER_BYTES:
                        guard = _WriteGuard(request, settings.client_write_timeout, now)
                    await response.write(chunk)
                else:
                    guard.writing = now()
                    await response.write(chunk)
                    guard.writing = 0.0
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            upstream.close()
            if guard is not None and guard.fired:
                outcome.error = ErrorKind.CLIENT_WRITE_TIMEOUT
            else:
                outcome.error = ErrorKind.CLIENT_DISCONNECT
            outcome.truncated = False
            return response
        except asyncio.CancelledError:
            upstream.close()
            raise
        finally:
            if guard is not None:
                guard.cancel()

        if inspector is not None:
            try:
                tail = inspector.finish(True)
            except Exception:
                log.exception("inspector failed at the end of a response")
                outcome.inspect_error = True
                tail = b""
            if tail:
                outcome.bytes_out += len(tail)
                await response.write(tail)
        upstream.release()
        await response.write_eof()
        return response

    def _switch_to_idle_timeout(self, upstream: aiohttp.ClientResponse) -> None:
        connection = upstream.connection
        if connection is None or connection.protocol is None:
            return
        protocol = connection.protocol
        protocol.read_timeout = self.settings.idle_timeout
        protocol.start_timeout()

    def _abort_mid_response(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        outcome: Outcome,
        inspector: Any,
    ) -> web.StreamResponse:
        """The upstream failed after the response started: abort the client connection so the
        client sees an error, never a clean-looking end of a truncated stream."""
        if inspector is not None:
            try:
                inspector.finish(False)  # what was read so far still counts; held bytes are dropped
            except Exception:
                log.exception("inspector failed at the end of a broken response")
                outcome.inspect_error = True
        outcome.truncated = True
        upstream.close()
        log.warning(
            "%s upstream failed mid-response (%s) after %d bytes; aborting the client connection "
            "[request_id=%s]",
            outcome.role.value, outcome.error.value if outcome.error else "?", outcome.bytes_out,
            outcome.request_id,
        )
        transport = request.transport
        if transport is not None:
            transport.abort()
        return response

    def _upstream_failure(
        self, request: web.BaseRequest, outcome: Outcome, exc: BaseException
    ) -> web.Response:
        """No response from the upstream: answer 502 or 504 in the OpenAI error shape."""
        role = outcome.role
        base = self._upstream_base[role]
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            status, kind = 504, ErrorKind.CONNECT_TIMEOUT
            message = f"{role.value} upstream {base} did not accept a connection within {self.settings.connect_timeout:g}s"
        elif isinstance(exc, asyncio.TimeoutError):
            status, kind = 504, ErrorKind.FIRST_BYTE_TIMEOUT
            message = f"{role.value} upstream {base} sent no response within {self.settings.first_byte_timeout:g}s"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            status, kind = 502, ErrorKind.CONNECT
            message = f"{role.value} upstream {base} refused or could not be reached: {exc.os_error}"
        elif isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            status, kind = 502, ErrorKind.RESET
            message = f"{role.value} upstream {base} closed the connection without a response"
        else:
            status, kind = 502, ErrorKind.BAD_RESPONSE
            message = f"{role.value} upstream {base} sent an invalid response: {_short(exc)}"
        outcome.status = status
        outcome.error = kind
        log.warning("%s [request_id=%s]", message, outcome.request_id)
        return error_response(
            status, f"upstream_{kind.value}", message, role=role,
            served_by_header=self.settings.served_by_header, request_id=outcome.request_id,
        )

    def _client_body_timeout(self, request: web.BaseRequest, outcome: Outcome) -> web.Response:
        outcome.status = 408
        return error_response(
            408, "client_body_timeout",
            f"the request body did not arrive within {self.settings.client_body_timeout:g}s",
            role=outcome.role, served_by_header=self.settings.served_by_header,
            request_id=outcome.request_id, close=True,
        )

    def _finish(self, outcome: Outcome, path: str) -> None:
        try:
            self.sink.record(outcome)
        except Exception:  # a sink must never take a request down with it
            log.exception("outcome sink failed")
        if self.access_log is not None:
            self.access_log.record(outcome, path)


class _WriteGuard:
    """Aborts a client that stops reading: one timer per large response, no per-write cost but a
    clock read. `writing` is when the pending write started (0 when none is pending)."""

    __slots__ = ("_request", "_timeout", "_now", "_handle", "writing", "fired")

    def __init__(self, request: web.BaseRequest, timeout: float, now: Callable[[], float]) -> None:
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
                transport.abort()
            return
        self._handle = asyncio.get_running_loop().call_later(self._timeout - waited, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
