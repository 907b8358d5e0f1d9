"""Responses: the subset of aiohttp's `web.StreamResponse` and `web.Response` the data plane uses.

The head is built the way aiohttp built it, so a client sees the same framing: the request's
version in the status line; `Content-Length` when the response has one, else chunked on HTTP/1.1
and close-delimited on HTTP/1.0; no body (and no length, except for HEAD) where HTTP has none
(HEAD, 1xx, 204, 304); a `Date`; `Connection: close` when the connection ends after it
(`keep-alive` to an HTTP/1.0 client that keeps it). No `Server` header is added: the upstream's,
when it sent one, is the one a client sees.

A head is serialised in one join and written with its first body bytes. A write past the
transport's high-water mark waits for the client to read (`drain`): backpressure, no unbounded
buffering. Bytes past a declared `Content-Length` are never sent: they would read as the next
response.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict

from canaryproxy.proxy.engine.request import HTTP10, Request

if TYPE_CHECKING:
    from canaryproxy.proxy.engine.output import Output

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_NO_BODY_STATUSES = frozenset({204, 304})


class _Date:
    """The `Date` value, formatted once a second rather than once a response."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._text = formatdate(second, usegmt=True)
        return self._text


http_date = _Date()


def reason_of(status: int) -> str:
    return _REASONS.get(status, "")


class StreamResponse:
    """A response whose body is written chunk by chunk: `prepare(request)`, `write(data)`...,
    `write_eof()`. `headers` is the response's own (a CIMultiDict passed in is taken as it is)."""

    __slots__ = ("status", "reason", "headers", "_keep_alive", "_output", "_chunked",
                 "_left", "_bodiless", "_done")

    def __init__(self, *, status: int = 200, reason: str | None = None,
                 headers: CIMultiDict[str] | dict[str, str] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers: CIMultiDict[str] = (
            headers if type(headers) is CIMultiDict else CIMultiDict(headers or ()))
        self._keep_alive = True
        self._output: Output | None = None
        self._chunked = False
        self._left: int | None = None  # body bytes the declared Content-Length still allows
        self._bodiless = False
        self._done = False

    def force_close(self) -> None:
        """End the connection after this response."""
        self._keep_alive = False

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive

    @property
    def prepared(self) -> bool:
        return self._output is not None

    async def prepare(self, request: Request) -> None:
        if self._output is not None:
            return
        output = self._output = request._connection.output
        output.responding = True
        output.write_head(self._head(request, None))
        if output.paused:
            await output.drain()

    async def write(self, data: bytes) -> None:
        output = self._output
        assert output is not None, "prepare() first"
        if self._bodiless or not data:
            return  # an empty chunk would end a chunked body
        left = self._left
        if left is not None:
            if len(data) > left:
                data = data[:left]
            self._left = left - len(data)
        if self._chunked:
            output.write_chunk(data)
        else:
            output.write(data)
        if output.paused:
            await output.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if self._done:
            return
        if data:
            await self.write(data)
        self._done = True
        output = self._output
        assert output is not None, "prepare() first"
        if self._chunked:
            output.write(b"0\r\n\r\n")
        else:
            output.flush()  # a head no body bytes followed (HEAD, 204, an empty body)
        if output.paused:
            await output.drain()

    def _head(self, request: Request, length: int | None) -> bytes:
        """The status line and header section, deciding the framing (`length`: a whole body's)."""
        headers = self.headers
        status = self.status
        version = request.version
        if not request.keep_alive:
            self._keep_alive = False
        self._bodiless = bodiless = (request.method == "HEAD" or status < 200
                                     or status in _NO_BODY_STATUSES)
        if length is not None:
            headers["Content-Length"] = str(length)
        declared = headers.get("Content-Length")
        if bodiless:
            if declared is not None and request.method != "HEAD":
                del headers["Content-Length"]
            headers.popall("Transfer-Encoding", None)
        elif declared is not None:
            self._left = int(declared)
            if self._left:
                headers.setdefault("Content-Type", "application/octet-stream")
        else:
            headers.setdefault("Content-Type", "application/octet-stream")
            if version == HTTP10:
                self._keep_alive = False  # the close is what ends the body
            else:
                self._chunked = True
                headers["Transfer-Encoding"] = "chunked"
        if "Date" not in headers:
            headers["Date"] = http_date()
        if "Connection" not in headers:
            if not self._keep_alive:
                if version != HTTP10:
                    headers["Connection"] = "close"
            elif version == HTTP10:
                headers["Connection"] = "keep-alive"
        reason = self.reason or reason_of(status)
        text = "".join([f"HTTP/{version[0]}.{version[1]} {status} {reason}\r\n",
                        *[f"{name}: {value}\r\n" for name, value in headers.items()], "\r\n"])
        if text.count("\n") != len(headers) + 2:
            # A CR or LF inside a value would let it write a header (or a response) of its own.
            raise ValueError("newline in a response header or reason")
        return text.encode("utf-8", "surrogateescape")


class Response(StreamResponse):
    """A response with its whole body at hand, written with its head in one write."""

    __slots__ = ("body",)

    def __init__(self, *, status: int = 200, reason: str | None = None, body: bytes | None = None,
                 text: str | None = None, content_type: str | None = None,
                 headers: CIMultiDict[str] | dict[str, str] | None = None) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        if text is not None:
            body = text.encode("utf-8")
            content_type = f"{content_type or 'text/plain'}; charset=utf-8"
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        self.body = body or b""

    async def prepare(self, request: Request) -> None:
        if self._output is not None:
            return
        output = self._output = request._connection.output
        output.responding = True
        head = self._head(request, len(self.body))
        output.write(head if self._bodiless else head + self.body)
        self._done = True
        if output.paused:
            await output.drain()

    async def write(self, data: bytes) -> None:
        raise RuntimeError("a Response carries its whole body; use StreamResponse to stream")


def json_response(data: Any, *, status: int = 200,
                  headers: CIMultiDict[str] | dict[str, str] | None = None) -> Response:
    return Response(status=status, body=json.dumps(data).encode(), content_type="application/json",
                    headers=headers)
