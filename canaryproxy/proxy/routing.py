"""Which role serves a request: the sticky key, the override header, and the splitter."""

from __future__ import annotations

from typing import Callable, Sequence

from aiohttp import web

from canaryproxy.core.splitter import Splitter, key_hash
from canaryproxy.core.types import Role
from canaryproxy.proxy.headers import TrustedProxies

KeySource = Callable[[web.BaseRequest], "str | None"]


def key_source(spec: str, trusted: TrustedProxies) -> KeySource:
    """Compile one `routing.sticky` entry (`header:NAME`, `cookie:NAME`, `query:NAME`, `client-ip`)."""
    kind, _, name = spec.partition(":")
    if kind == "header":
        return lambda request: request.headers.get(name) or None
    if kind == "cookie":
        return lambda request: request.cookies.get(name) or None
    if kind == "query":
        return lambda request: request.query.get(name) or None
    if spec == "client-ip":
        if not trusted:
            return lambda request: request.remote
        return lambda request: trusted.client_address(
            request.remote, request.headers.get("X-Forwarded-For")
        )
    raise ValueError(f"unknown sticky key source {spec!r}")


_FORCED = {"stable": Role.STABLE, "canary": Role.CANARY}


class Router:
    """Picks the role of each request: the override header if present, else the sticky split."""

    __slots__ = ("splitter", "_sources", "_override_header")

    def __init__(
        self,
        splitter: Splitter,
        sticky: Sequence[str],
        trusted: TrustedProxies,
        override_header: str | None = None,
    ) -> None:
        self.splitter = splitter
        self._sources = tuple(key_source(spec, trusted) for spec in sticky)
        self._override_header = override_header

    def route(self, request: web.BaseRequest) -> tuple[Role, int | None]:
        """The role, and the sticky key's hash (None when no key was present)."""
        hash64 = None
        for source in self._sources:
            key = source(request)
            if key:
                hash64 = key_hash(key)
                break
        if self._override_header is not None:
            forced = request.headers.get(self._override_header)
            if forced is not None:
                role = _FORCED.get(forced.strip().lower())
                if role is not None:
                    return role, hash64
        return self.splitter.choose(hash64), hash64
