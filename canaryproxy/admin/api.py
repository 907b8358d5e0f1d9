"""The admin listener: health, Prometheus metrics, the admin API and the dashboard.

Every request, read or mutation, must name this listener in its Host header, and in its Origin
header when it has one (hosts.py: the defence against DNS rebinding); otherwise 421 or 403 and
nothing else happens. Reads are open (on a listener that is loopback-only unless a token is set). Every mutation is a
POST with a JSON body and, when `admin.token` is set, `Authorization: Bearer <token>` (compared in
constant time). Every mutation, accepted or refused, is written to the audit log: who (the
`actor` the caller names, e.g. the CLI sends $USER), from where, the state before and after, the
reason, and the outcome. A bad request gets a 4xx with a precise message and changes nothing.

The dashboard (`GET /`) is one static page that reads this API like any other client: it polls
/admin/status, /admin/decisions and /admin/series, and POSTs the operator's commands with the
token typed into it. Its Content-Security-Policy allows only its own inline script and style
(by hash) and requests to this origin, so a reason string that slipped past its escaping still
could not run or send anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from canaryproxy.clock import Clock
from canaryproxy.admin.hosts import ListenerNames, Refusal
from canaryproxy.admin.views import SERIES_METRICS, SERIES_POINTS, SERIES_SPAN, status_document, weight_history
from canaryproxy.control.controller import Controller
from canaryproxy.core.splitter import check_weight
from canaryproxy.core.stages import Op
from canaryproxy.core.types import LIVE_ROLES, Role
from canaryproxy.core.units import parse_duration
from canaryproxy.core.units import whole_buckets
from canaryproxy.core.window import Windows
from canaryproxy.errors import CommandRejected

audit_logger = logging.getLogger("canaryproxy.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- request bodies ---------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    actor: str = Field(default="", max_length=200)
    reason: str = Field(default="", max_length=1000)


class PromoteBody(_Body):
    to_end: bool = False


class WeightBody(_Body):
    weight: float = Field(ge=0, le=100)

    _one_bucket_resolution = field_validator("weight")(check_weight)


class RollbackBody(_Body):
    pass


BODIES: dict[str, type[_Body]] = {
    "start": _Body, "pause": _Body, "resume": _Body, "promote": PromoteBody,
    "rollback": RollbackBody, "weight": WeightBody,
}


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "admin_error", "code": code}},
                             status=status, headers=headers or None)


def _named_host(request: web.Request) -> str | None:
    """The authority the request names: an absolute-form target's, which RFC 9112 §3.2.2 says
    replaces the Host header, else the Host header (None only from an HTTP/1.0 client; aiohttp
    refuses an HTTP/1.1 request without one, or with two)."""
    target = request._message.url  # aiohttp keeps the request target only on the raw message
    if target.is_absolute():
        return target.raw_authority
    return request.headers.get("Host")


def _local_address(request: web.Request) -> tuple[str, int]:
    """The address and port the connection arrived on: the listener's own, even when it was
    configured with port 0."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if not sockname:
        return ("", 0)  # the client has gone: no name matches, the request is refused
    return str(sockname[0]), int(sockname[1])


