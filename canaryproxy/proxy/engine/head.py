"""A request head as llhttp hands it over, and the checks aiohttp's parser made beyond llhttp's.

llhttp (strict) refuses malformed syntax, framing it cannot trust and unknown methods. aiohttp's
parser refused a few more things, which the data plane's refusals rely on, so they are made here
with the same statuses: a repeated singleton header (two `Host`s, two `Transfer-Encoding` lines,
RFC 9110 §5.3), an HTTP/1.1 request without `Host` (RFC 9112 §3.2: MUST), `Sec-WebSocket-Key1`
(the pre-RFC 6455 handshake), more than `max_headers` fields, and a request target that is neither
origin-form, `*` with OPTIONS, an authority with CONNECT, nor absolute-form with a host. Field
values lose their trailing whitespace (llhttp strips only the leading: RFC 9110 §5.5).
"""

from __future__ import annotations

from typing import Protocol

from yarl import URL

from canaryproxy.proxy.engine.request import HTTP10, HTTP11, HttpVersion
from canaryproxy.proxy.wire import WireLimits

# RFC 9110 fields that appear once: aiohttp's SINGLETON_HEADERS, lower case.
_SINGLETONS = frozenset({
    b"content-length", b"content-location", b"content-range", b"content-type", b"etag", b"host",
    b"max-forwards", b"server", b"transfer-encoding", b"user-agent",
})
_VERSIONS = {"1.1": HTTP11, "1.0": HTTP10}
_METHODS: dict[bytes, str] = {}


class HeadRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Parser(Protocol):
    def get_method(self) -> bytes: ...
    def get_http_version(self) -> str: ...


class Head:
    """The head being parsed on one connection; `begin()` starts the next one."""

    __slots__ = ("url", "refused", "_limits", "_fields", "_seen", "_length")

    def __init__(self, limits: WireLimits) -> None:
        self.url = b""
        self.refused: HeadRefused | None = None  # why a callback stopped llhttp
        self._limits = limits
        self._fields: list[tuple[str, str]] = []
        self._seen: set[bytes] = set()  # the singleton fields met so far
        self._length: bytes | None = None

    def begin(self) -> None:
        self.url = b""
        self._fields = []
        self._seen.clear()
        self._length = None

    def _refuse(self, message: str) -> HeadRefused:
        self.refused = HeadRefused(400, message)
        return self.refused

    def add(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in _SINGLETONS:
            if lower in self._seen:
                raise self._refuse(f"Duplicate '{name.decode('latin-1')}' header found.")
            self._seen.add(lower)
            if lower == b"content-length":
                self._length = value
        elif lower == b"sec-websocket-key1":
            raise self._refuse("Invalid HTTP header: 'Sec-WebSocket-Key1'")
        fields = self._fields
        fields.append((name.decode("latin-1"), value.rstrip(b" \t").decode("utf-8", "surrogateescape")))
        if len(fields) > self._limits.max_headers:
            raise self._refuse("Too many headers received")

    def complete(self, parser: _Parser) -> tuple[str, str, HttpVersion, list[tuple[str, str]], bool]:
        """(method, target, version, fields, whether a body follows), or HeadRefused."""
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method)
        if method is None:
            method = _METHODS.setdefault(raw_method, raw_method.decode("ascii"))
        text = parser.get_http_version()
        version = _VERSIONS.get(text) or HttpVersion(*map(int, text.split(".")))
        target = self.url.decode("utf-8", "surrogateescape")
        if version == HTTP11 and b"host" not in self._seen:
            raise self._refuse("Missing 'Host' header in request.")
        if target[:1] != "/" and not _other_form_ok(method, target):
            raise self._refuse(f"Invalid URL: {target[:100]!r}")
        chunked = b"transfer-encoding" in self._seen  # llhttp refused any last coding but chunked
        length = self._length
        return method, target, version, self._fields, chunked or (length is not None and int(length) > 0)


def _other_form_ok(method: str, target: str) -> bool:
    """What aiohttp's parser accepted besides origin-form (the proxy's admission then decides)."""
    if method == "CONNECT":
        try:
            return URL.build(authority=target, encoded=True).raw_host is not None
        except ValueError:
            return False
    if target == "*" and method == "OPTIONS":
        return True
    rest = target.partition(":")[2]
    if rest[:2] != "//" or rest[2:3] in ("", "/", "?", "#"):
        return False  # RFC 9110 §4.2: an http(s) URI has a host
    try:
        return URL(target, encoded=True).raw_host is not None
    except ValueError:
        return False
