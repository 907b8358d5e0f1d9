"""What a parsed request must satisfy before it is routed, and the request target it is sent with.

Pure: strings in, a `Refused` (status, code, message) or None out; no aiohttp, so the checks hold
whichever HTTP parser sits in front (wire.py guards what is only visible in the raw bytes). On the
hot path: the usual request (origin-form target, a plain Host, no Transfer-Encoding, no Expect)
costs one regex match on Host and a few comparisons.

Decisions, by RFC 9110/9112 and what nginx and HAProxy do:

- version other than 1.x: 505 (RFC 9110 §15.6.6; nginx answers 505 to `HTTP/2.0` on HTTP/1).
- `Transfer-Encoding` on HTTP/1.0: 400 (RFC 9112 §6.1: faulty framing).
- `Transfer-Encoding` other than exactly `chunked` (`identity, chunked`, `gzip, chunked`): 501
  (RFC 9112 §6.1: a coding the server does not understand SHOULD get 501; nginx answers 501;
  `identity` is not a transfer coding since RFC 7230). llhttp refuses the rest (final not chunked).
- `Host` that is not `uri-host [":" port]` (`a b`, `a@b`): 400 (RFC 9112 §3.2: MUST).
- `Expect` other than `100-continue`: 417 (RFC 9110 §10.1.1 allows it; aiohttp's web.Application
  does it). `100-continue` itself is answered by the forwarder and never forwarded.
- targets: origin-form is forwarded; absolute-form (`GET http://a/x`) MUST be accepted
  (RFC 9112 §3.2.2): it is routed by its path and its authority replaces Host; `*` only with
  OPTIONS, answered by the proxy (see forward.py); authority-form and anything else: 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# RFC 3986 host (IP-literal, IPv4 or reg-name, pct-encoded allowed) and an optional port.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
# http(s) absolute-form: scheme "://" authority, then path-abempty and query (RFC 9112 §3.2.2).
_ABSOLUTE = re.compile(r"(?i:https?)://([^/?#]*)(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Refused:
    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Target:
    """Where an accepted request goes: the origin-form target to send, and the Host the client
    addressed (None: as in its Host header)."""

    path: str
    host: str | None = None


def check(
    method: str,
    target: str,
    version: tuple[int, int],
    headers: Mapping[str, str],
    content_length: int | None,
    max_body: int,
) -> Refused | Target | None:
    """The refusal of a request that must not reach an upstream, or where it goes (None: an
    origin-form target, sent as it came; the usual case allocates nothing)."""
    if version[0] != 1:
        return Refused(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served")
    te = headers.get("Transfer-Encoding")
    if te is not None:
        if version < (1, 1):
            # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
            return Refused(400, "bad_framing", "Transfer-Encoding is not allowed on an HTTP/1.0 request")
        if te.strip().lower() != "chunked":
            return Refused(501, "transfer_encoding_not_implemented",
                           "only Transfer-Encoding: chunked is accepted")
    if "Upgrade" in headers and (te is not None or (content_length or 0) > 0):
        return Refused(400, "bad_framing", "an Upgrade request must not carry a body")
    if content_length is not None and content_length > max_body:
        return Refused(413, "body_too_large",
                       f"request body of {content_length} bytes is over the limit of {max_body} bytes")
    expect = headers.get("Expect")
    if expect is not None and expect.strip().lower() != "100-continue":
        return Refused(417, "expectation_failed", "only Expect: 100-continue is supported")
    host = headers.get("Host")
    if host is not None and _HOST.fullmatch(host) is None:
        return Refused(400, "bad_host", "the Host header is not a valid host[:port]")
    if target[:1] == "/":
        return None
    return _other_form(method, target)


def _other_form(method: str, target: str) -> Refused | Target:
    if target == "*" and method == "OPTIONS":
        return Target("*")
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is not None:
        authority, rest = absolute.groups()
        if authority and "@" not in authority and _HOST.fullmatch(authority) is not None:
            # RFC 9112 §3.2.2: the target's authority, not the Host header, names the host.
            rest = rest.partition("#")[0]
            return Target(rest if rest[:1] == "/" else "/" + rest, host=authority)
        return Refused(400, "bad_request_target", "the absolute-form target has no valid authority")
    return Refused(400, "bad_request_target",
                   "only origin-form (/path?query) and absolute-form request targets are accepted")
