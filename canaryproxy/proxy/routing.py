"""Which role serves a request: the sticky key, the override header, and the splitter."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

from canaryproxy.core.splitter import Splitter, key_hash
from canaryproxy.core.types import Role
from canaryproxy.proxy.headers import TrustedProxies
from canaryproxy.proxy.http import Request

KeySource = Callable[[Request], "str | None"]


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

# Sticky keys' hashes, kept: a user sends many requests, and a dict lookup costs a tenth of the
# hash. Emptied when full, so a flood of new keys costs memory only up to this many entries.
_HASHES_KEPT = 65536


class Route(NamedTuple):
    """Where one request goes, and what it was routed by: what the request's Outcome starts from.
    (A tuple: made once per request, and a frozen dataclass costs several times as much to make.)"""

    role: Role
    key_hash: int | None  # the sticky key's 64-bit hash; None when no key was present
    weight: float  # the canary weight in percent in force when the request was routed
    shadow: bool = False  # also copied to the canary in the shadow (a shadow stage samples it)


class Router:
    """Picks the role of each request: the override header if present, else the sticky split."""

    __slots__ = ("splitter", "_sources", "_override_header", "_hashes")

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
        self._hashes: dict[str, int] = {}

    def route(self, request: Request) -> Route:
        """The role that serves `request`, its sticky key's hash, and the weight it was split by."""
        hash64 = None
        for source in self._sources:
            key = source(request)
            if key:
                hashes = self._hashes
                hash64 = hashes.get(key)
                if hash64 is None:
                    if len(hashes) >= _HASHES_KEPT:
                        hashes.clear()
                    hash64 = hashes[key] = key_hash(key)
                break
        splitter = self.splitter
        weight = splitter.weight
        if self._override_header is not None:
            forced = request.headers.get(self._override_header)
            if forced is not None:
                role = _FORCED.get(forced.strip().lower())
                if role is not None:
                    return Route(role, hash64, weight)
        role = splitter.choose(hash64)
        if splitter.shadow_buckets and role is Role.STABLE:
            return Route(role, hash64, weight, splitter.shadowed(hash64))
        return Route(role, hash64, weight)
