"""A model server that is never the bottleneck: canned OpenAI chat answers from a raw asyncio.Protocol.

    python bench/upstream.py --port 8001 --port 8002

Listens on 127.0.0.1 on every given port (the benchmark uses two: stable and canary) until SIGTERM
or SIGINT. HTTP/1.1 with keep-alive and pipelining; it parses just enough: the request line, the
end of the headers, and a Content-Length body (a request with Transfer-Encoding gets 411).

`POST /v1/chat/completions` answers with the canned chat completion (payloads.py) as JSON, or, when
the body contains `"stream": true`, as an SSE stream: `Transfer-Encoding: chunked`, one
`transport.write` per event (the headers go with the first), and the event loop runs between two
events (a `call_soon` chain), so events leave as separate segments the way a model server emits
tokens. Any other method or path gets 404.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket

import payloads

MAX_HEAD = 16 * 1024
_STREAM_REQUESTED = re.compile(rb'"stream"\s*:\s*true')


def _response(status: str, headers: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body
    )


JSON_RESPONSE = _response("200 OK", "Content-Type: application/json\r\n", payloads.JSON_RESPONSE_BODY)
NOT_FOUND = _response(
    "404 Not Found", "Content-Type: application/json\r\n",
    b'{"error":{"message":"only POST /v1/chat/completions exists here","type":"not_found"}}',
)
LENGTH_REQUIRED = _response(
    "411 Length Required", "Connection: close\r\nContent-Type: text/plain\r\n",
    b"this upstream reads Content-Length bodies only\n",
)
BAD_LENGTH = _response(
    "400 Bad Request", "Connection: close\r\nContent-Type: text/plain\r\n", b"unreadable Content-Length\n"
)
HEAD_TOO_LARGE = _response(
    "431 Request Header Fields Too Large", "Connection: close\r\nContent-Type: text/plain\r\n",
    b"request head over 16 KiB\n",
)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
# Every event framed as one chunk, ready to write; the headers travel with the first.
SSE_WRITES: tuple[bytes, ...] = tuple(
    (SSE_HEAD if i == 0 else b"") + b"%x\r\n%s\r\n" % (len(event), event)
    for i, event in enumerate(payloads.SSE_EVENTS)
)
SSE_END = b"0\r\n\r\n"


class ChatUpstream(asyncio.Protocol):
    """One client connection. Requests are answered in order; while a stream is being sent, bytes
    of the next request wait in the buffer."""

    __slots__ = ("_transport", "_buffer", "_streaming", "_next_event", "_close_after", "_loop")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._streaming = False
        self._next_event = 0
        self._close_after = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance check.
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Each SSE event must leave at once, not wait for the ACK of the previous one (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._streaming:
            self._answer_buffered()

    def _answer_buffered(self) -> None:
        """Answer every complete request in the buffer, stopping at a stream (it continues later)."""
        buffer = self._buffer
        while self._transport is not None and not self._close_after:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buffer) > MAX_HEAD:
                    self._reply_and_close(HEAD_TOO_LARGE)
                return
            head = bytes(buffer[:head_end]).lower()
            if b"\r\ntransfer-encoding:" in head:
                self._reply_and_close(LENGTH_REQUIRED)
                return
            try:
                length = _content_length(head)
            except ValueError:
                self._reply_and_close(BAD_LENGTH)
                return
            body_start = head_end + 4
            request_end = body_start + length
            if len(buffer) < request_end:
                return
            body = bytes(buffer[body_start:request_end])
            del buffer[:request_end]
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            if request_line.endswith(b" http/1.0"):
                self._close_after = b"\r\nconnection: keep-alive" not in head
            else:
                self._close_after = b"\r\nconnection: close" in head
            if request_line.startswith(b"post /v1/chat/completions "):
                if _STREAM_REQUESTED.search(body):
                    self._start_stream()
                    return
                self._transport.write(JSON_RESPONSE)
            else:
                self._transport.write(NOT_FOUND)
        if self._close_after and self._transport is not None:
            self._transport.close()

    def _reply_and_close(self, response: bytes) -> None:
        assert self._transport is not None
        self._transport.write(response)
        self._transport.close()

    def _start_stream(self) -> None:
        self._streaming = True
        self._next_event = 0
        self._send_next_event()

    def _send_next_event(self) -> None:
        # No pause_writing handling: one stream (~12 KB) per connection at a time never fills the
        # transport's 64 KiB high-water mark.
        transport = self._transport
        if transport is None:
            return  # the client left mid-stream
        index = self._next_event
        if index < len(SSE_WRITES):
            transport.write(SSE_WRITES[index])
            self._next_event = index + 1
            self._loop.call_soon(self._send_next_event)
            return
        transport.write(SSE_END)
        self._streaming = False
        if self._close_after:
            transport.close()
        else:
            self._answer_buffered()


def _content_length(lowered_head: bytes) -> int:
    start = lowered_head.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = lowered_head.find(b"\r\n", start)
    length = int(lowered_head[start:] if end < 0 else lowered_head[start:end])
    if length < 0:
        raise ValueError(f"negative Content-Length {length}")
    return length


async def serve(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(ChatUpstream, "127.0.0.1", port, backlog=1024, reuse_address=True)
        for port in ports
    ]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, action="append", required=True, help="port on 127.0.0.1 (repeatable)")
    args = parser.parse_args()

    import uvloop

    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
