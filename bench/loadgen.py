"""The Python load generator (used when wrk is not installed) and the HTTP/1.1 response reader.

    python bench/loadgen.py --port 8080 --body-file body.json --connections 16 --duration 10

Keeps `--connections` keep-alive connections busy with one request at a time each (closed loop,
like wrk), cycling through `payloads.USERS` sticky keys, for `--duration` seconds. Prints one line
`BENCH_RESULT {json}` in the same shape as bench/chat.lua's `done()`, so the benchmark reads both
generators alike.

It is a raw asyncio.Protocol on uvloop to be as cheap as Python gets, but it is still several
times slower than wrk: with it, the direct rate mostly measures the generator.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import socket
import time
from dataclasses import dataclass

import payloads

RESULT_PREFIX = "BENCH_RESULT "

_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _DONE = range(6)


class ProtocolError(Exception):
    """The server sent something this reader does not accept as an HTTP/1.1 response."""


class ResponseReader:
    """Incremental HTTP/1.1 response framing (Content-Length or chunked), for one connection.

    `feed(data)` returns True once a whole response has arrived; `status` and `body` then describe
    it, and `next()` makes the reader ready for the following response (bytes past the end of the
    response are kept for it).
    """

    __slots__ = ("_buffer", "_state", "_remaining", "status", "body")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self.status = 0
        self.body = bytearray()

    def next(self) -> None:
        self._state = _HEAD
        self.status = 0
        self.body = bytearray()

    def feed(self, data: bytes) -> bool:
        buffer = self._buffer
        buffer += data
        while True:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return False
                self._start_body(bytes(buffer[:end]))
                del buffer[: end + 4]
            elif state == _BODY:
                take = min(self._remaining, len(buffer))
                self.body += buffer[:take]
                del buffer[:take]
                self._remaining -= take
                if self._remaining:
                    return False
                self._state = _DONE
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return False
                size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {bytes(buffer[:end])!r}") from None
                del buffer[: end + 2]
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILERS
            elif state == _CHUNK_DATA:
                size = self._remaining
                if len(buffer) < size + 2:
                    return False
                if buffer[size : size + 2] != b"\r\n":
                    raise ProtocolError(f"chunk of {size} bytes not followed by CRLF")
                self.body += buffer[:size]
                del buffer[: size + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return False
                del buffer[: end + 2]
                if end == 0:  # the empty line after the (usually absent) trailer fields
                    self._state = _DONE
            else:
                return True

    def _start_body(self, head: bytes) -> None:
        if not head.startswith(b"HTTP/1.") or len(head) < 12:
            raise ProtocolError(f"not an HTTP/1.x status line: {head[:40]!r}")
        self.status = int(head[9:12])
        lowered = head.lower()
        if b"\r\ntransfer-encoding: chunked" in lowered:
            self._state = _CHUNK_SIZE
            return
        start = lowered.find(b"\r\ncontent-length:")
        if start < 0:
            if self.status in (204, 304) or 100 <= self.status < 200:
                self._state = _DONE
                return
            raise ProtocolError("response with neither Content-Length nor chunked framing")
        end = lowered.find(b"\r\n", start + 2)
        self._remaining = int(lowered[start + 17 : end if end > 0 else None])
        self._state = _BODY if self._remaining else _DONE


def fetch(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send one request on a fresh connection and return (status, body): the benchmark's check
    that a setup answers correctly before it is measured."""
    reader = ResponseReader()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ProtocolError(f"127.0.0.1:{port} closed the connection before the response ended")
            if reader.feed(data):
                return reader.status, bytes(reader.body)


@dataclass
class Tally:
    """What all connections of one run saw."""

    latencies: list[float]
    errors_status: int = 0
    errors_connection: int = 0


class _Client(asyncio.Protocol):
    """One connection: send a request, read the response, send the next — at once (closed loop,
    like wrk) or, with `interval`, on a fixed schedule (paced: the latency a request sees when the
    proxy is not saturated)."""

    def __init__(
        self, requests: list[bytes], offset: int, tally: Tally, deadline: float, lost: asyncio.Future[None],
        interval: float | None = None,
    ) -> None:
        self._interval = interval
        self._next_at = 0.0
        self._requests = requests
        self._index = offset
        self._tally = tally
        self._deadline = deadline
        self._lost = lost
        self._reader = ResponseReader()
        self._transport: asyncio.Transport | None = None
        self._sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance check.
        self._transport = transport  # type: ignore[assignment]
        self._next_at = time.perf_counter()
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._index = (self._index + 1) % len(self._requests)
        self._sent_at = time.perf_counter()
        self._transport.write(self._requests[self._index])

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            complete = reader.feed(data)
        except ProtocolError:
            self._tally.errors_connection += 1
            assert self._transport is not None
            self._transport.abort()
            return
        if not complete:
            return
        now = time.perf_counter()
        self._tally.latencies.append(now - self._sent_at)
        if not 200 <= reader.status < 300:
            self._tally.errors_status += 1
        reader.next()
        if now < self._deadline:
            if self._interval is None:
                self._send()
            else:
                self._next_at = max(self._next_at + self._interval, now)
                asyncio.get_running_loop().call_later(self._next_at - now, self._send)
        else:
            assert self._transport is not None
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self._deadline:
            self._tally.errors_connection += 1
        if not self._lost.done():
            self._lost.set_result(None)


async def _keep_connection_busy(
    port: int, requests: list[bytes], offset: int, tally: Tally, deadline: float,
    interval: float | None = None, start_delay: float = 0.0,
) -> None:
    """Run one connection until the deadline, reconnecting if the server closes it early."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(start_delay)
    while time.perf_counter() < deadline:
        lost: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(
            functools.partial(_Client, requests, offset, tally, deadline, lost, interval), "127.0.0.1", port
        )
        await lost


async def generate_load(port: int, body: bytes, connections: int, duration: float,
                        rate: float | None = None) -> dict[str, float]:
    """Drive the load and summarise it like chat.lua's done(). With `rate` (requests/s over all
    connections), each connection sends on a fixed schedule, staggered, instead of back to back."""
    interval = connections / rate if rate else None
    host = f"127.0.0.1:{port}"
    requests = [payloads.chat_request(body, host, user) for user in range(1, payloads.USERS + 1)]
    tally = Tally(latencies=[])
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(
            _keep_connection_busy(port, requests, i * payloads.USERS // connections, tally, deadline,
                                  interval, (interval or 0.0) * i / connections)
            for i in range(connections)
        )
    )
    elapsed = time.perf_counter() - started
    latencies = sorted(tally.latencies)
    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "p50_us": _percentile(latencies, 50) * 1e6,
        "p99_us": _percentile(latencies, 99) * 1e6,
        "errors_status": tally.errors_status,
        "errors_connection": tally.errors_connection,
    }


def _percentile(sorted_values: list[float], percent: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[round((len(sorted_values) - 1) * percent / 100)]


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop HTTP/1.1 load generator (wrk stand-in)")
    parser.add_argument("--port", type=int, required=True, help="target port on 127.0.0.1")
    parser.add_argument("--body-file", required=True, help="request body to POST to /v1/chat/completions")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--rate", type=float, default=None,
                        help="paced: this many requests/s over all connections (default: closed loop)")
    args = parser.parse_args()
    with open(args.body_file, "rb") as file:
        body = file.read()

    import uvloop

    summary = uvloop.run(generate_load(args.port, body, args.connections, args.duration, args.rate))
    print(RESULT_PREFIX + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
