"""The admin listener: health, readiness, and (later) the admin API, metrics and dashboard."""

from __future__ import annotations

from typing import Callable

from aiohttp import web


def health_routes(is_ready: Callable[[], bool]) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        # Liveness: the event loop answers. Never depends on upstreams (a restart would not help).
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if is_ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "draining"}, status=503)

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]
