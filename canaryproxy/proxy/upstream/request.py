"""A request on the wire: its head, and a streamed body sent behind it.

What the upstream receives, in order: the request line with the target as given (origin-form,
already percent-encoded), `Host` from the upstream's URL (unless the caller passed one), the
caller's headers as passed (it has removed the hop-by-hop ones), then the framing we set:

* bytes: `Content-Length` of those bytes (any the caller passed is left out: the body may have been
  rewritten);
* None: `Content-Length: 0` for methods that carry a body (POST, PUT, DELETE, PATCH...), nothing
  for GET, HEAD, OPTIONS and TRACE; as aiohttp did;
* a stream: `Transfer-Encoding: chunked`, unless the caller passed a `Content-Length` (the
  client's body, streamed as it arrives, with the length it declared): then the bytes as they are.

Nothing else is added: no `Accept`, `User-Agent` or `Accept-Encoding` behind the client's back
(aiohttp added `Accept: */*`). Text is encoded back with surrogateescape, so header bytes the
server side decoded that way reach the upstream as they arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

from multidict import CIMultiDict, istr

from canaryproxy.proxy.upstream.connection import Connection

HOST = istr("Host")
CONTENT_LENGTH = istr("Content-Length")
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # aiohttp's GET_METHODS
_JOIN_BELOW = 16 * 1024  # a body smaller than this goes out in one buffer with the head
_CHUNKED = "Transfer-Encoding: chunked\r\n\r\n"


def head(method: str, target: str, host_line: str, headers: CIMultiDict[str], body: object) -> tuple[bytes, ...]:
    """What to write for the request, body included when it is bytes: one or two buffers."""
    if isinstance(body, bytes):
        framing = f"Content-Length: {len(body)}\r\n\r\n"
        if CONTENT_LENGTH in headers:
            headers = headers.copy()
            del headers[CONTENT_LENGTH]
    elif body is None:
        absent = method in _NO_BODY_METHODS or CONTENT_LENGTH in headers
        framing = "\r\n" if absent else "Content-Length: 0\r\n\r\n"
    else:
        framing = "\r\n" if CONTENT_LENGTH in headers else _CHUNKED
    lines = [method, " ", target, " HTTP/1.1\r\n"]
    if HOST not in headers:
        lines.append(host_line)
    for name, value in headers.items():
        lines += (name, ": ", value, "\r\n")
    lines.append(framing)
    text = "".join(lines)
    # Line ends: the request line's, the Host line's if ours, one per header, the framing's.
    ends = 1 + (HOST not in headers) + len(headers) + framing.count("\n")
    if text.count("\n") != ends or text.count("\r") != ends:
        raise ValueError("newline or carriage return in the request target or a header")
    data = text.encode("utf-8", "surrogateescape")
    if not isinstance(body, bytes) or not body:
        return (data,)
    if len(body) < _JOIN_BELOW:
        return (data + body,)
    return data, body


def send_stream(connection: Connection, body: AsyncIterable[bytes], chunked: bool) -> asyncio.Task[None]:
    """Send `body` behind the head already written, on a task of its own, so that a response
    arriving before the body is all sent (a 413, an early error) is read meanwhile."""
    task = asyncio.get_running_loop().create_task(_stream(connection, body, chunked))
    task.add_done_callback(lambda done: _streamed(connection, done))
    return task


async def _stream(connection: Connection, body: AsyncIterable[bytes], chunked: bool) -> None:
    async for piece in body:
        if not piece:
            continue  # an empty chunk would end a chunked body
        transport = connection.transport
        if transport is None or transport.is_closing():
            return  # the upstream went away: its reader says so
        if chunked:
            transport.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
        else:
            transport.write(piece)
        connection.sent()
        await connection.drain()
    transport = connection.transport
    if chunked and transport is not None and not transport.is_closing():
        transport.write(b"0\r\n\r\n")


def _streamed(connection: Connection, task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        return
    if isinstance(error, ConnectionError):
        return  # the upstream closed: connection_lost tells the reader
    # The body failed on the client's side (too large, too slow, malformed): the request cannot be
    # completed, so its connection closes; the sender, while still waiting, gets the error as is.
    connection.body_failed(error)
