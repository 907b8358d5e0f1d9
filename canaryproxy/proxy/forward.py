"""Forwarding one request: refuse, route, read the body, exchange, relay, record the outcome.

The order of events and why:

1. Refuse what must never reach an upstream (admission.py: faulty framing, a bad Host or version,
   an oversized declared body; a request while draining) before opening any upstream connection:
   the upstream receives no bytes. `OPTIONS *` is answered here; an absolute-form target is sent
   as its path, with its authority as the host. (What only the raw bytes show: wire.py, engine/.)
2. Route (sticky split or override header, routing.py) and build the upstream headers (headers.py).
3. Read the request body (body.py), after a `100 Continue` when the client asked for one:
   buffered when small (chunked ones too, read ahead), so an LLM request can be inspected and
   a request refused at connect can be sent again; streamed with a byte count and a deadline
   otherwise.
4. Send it on the role's exchange (exchange.py): its own keep-alive pool, its deadlines, the one
   retry, every failure an `UpstreamError(kind)`, answered here with 502 or 504.
5. Relay the response (relay.py) through the inspector chosen for it.
6. When the request ends, however it ends: apply the inspection and decide truncation (once),
   then hand exactly one `Outcome` to the sink.

Client disconnects arrive as task cancellation (the engine cancels the handler's task when the
connection is lost); the relay then closes the upstream connection instead of pooling it, so the
model server stops generating.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from canaryproxy.core.types import LIVE_ROLES, ErrorKind, Outcome, OutcomeSink, Role
from canaryproxy.errors import UpstreamError
from canaryproxy.inspection import (
    Inspection,
    InspectionSettings,
    Inspector,
    RequestFacts,
    api_for_path,
    apply,
    inspector_for,
    read_request,
)
from canaryproxy.proxy.accesslog import AccessLog
from canaryproxy.proxy import admission
from canaryproxy.proxy.admission import Refused, Target
from canaryproxy.proxy.attribution import FeedbackHook, acceptable_request_id, new_request_id
from canaryproxy.proxy.body import (
    BodyTooLarge,
    ClientBodyTimeout,
    MalformedBody,
    StreamedBody,
    read_small_body,
    send_continue,
)
from canaryproxy.proxy.exchange import Body, Deadlines, Exchange, UpstreamResponse
from canaryproxy.proxy.http import Request, Response, StreamResponse
from canaryproxy.proxy.headers import (
    ACCEPT_ENCODING,
    CONTENT_LENGTH,
    X_REQUEST_ID,
    TrustedProxies,
    downstream_response_headers,
    upstream_request_headers,
)
from canaryproxy.proxy.recording import StepRecorder
from canaryproxy.proxy.relay import Relay
from canaryproxy.proxy.responses import cut_short, error_response, upstream_failure
from canaryproxy.proxy.routing import Router
from canaryproxy.proxy.shadow import ShadowCall, ShadowSender, streams

log = logging.getLogger("canaryproxy.proxy")


# What `OPTIONS *` answers: the methods the proxy forwards (any method reaches the upstream).
_ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


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
    upstream_keepalive: float = 4.0  # below the upstreams' idle timeout (uvicorn: 5 s)
    served_by_header: str | None = "x-canary-version"
    access_log: bool = True
    # Ask LLM upstreams for uncompressed responses on inspected paths, so they can be read.
    identity_encoding: bool = True


class Forwarder:
    """The data-plane request handler. One per proxy; one exchange (keep-alive pool) per role."""

    def __init__(
        self,
        settings: ProxySettings,
        router: Router,
        trusted: TrustedProxies,
        sink: OutcomeSink,
        inspection: InspectionSettings | None = None,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        feedback: FeedbackHook | None = None,
        shadow: ShadowSender | None = None,
    ) -> None:
        """`now` is the monotonic clock durations are measured on; `wall` gives `routed_at`.
        `feedback`: the endpoint answering its path and stamping every response (None: off).
        `shadow`: sends the copies of the requests a shadow stage samples (None: never)."""
        self.settings = settings
        self.router = router
        self.trusted = trusted
        self.inspection = inspection  # None: no inspection
        self.feedback = feedback
        self.shadow = shadow
        self.access_log = AccessLog() if settings.access_log else None
        self._recorder = StepRecorder(sink, self.access_log)
        self._now = now
        self._wall = wall  # wall-clock seconds: when a request was routed, as other hosts read it
        deadlines = Deadlines(settings.connect_timeout, settings.first_byte_timeout, settings.idle_timeout)
        self.exchanges = {
            role: Exchange(
                role, settings.upstreams[role], deadlines,
                connections=settings.upstream_connections, keepalive=settings.upstream_keepalive,
            )
            for role in LIVE_ROLES
        }
        self._relay = Relay(settings.client_write_timeout, now)
        self.draining = False
        self.in_flight = 0
        self._drained: asyncio.Event | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for exchange in self.exchanges.values():
            await exchange.start()
        if self.shadow is not None:
            await self.shadow.start()

    async def close(self) -> None:
        self._recorder.flush()
        if self.access_log is not None:
            self.access_log.flush()
        if self.shadow is not None:
            await self.shadow.close()
        for exchange in self.exchanges.values():
            await exchange.close()

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

    async def __call__(self, request: Request) -> StreamResponse:
        started = self._now()
        request_id = request.headers.get(X_REQUEST_ID)
        if not acceptable_request_id(request_id):
            request_id = new_request_id()
        content_length = request.content_length
        target = self._admit(request, request_id, content_length)
        if isinstance(target, Response):
            return target
        feedback = self.feedback
        if feedback is not None and request.path == feedback.path:
            return await feedback.handle(request, request_id)  # answered here, never forwarded

        route = self.router.route(request)
        outcome = Outcome(
            route.role,
            started,
            weight=route.weight,
            key_hash=route.key_hash,
            request_id=request_id,
            method=request.method,
            routed_at=self._wall(),
        )
        path = request.path
        api = api_for_path(path) if self.inspection is not None else ""
        # Made at routing, so that it is at hand however the request ends; filled by the inspector.
        inspection = Inspection() if api else None
        shadow = self.shadow.call(outcome, api) if route.shadow and self.shadow is not None else None
        self.in_flight += 1
        try:
            return await self._forward(request, outcome, content_length, api, inspection, target, shadow)
        except asyncio.CancelledError:
            if outcome.error is None:
                outcome.error = ErrorKind.SHUTDOWN if self.draining else ErrorKind.CLIENT_DISCONNECT
            if self.draining and request.transport is not None:
                # Shutdown ends the rest as detectable truncations, never as clean-looking ends.
                request.transport.abort()
            raise
        finally:
            self.in_flight -= 1
            outcome.latency = self._now() - started
            apply(outcome, inspection, cut_short(outcome))
            self._finish(outcome, path)
            if shadow is not None:
                shadow.stable_done(inspection)
            if self._drained is not None and self.in_flight == 0:
                self._drained.set()

    def _admit(
        self, request: Request, request_id: str, content_length: int | None
    ) -> Response | Target | None:
        """The answer to a request that must not reach an upstream (or that the proxy answers
        itself), else where it goes (None: where it says, the usual case); see admission.py."""
        if self.draining:
            return error_response(
                503, "draining", "canaryproxy is shutting down; retry on another replica",
                request_id=request_id, retry_after=1, close=True,
            )
        verdict = admission.check(
            request.method, request.raw_path, request.version, request.headers, content_length,
            self.settings.max_request_body,
        )
        if verdict is None or type(verdict) is Target and verdict.path != "*":
            return verdict
        if isinstance(verdict, Refused):
            return error_response(verdict.status, verdict.code, verdict.message, request_id=request_id, close=True)
        # OPTIONS *: a question about the server, not a resource. The proxy is the server the
        # client sees, and routing it by the split would answer for one version at random.
        return Response(status=200, headers={"Allow": _ALLOW, X_REQUEST_ID: request_id})

    async def _forward(
        self,
        request: Request,
        outcome: Outcome,
        content_length: int | None,
        api: str,
        inspection: Inspection | None,
        target: Target | None,
        shadow: ShadowCall | None,
    ) -> StreamResponse:
        settings = self.settings
        streamed: StreamedBody | None = None
        try:
            read = await self._read_body(request, outcome, content_length, api)
            if isinstance(read, Response):
                return read
            body, facts, streamed = read
            up_headers = upstream_request_headers(
                request.headers,
                peer=request.remote,
                scheme=request.scheme,
                trusted=self.trusted.trusts(request.remote),
                request_id=outcome.request_id,
                host=target.host if target is not None else None,
            )
            if isinstance(body, bytes):
                # aiohttp sets the length of a bytes body itself (it may have been rewritten).
                up_headers.popall(CONTENT_LENGTH, None)
            if facts is not None and settings.identity_encoding:
                up_headers[ACCEPT_ENCODING] = "identity"

            exchange = self.exchanges[outcome.role]
            path = target.path if target is not None else request.raw_path
            if shadow is not None:
                shadow.sent_at = self._now()  # both sides of a pair are timed from their send
            try:
                upstream = await exchange.send(request.method, path, up_headers, body)
            except UpstreamError as error:
                # A streamed body that failed on the client's side may surface as an upstream error.
                if streamed is None or streamed.error is None:
                    if shadow is not None:
                        shadow.prepare(request.method, path, up_headers, body, facts, now=False)
                    return upstream_failure(outcome, error, self.settings.served_by_header)
            except (BodyTooLarge, ClientBodyTimeout, MalformedBody):
                pass  # reported by `streamed` below
            else:
                if streamed is None or streamed.error is None:
                    if shadow is not None:  # only now: on this loop the user's answer goes first
                        shadow.prepare(request.method, path, up_headers, body, facts, now=streams(upstream))
                    return await self._respond(request, outcome, upstream, facts, inspection, shadow is not None)
                upstream.close()
            assert streamed is not None  # only a streamed body fails while it is being sent
            return self._body_failure(outcome, streamed)
        finally:
            if streamed is not None:
                streamed.close()

    async def _read_body(
        self, request: Request, outcome: Outcome, content_length: int | None, api: str
    ) -> tuple[Body, RequestFacts | None, StreamedBody | None] | Response:
        """The body to send: None, bytes (small, or a chunked body that ended within the
        buffering limit) or a stream; or the answer when the client's body failed first."""
        if not request.body_exists:
            return None, None, None
        settings = self.settings
        if "Expect" in request.headers and not request.content.is_eof():
            await send_continue(request)
        if content_length is not None and content_length <= settings.buffer_request_body:
            try:
                body = await read_small_body(request, settings.client_body_timeout)
            except ClientBodyTimeout:
                outcome.error = ErrorKind.CLIENT_BODY_TIMEOUT
                return self._client_body_timeout(outcome)
            outcome.bytes_in = len(body)
            if api and self.inspection is not None:
                body, facts = read_request(request.path, body, self.inspection, api)
                return body, facts, None
            return body, None, None
        streamed = StreamedBody(request, settings.max_request_body, settings.client_body_timeout)
        if content_length is None:
            # Chunked: read ahead, so a body that is refused early never reaches an upstream.
            try:
                whole = await streamed.buffer(settings.buffer_request_body)
            except (BodyTooLarge, ClientBodyTimeout, MalformedBody):
                streamed.close()
                return self._body_failure(outcome, streamed)
            if whole is not None:
                outcome.bytes_in = len(whole)
                return whole, None, None
        return streamed.chunks(), None, streamed

    def _respond(
        self,
        request: Request,
        outcome: Outcome,
        upstream: UpstreamResponse,
        facts: RequestFacts | None,
        inspection: Inspection | None,
        share_text: bool = False,
    ) -> Coroutine[Any, Any, StreamResponse]:
        """The response head is here: record it, choose the inspector; the relay, to be awaited
        (returned, not awaited here: one coroutine less for every chunk's wait to pass through)."""
        outcome.ttfb = self._now() - outcome.started
        outcome.status = upstream.status
        headers = downstream_response_headers(upstream.headers)
        served_by = self.settings.served_by_header
        if served_by:
            headers[served_by] = outcome.role.value
        if X_REQUEST_ID not in headers:
            headers[X_REQUEST_ID] = outcome.request_id
        if self.feedback is not None:
            self.feedback.stamp(outcome, headers, request.headers)
        inspector: Inspector | None = None
        if facts is not None and inspection is not None and self.inspection is not None:
            try:
                inspector = inspector_for(
                    facts, upstream.status, upstream.headers.get("Content-Type", ""),
                    upstream.headers, inspection, self.inspection,
                    role=outcome.role, started=outcome.started, now=self._now, share_text=share_text,
                )
                if facts.usage_injected:
                    # The inspector removes the usage chunk the client did not ask for.
                    headers.popall(CONTENT_LENGTH, None)
            except Exception:  # an inspector must never break a response
                log.exception("inspector setup failed; forwarding without inspection")
                inspection.inspect_error = True
                inspector = None
        return self._relay(request, upstream, headers, inspector, inspection, outcome)

    def _body_failure(self, outcome: Outcome, streamed: StreamedBody) -> Response:
        """The client's streamed body was too large, too slow or malformed."""
        outcome.bytes_in = streamed.bytes
        outcome.error = streamed.error
        if streamed.malformed:
            outcome.status = 400
            return self._client_error(outcome, 400, "bad_chunked_body",
                                      "the chunked request body is malformed")
        if streamed.error is ErrorKind.BODY_TOO_LARGE:
            return self._client_error(outcome, 413, "body_too_large", "request body is over the "
                                      f"limit of {self.settings.max_request_body} bytes")
        return self._client_body_timeout(outcome)

    def _client_body_timeout(self, outcome: Outcome) -> Response:
        outcome.status = 408
        return self._client_error(outcome, 408, "client_body_timeout", "the request body did not "
                                  f"arrive within {self.settings.client_body_timeout:g}s")

    def _client_error(self, outcome: Outcome, status: int, code: str, message: str) -> Response:
        return error_response(status, code, message, role=outcome.role, close=True,
                              served_by_header=self.settings.served_by_header,
                              request_id=outcome.request_id)

    def _finish(self, outcome: Outcome, path: str) -> None:
        self._recorder.record(outcome, path)
