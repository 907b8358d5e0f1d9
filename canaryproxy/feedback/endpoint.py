"""The feedback endpoint on the data-plane listener, and the token stamped on every response.

`stamp` runs for every proxied response (forward.py calls it when the upstream's head arrives):
it signs the attribution into the token header, remembers the request id, and names both headers
in `Access-Control-Expose-Headers` for a listed browser origin. `handle` answers
`POST {path}`; the proxy answers it itself, it is never forwarded. The checks, cheapest first,
each refusal counted by its reason and nothing else counted:

    429 rate limited (per client address) · 405 not POST (OPTIONS is the CORS preflight)
    415 not application/json · 413 body over max_body, comment over max_comment
    400 malformed JSON, missing/unknown fields, undeclared name, value of the wrong type or range
    403 a token these keys did not sign · 404 an unknown request id · 410 older than max_age
    503 the shared claims (Redis) cannot be reached, or the feedback could not be queued

then the claim on (request id, name) — a repeat is 202 `duplicate`, counted once — and the
`Feedback` goes to `deliver` (the evidence in one process, the shared outcome log with several).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping

from multidict import CIMultiDict

from canaryproxy.core.types import Feedback, Outcome
from canaryproxy.feedback.claims import Claims, ClaimsUnavailable
from canaryproxy.feedback.memory import RateLimiter, RequestIds
from canaryproxy.feedback.names import BadValue
from canaryproxy.feedback.post import Post, Refusal, parse
from canaryproxy.feedback.settings import FeedbackSettings
from canaryproxy.feedback.token import Attribution, BadToken, Signer
from canaryproxy.proxy.attribution import acceptable_request_id
from canaryproxy.proxy.headers import X_REQUEST_ID, TrustedProxies
from canaryproxy.proxy.http import Request, Response, StreamResponse, json_response

log = logging.getLogger("canaryproxy.feedback")

BODY_TIMEOUT = 10.0  # seconds for a feedback body (at most max_body) to arrive
_ALLOW = "POST, OPTIONS"
_EXPOSE = "Access-Control-Expose-Headers"


class FeedbackCounters:
    """What /metrics reports: accepted by (version, name, verdict), refused by reason."""

    __slots__ = ("accepted", "refused", "duplicates")

    def __init__(self) -> None:
        self.accepted: dict[tuple[str, str, str], int] = {}
        self.refused: dict[str, int] = {}
        self.duplicates = 0

    def accept(self, feedback: Feedback) -> None:
        key = (feedback.role.value, feedback.name, "negative" if feedback.negative else "positive")
        self.accepted[key] = self.accepted.get(key, 0) + 1

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


def _undelivered(feedback: Feedback) -> bool:
    return False  # until the wiring says where feedback goes


class FeedbackEndpoint:
    def __init__(self, settings: FeedbackSettings, trusted: TrustedProxies, claims: Claims, *,
                 wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.path = settings.path
        self.header = settings.header
        self.signer = Signer(settings.keys)
        self.request_ids = RequestIds(settings.request_ids) if settings.request_ids else None
        self.limiter = RateLimiter(settings.rate, settings.burst, settings.rate_clients)
        self.claims = claims
        self.trusted = trusted
        self.counters = FeedbackCounters()
        # Where an accepted record goes; False when it could not be taken (a full buffer).
        self.deliver: Callable[[Feedback], bool] = _undelivered
        self._wall = wall
        self._monotonic = monotonic
        self._origins = settings.allow_origins
        self._exposed = f"{settings.header}, {X_REQUEST_ID}"

    # --- every proxied response ------------------------------------------------------------

    def stamp(self, outcome: Outcome, headers: CIMultiDict[str], request_headers: Mapping[str, str]) -> None:
        # The id the client sees: ours, or the upstream's own X-Request-Id when it set one (then
        # that is what a client quotes back).
        request_id = headers.get(X_REQUEST_ID)
        if not acceptable_request_id(request_id):
            request_id = outcome.request_id
        headers[self.header] = self.signer.sign(outcome.role, request_id, outcome.weight, outcome.routed_at,
                                                outcome.key_hash)
        if self.request_ids is not None:
            self.request_ids.remember(request_id, outcome.role, outcome.weight, outcome.routed_at, outcome.key_hash)
        if not self._origins:
            return  # no CORS: the request's Origin is not even looked up
        origin = request_headers.get("Origin")
        if origin is not None and origin in self._origins:
            exposed = headers.get(_EXPOSE)
            headers[_EXPOSE] = f"{exposed}, {self._exposed}" if exposed else self._exposed

    # --- the endpoint ------------------------------------------------------------------------

    async def handle(self, request: Request, request_id: str) -> StreamResponse:
        origin = request.headers.get("Origin")
        try:
            status, document = await self._answer(request)
        except Refusal as refusal:
            self.counters.refuse(refusal.reason)
            response = json_response({"error": refusal.message, "reason": refusal.reason},
                                         status=refusal.status)
            if refusal.status == 405:
                response.headers["Allow"] = _ALLOW
            if refusal.retry_after is not None:
                response.headers["Retry-After"] = str(refusal.retry_after)
        else:
            response = json_response(document, status=status) if document is not None else Response(
                status=status, headers={"Allow": _ALLOW})
        self._cors(response, origin, preflight=request.method == "OPTIONS")
        response.headers[X_REQUEST_ID] = request_id
        return response

    async def _answer(self, request: Request) -> tuple[int, dict[str, str] | None]:
        address = self.trusted.client_address(request.remote, request.headers.get("X-Forwarded-For")) or "?"
        wait = self.limiter.take(address, self._monotonic())
        if wait:
            raise Refusal(429, "rate_limited", f"over {self.settings.rate:g} feedback posts per second "
                          f"from {address}", retry_after=max(1, math.ceil(wait)))
        if request.method == "OPTIONS":
            return 204, None
        if request.method != "POST":
            raise Refusal(405, "method", f"{request.method} is not allowed here: POST the feedback as JSON")
        if request.content_type != "application/json":
            raise Refusal(415, "media_type", f"the body must be application/json, got "
                          f"{request.content_type or 'no Content-Type'}")
        post = parse(await self._body(request), self.settings.max_comment)
        return await self._take(post)

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body
        too_large = Refusal(413, "too_large", f"the body is over the limit of {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                while chunk := await request.content.readany():
                    body += chunk
                    if len(body) > limit:
                        raise too_large
        except TimeoutError:
            raise Refusal(408, "timeout", f"the body did not arrive within {BODY_TIMEOUT:g}s") from None
        return bytes(body)

    async def _take(self, post: Post) -> tuple[int, dict[str, str]]:
        attribution = self._attribution(post)
        age = self._wall() - attribution.routed_at
        if age > self.settings.max_age:
            raise Refusal(410, "expired", f"the response is {age:.0f}s old, past feedback.max_age "
                          f"({self.settings.max_age:g}s): feedback on it is no longer taken")
        declared = self.settings.names.get(post.name)
        if declared is None:
            names = ", ".join(sorted(self.settings.names))
            raise Refusal(400, "invalid", f"undeclared feedback name {post.name[:64]!r}; declared: {names}")
        try:
            value, negative = declared.read(post.value)
        except BadValue as exc:
            raise Refusal(400, "invalid", str(exc)) from None
        try:
            first = await self.claims.claim(attribution.request_id, declared.name,
                                            self.settings.max_age - age, self._monotonic())
        except ClaimsUnavailable as exc:
            log.warning("feedback refused, its duplicates cannot be checked: %s", exc)
            raise Refusal(503, "unavailable", "feedback cannot be checked for duplicates right now "
                          "(the shared store is away); retry later", retry_after=1) from None
        if not first:
            self.counters.duplicates += 1
            return 202, {"status": "duplicate"}
        feedback = Feedback(attribution.role, attribution.request_id, attribution.routed_at, attribution.weight,
                            attribution.key_hash, declared.name, value, negative, self._wall(), declared.kind)
        if not self._deliver(feedback):
            await self.claims.release(attribution.request_id, declared.name)
            raise Refusal(503, "overloaded", "feedback cannot be queued right now; retry later", retry_after=1)
        self.counters.accept(feedback)
        return 202, {"status": "accepted"}

    def _attribution(self, post: Post) -> Attribution:
        if post.token is not None:
            try:
                return self.signer.verify(post.token)
            except BadToken as exc:
                raise Refusal(403, "forged", str(exc)) from None
        assert post.request_id is not None
        if self.request_ids is None:
            raise Refusal(404, "unknown_request", "the request-id route is off (feedback.request_ids."
                          "entries is 0): quote the token from the response header")
        attribution = self.request_ids.get(post.request_id)
        if attribution is None:
            raise Refusal(404, "unknown_request", f"no response with X-Request-Id {post.request_id[:128]!r} "
                          "is remembered here (never served by this replica, or evicted): quote the token")
        return attribution

    def _deliver(self, feedback: Feedback) -> bool:
        try:
            return self.deliver(feedback)
        except Exception:  # a sink must never take the endpoint down
            log.exception("feedback delivery failed")
            return False

    def _cors(self, response: StreamResponse, origin: str | None, preflight: bool) -> None:
        if origin is None or origin not in self._origins:
            return
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"
        if preflight:
            headers["Access-Control-Allow-Methods"] = _ALLOW
            headers["Access-Control-Allow-Headers"] = "Content-Type"
            headers["Access-Control-Max-Age"] = "600"
