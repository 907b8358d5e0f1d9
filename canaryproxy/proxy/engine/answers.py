"""The answers a connection makes itself: a refused head, a head that timed out, a handler that
failed. A refused head is answered as aiohttp's server answered it: its reason as plain text."""

from __future__ import annotations

import asyncio

from canaryproxy.proxy.engine.response import Response, http_date, reason_of

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_SERVER_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"


class Answer:
    """An answer of the connection's own, waiting in its queue for its turn; then the close.
    `kind` and `detail` are the client-error log line it is noted with."""

    __slots__ = ("data", "kind", "detail")

    def __init__(self, data: bytes, kind: str, detail: str) -> None:
        self.data, self.kind, self.detail = data, kind, detail


def refusal(status: int, message: str, remote: str | None) -> Answer:
    body = message.encode("utf-8", "backslashreplace")
    data = (f"HTTP/1.1 {status} {reason_of(status)}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nDate: {http_date()}\r\nConnection: close\r\n\r\n"
            ).encode() + body
    return Answer(data, "malformed_request", f"{message.splitlines()[0][:200]} (from {remote or '?'})")


def head_timeout(seconds: float, remote: str | None) -> Answer:
    return Answer(REQUEST_TIMEOUT, "client_header_timeout",
                  f"request head not complete within {seconds:g}s (from {remote or '?'})")


def failure(exc: Exception) -> Response:
    """What a handler that raised is answered with (as aiohttp answered it): 504 for a timeout,
    else 500; the connection closes after it."""
    if isinstance(exc, asyncio.TimeoutError):
        response = Response(status=504)
    else:
        response = Response(status=500, text=_SERVER_ERROR)
    response.force_close()
    return response


def llhttp_reason(error: Exception) -> str:
    return (str(error) or type(error).__name__)[:200]
