"""Which Host and Origin the admin listener answers: its defence against DNS rebinding.

A web page on evil.example whose name the attacker re-points at 127.0.0.1 can make the operator's
browser send requests to the admin port, and read the answers, since to the browser they are
same-origin. What gives it away is the name: the request says `Host: evil.example:9090` (and a
POST also `Origin: http://evil.example:9090`). So the listener answers only the names that are
its own, as Django's ALLOWED_HOSTS and nginx's `server_name` do:

- the address the connection arrived on, with the listener's port (`127.0.0.1:9090`; a page whose
  origin is an IP literal cannot be rebound);
- the host it is configured to listen on (`admin.listen`), unless that is a wildcard;
- `localhost`, `127.0.0.1` and `[::1]` when the connection arrived on a loopback address
  (`localhost` cannot be re-pointed elsewhere by a public DNS name);
- the names the operator lists in `admin.allowed_hosts` (`name` for any port, `name:port` for
  one), for a reverse proxy or a DNS name in front of the listener.

The same names are checked against the Origin header when there is one (a browser sends it on
every POST); non-browser clients such as the CLI, curl and Prometheus send none. Pure: the caller
passes the header values and the connection's local address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 authority without userinfo: `[IPv6]`, or a name or IPv4 address; then an optional port.
_AUTHORITY = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+))(?::(\d{0,5}))?")
_ORIGIN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")


@dataclass(frozen=True, slots=True)
class Authority:
    """A host (lower case, IPv6 without brackets, no trailing dot) and a port (None: not given)."""

    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_authority(text: str) -> Authority:
    """`name`, `name:port`, `1.2.3.4:port`, `[::1]:port` -> Authority; ValueError otherwise."""
    match = _AUTHORITY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected a host name or address with an optional :port, got {text!r}")
    v6, name, port = match.groups()
    if v6 is not None:
        try:
            host = str(ipaddress.IPv6Address(v6))
        except ValueError:
            raise ValueError(f"not an IPv6 address in {text!r}") from None
    else:
        host = name.lower().removesuffix(".")
        if not host or ".." in host:
            raise ValueError(f"not a host name: {text!r}")
    number = int(port) if port else None  # `host:` with an empty port means no port (RFC 3986)
    if number is not None and not 0 < number <= 65535:
        raise ValueError(f"port must be within 1-65535 in {text!r}")
    return Authority(host, number)


def _address_name(address: str) -> str:
    """The canonical text of a socket address (an IPv4-mapped IPv6 address as its IPv4 form)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Refusal(Exception):
    """Why a request is not answered: the HTTP status, a code and a message for the JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ListenerNames:
    """The names of one admin listener; `check` refuses a request that names another."""

    def __init__(self, listen_host: str, allowed_hosts: Iterable[str] = ()) -> None:
        configured = _address_name(listen_host.strip("[]"))
        self._configured = None if configured in _WILDCARDS else configured
        self._allowed = tuple(parse_authority(name) for name in allowed_hosts)

    def own_names(self, local_address: str, port: int) -> list[Authority]:
        """The listener's own names for a connection that arrived on `local_address`:`port`."""
        hosts = [_address_name(local_address)]
        if self._configured is not None:
            hosts.append(self._configured)
        if _is_loopback(hosts[0]):
            hosts += LOOPBACK_NAMES
        return [Authority(host, port) for host in dict.fromkeys(hosts)]

    def _names(self, authority: Authority, default_port: int, local: tuple[str, int]) -> bool:
        port = authority.port if authority.port is not None else default_port
        if Authority(authority.host, port) in self.own_names(*local):
            return True
        return any(a.host == authority.host and a.port in (None, port) for a in self._allowed)

    def check(self, host: str | None, origin: str | None, local: tuple[str, int]) -> None:
        """Raise Refusal unless `host` (the Host header, or the authority of an absolute-form
        target; None only for HTTP/1.0) and `origin` (None: not sent) name this listener."""
        if host is not None:
            try:
                authority = parse_authority(host)
            except ValueError as exc:
                raise Refusal(400, "bad_host", f"the Host header is malformed: {exc}") from None
            if not self._names(authority, 80, local):
                # 421 Misdirected Request (RFC 9110 §15.5.20): this server is not the one the
                # request names, so it will not answer for it.
                raise Refusal(421, "misdirected_host", (
                    f"Host {host!r} does not name this admin listener "
                    f"({', '.join(map(str, self.own_names(*local)))}); to reach it by another "
                    "name, list that name in admin.allowed_hosts"))
        if origin is not None and not self._origin_is_own(origin, local):
            raise Refusal(403, "cross_origin", (
                f"Origin {origin!r} is not this admin listener: the admin API answers its own "
                "dashboard and clients that send no Origin (list other names in admin.allowed_hosts)"))

    def _origin_is_own(self, origin: str, local: tuple[str, int]) -> bool:
        match = _ORIGIN.fullmatch(origin.strip())  # `null` (a sandboxed or file: page) never matches
        if not match or match.group(1).lower() not in _DEFAULT_PORTS:
            return False
        scheme = match.group(1).lower()
        try:
            authority = parse_authority(match.group(2))
        except ValueError:
            return False
        if scheme == "https":
            # The listener speaks plain HTTP, so an https origin can only be a proxy in front of it.
            port = authority.port if authority.port is not None else 443
            return any(a.host == authority.host and a.port in (None, port) for a in self._allowed)
        return self._names(authority, 80, local)
