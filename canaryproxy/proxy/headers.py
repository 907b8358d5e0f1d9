"""Header hygiene for a reverse proxy, both directions (RFC 9110 §7.6.1).

aiohttp strips nothing for us (see shared/docs/proxy-hardening.md): forwarding `request.headers`
as-is would send the client's `Host`, every header it named in `Connection`, `Keep-Alive`, `TE`,
`Proxy-Authorization` and a spoofed `X-Forwarded-For` upstream. Here we:

1. drop the hop-by-hop headers and every header named in `Connection`;
2. drop the client's `Host` (the upstream gets its own, from the upstream URL) and `Expect` (the
   proxy answers `100-continue` itself, as nginx does: an upstream that never sends 100 would
   leave the request hanging);
3. only then set `X-Forwarded-For/-Proto/-Host`, so a client cannot name them in `Connection` to
   delete ours; client-supplied values survive only from `trusted_proxies`.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from multidict import CIMultiDict, CIMultiDictProxy, istr

# Lower-case names: istr hashes and compares like a plain str, so sets hold lower case.
HOP_BY_HOP = frozenset(
    name.lower()
    for name in (
        "Connection",
        "Keep-Alive",
        "TE",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Connection",
        "Trailer",
        "Proxy-Authenticate",
        "Proxy-Authorization",
    )
)

HOST = istr("Host")
CONNECTION = istr("Connection")
CONTENT_LENGTH = istr("Content-Length")
ACCEPT_ENCODING = istr("Accept-Encoding")
X_FORWARDED_FOR = istr("X-Forwarded-For")
X_FORWARDED_PROTO = istr("X-Forwarded-Proto")
X_FORWARDED_HOST = istr("X-Forwarded-Host")
X_REQUEST_ID = istr("X-Request-Id")
FORWARDED = istr("Forwarded")
X_REAL_IP = istr("X-Real-IP")

# Request headers that stay here: hop-by-hop, Host (the upstream URL gives its own) and Expect.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "expect"}

# Headers that describe the client to the upstream: from an untrusted peer they are lies.
_CLIENT_CLAIMS = frozenset(
    n.lower() for n in (X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, FORWARDED, X_REAL_IP)
)


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    values = headers.getall(CONNECTION, ())
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


class TrustedProxies:
    """The networks whose forwarding headers we keep."""

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: str | None) -> bool:
        if not self._networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The address of the real client: walking X-Forwarded-For from the right, the first hop
        we do not trust (a trusted proxy may append, an untrusted one may have forged the rest)."""
        if not self.trusts(peer) or not forwarded_for:
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    peer: str | None,
    scheme: str,
    trusted: bool,
    request_id: str,
    host: str | None = None,
) -> CIMultiDict[str]:
    """The headers to send upstream for a client request. `host` is the host the client
    addressed when it was not its Host header (an absolute-form target, RFC 9112 §3.2.2)."""
    drop = _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower in drop:
            continue
        if not trusted and lower in _CLIENT_CLAIMS:
            continue
        out.add(name, value)

    if host is None:
        host = incoming.get(HOST)
    if trusted:
        previous = out.get(X_FORWARDED_FOR)
        if peer:
            out[X_FORWARDED_FOR] = f"{previous}, {peer}" if previous else peer
        out.setdefault(X_FORWARDED_PROTO, scheme)
        if host:
            out.setdefault(X_FORWARDED_HOST, host)
    else:
        if peer:
            out[X_FORWARDED_FOR] = peer
        out[X_FORWARDED_PROTO] = scheme
        if host:
            out[X_FORWARDED_HOST] = host
    out[X_REQUEST_ID] = request_id
    return out


def downstream_response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers, minus what belongs to the upstream connection."""
    drop = _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in drop:
            continue
        out.add(name, value)
    return out