def _duration_query(request: web.Request, name: str, default: float) -> float:
    if name not in request.query:
        return default
    try:
        return parse_duration(request.query[name])
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def dashboard_page() -> tuple[bytes, str]:
    """The dashboard's HTML and the Content-Security-Policy that lets only its own inline script
    and style run."""
    page = resources.files("canaryproxy.admin").joinpath("static/dashboard.html").read_text("utf-8")
    hashes = {tag: [_csp_hash(body) for body in re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)]
              for tag in ("script", "style")}
    policy = "; ".join((
        "default-src 'none'",
        f"script-src {' '.join(hashes['script'])}",
        f"style-src {' '.join(hashes['style'])}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))
    return page.encode(), policy


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


class AuditLog:
    """Append-only JSON lines: one per mutation attempt."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        # Where entries are also sent, when several processes share the audit log.
        self.publish: Callable[[dict[str, Any]], None] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True)
        audit_logger.info(line)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:  # O_APPEND: concurrent writers never interleave
                f.write(line + "\n")
        if self.publish is not None:
            self.publish(entry)


class AdminAPI:
    def __init__(
        self,
        controller: Controller | None,
        registry: CollectorRegistry,
        is_ready: Callable[[], bool],
        get_weight: Callable[[], float],
        set_weight: Callable[[float], None],
        token: str | None,
        audit: AuditLog,
        windows: Windows,
        clock: Clock,
        names: ListenerNames,
    ) -> None:
        self.names = names
        self.controller = controller
        self.windows = windows
        self.clock = clock
        self.registry = registry
        self.is_ready = is_ready
        self.get_weight = get_weight
        self.set_weight = set_weight
        self._token = token.encode() if token else None
        self.audit = audit
        self._dashboard, self._dashboard_policy = dashboard_page()

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.get("/", self.dashboard),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/admin/status", self.status),
            web.get("/admin/decisions", self.decisions),
            web.get("/admin/series", self.series),
            web.get("/admin/openapi.json", self.openapi),
        ]
        for name in BODIES:
            routes.append(web.post(f"/admin/{name}", self._mutation(name)))
        return routes

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[self._only_own_names])
        app.add_routes(self.routes())
        return app

    @web.middleware
    async def _only_own_names(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            self.names.check(_named_host(request), request.headers.get("Origin"), _local_address(request))
        except Refusal as refusal:
            response = _error(refusal.status, refusal.code, refusal.message)
            name = request.path.removeprefix("/admin/")
            if request.method == "POST" and name in BODIES:  # a refused mutation is still audited
                self._record(self._audit_entry(request, name), response, "")
            return response
        return await handler(request)

    # --- reads ---------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        # Liveness: the event loop answers. Never depends on upstreams (a restart would not help).
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.is_ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "draining"}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.Request) -> web.Response:
        window = 60.0
        if "window" in request.query:
            try:
                window = parse_duration(request.query["window"])
            except ValueError as exc:
                return _error(400, "bad_window", f"window: {exc}")
            if window <= 0:
                return _error(400, "bad_window", "window: must be > 0")
        if self.controller is None:
            return web.json_response({"phase": "static", "weight": self.get_weight(),
                                      "explain": "no rollout configured: a fixed split"})
        return web.json_response(status_document(self.controller, window))

    async def decisions(self, request: web.Request) -> web.Response:
        limit = 100
        if "limit" in request.query:
            try:
                limit = int(request.query["limit"])
                if not 1 <= limit <= 10_000:
                    raise ValueError
            except ValueError:
                return _error(400, "bad_limit", "limit: an integer from 1 to 10000")
        records = self.controller.decisions.recent(limit) if self.controller is not None else []
        return web.json_response({"decisions": records})

    async def series(self, request: web.Request) -> web.Response:
        """Per-version metrics over the last `span` in `step` points, and the weight over it."""
        windows, clock = self.windows, self.clock
        config = windows.config
        try:
            span = _duration_query(request, "span", min(SERIES_SPAN, config.span_seconds))
            default_step = whole_buckets(span / SERIES_POINTS, config.bucket_seconds) * config.bucket_seconds
            step = _duration_query(request, "step", default_step)
            wall = clock.wall()
            series = {role: windows[role].series(span, step, wall, SERIES_METRICS) for role in LIVE_ROLES}
        except ValueError as exc:
            return _error(400, "bad_series", str(exc))
        ends = series[Role.STABLE].ends
        document: dict[str, Any] = {
            "span": len(ends) * series[Role.STABLE].step,
            "step": series[Role.STABLE].step,
            "t": [round(end, 3) for end in ends],
        }
        for role, role_series in series.items():
            document[role.value] = {name: list(values) for name, values in role_series.values.items()}
        decisions = list(self.controller.decisions) if self.controller is not None else []
        document["weight"] = weight_history(decisions, wall - document["span"], wall, self.get_weight())
        return web.json_response(document)

    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(body=self._dashboard, content_type="text/html", charset="utf-8", headers={
            "Content-Security-Policy": self._dashboard_policy,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        })

    async def openapi(self, request: web.Request) -> web.Response:
        from canaryproxy.admin.openapi import spec

        return web.json_response(spec())

    # --- mutations -------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> web.Response | None:
        if self._token is None:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not supplied:
            return _error(401, "unauthorized", "admin mutations need 'Authorization: Bearer <token>'",
                          **{"WWW-Authenticate": 'Bearer realm="canaryproxy"'})
        if not hmac.compare_digest(supplied.strip().encode(), self._token):
            return _error(403, "forbidden", "the admin token is not valid")
        return None

    def _snapshot(self) -> dict[str, Any]:
        if self.controller is None:
            return {"phase": "static", "weight": self.get_weight()}
        s = self.controller.state
        return {"phase": s.phase.value, "stage": s.stage + 1, "weight": s.weight, "generation": s.generation}

    def _mutation(self, name: str) -> Handler:
        body_model = BODIES[name]

        async def handler(request: web.Request) -> web.Response:
            entry = self._audit_entry(request, name)
            response, reason = await self._mutate(request, name, body_model, entry)
            self._record(entry, response, reason)
            return response

        return handler

    def _audit_entry(self, request: web.Request, name: str) -> dict[str, Any]:
        return {"time": time.time(), "action": name, "remote": request.remote,
                "host": request.headers.get("Host"), "origin": request.headers.get("Origin"),
                "actor": request.headers.get("X-Actor"), "before": self._snapshot()}

    def _record(self, entry: dict[str, Any], response: web.Response, reason: str) -> None:
        entry.update(status=response.status, accepted=response.status < 300, reason=reason,
                     after=self._snapshot())
        if response.status >= 300:
            entry["error"] = json.loads(response.body)["error"]["message"]  # type: ignore[arg-type]
        self.audit.write(entry)

    async def _mutate(self, request: web.Request, name: str, body_model: type[_Body],
                      entry: dict[str, Any]) -> tuple[web.Response, str]:
        refusal = self._authorized(request)
        if refusal is not None:
            return refusal, ""
        if request.content_type != "application/json":
            # A form or text/plain POST is what a hostile web page can send from an operator's
            # browser without a preflight; JSON cannot be.
            return _error(415, "unsupported_media_type",
                          "admin mutations take a JSON body with 'Content-Type: application/json'"), ""
        try:
            raw = await request.read()
            data = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, "bad_json", f"the body must be a JSON object: {exc}"), ""
        if not isinstance(data, dict):
            return _error(400, "bad_json", "the body must be a JSON object"), ""
        try:
            body = body_model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            return _error(400, "bad_request", problems), ""
        if body.actor:
            entry["actor"] = body.actor
        actor = entry["actor"] or "unknown"
        if self.controller is None:
            if name != "weight":
                return _error(409, "no_rollout", f"cannot {name}: no rollout is configured "
                              "(add a rollout section to the config); only weight applies"), body.reason
            assert isinstance(body, WeightBody)
            self.set_weight(body.weight)
            return web.json_response(self._snapshot()), body.reason
        op = Op.SET_WEIGHT if name == "weight" else Op(name)
        try:
            await self.controller.command(
                op, actor=actor, reason=body.reason,
                weight=body.weight if isinstance(body, WeightBody) else None,
                to_end=body.to_end if isinstance(body, PromoteBody) else False,
            )
        except CommandRejected as exc:
            return _error(409, "rejected", str(exc)), body.reason
        except ValueError as exc:
            return _error(400, "bad_request", str(exc)), body.reason
        return web.json_response(status_document(self.controller)), body.reason

