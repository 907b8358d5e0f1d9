"""Real servers for tests: aiohttp upstreams and a raw TCP peer on 127.0.0.1, plus polling helpers.

Nothing here imitates our own code: upstreams are ordinary aiohttp servers (what a model server
looks like on the wire), the raw peer records the exact bytes a proxy sends.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from canaryproxy.config import Config
from canaryproxy.core.types import Outcome


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005) -> Any:
    """Poll until predicate() is truthy (returns its value) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


async def wait_until_ready(admin_port: int, process: asyncio.subprocess.Process | None = None,
                           describe: Callable[[], str] = lambda: "", timeout: float = 20.0) -> None:
    """Poll a proxy's /readyz until it answers 200; fail early if its process exits."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as client:
        while True:
            try:
                async with client.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectorError:
                pass
            assert process is None or process.returncode is None, f"proxy exited:\n{describe()}"
            assert time.monotonic() < deadline, f"proxy did not become ready:\n{describe()}"
            await asyncio.sleep(0.05)


@dataclass
class Seen:
    method: str
    raw_path: str  # the request target exactly as received
    headers: dict[str, list[str]]
    body: bytes
    at: float

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Upstream:
    """An aiohttp server standing in for a model server. Records every request it receives.

    By default it answers every request with a small JSON echo naming itself; tests install their
    own handlers with `on(method, path, handler)`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[Seen] = []
        self.cancelled_at: list[float] = []  # when a handler was cancelled by a closed connection
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, method: str, path: str, handler: Handler) -> None:
        self._handlers[(method.upper(), path)] = handler

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self._handlers.get((request.method, request.path)) or self._handlers.get(
            ("*", request.path)
        )
        # Custom handlers read (or stream) the body themselves; the echo records it.
        body = await request.read() if handler is None else b""
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        self.seen.append(Seen(request.method, request.raw_path, headers, body, time.monotonic()))
        try:
            if handler is not None:
                return await handler(request)
            return web.json_response(
                {"upstream": self.name, "method": request.method, "path": request.path_qs,
                 "body_bytes": len(body)}
            )
        except asyncio.CancelledError:
            self.cancelled_at.append(time.monotonic())
            raise

    async def start(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class RawPeer:
    """A TCP server that records every byte it receives and answers with a scripted reply.

    `reply` gets the bytes received so far and returns bytes to send (or None to wait for more);
    with `close_after_reply` the connection is closed after sending. Used to send malformed
    responses and to prove that a refused request sent the upstream no bytes at all.
    """

    def __init__(
        self,
        reply: Callable[[bytes], bytes | None] | None = None,
        close_after_reply: bool = True,
    ) -> None:
        self.received = bytearray()
        self.connections = 0
        self._reply = reply
        self._close_after_reply = close_after_reply
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        buffer = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                self.received += data
                buffer += data
                if self._reply is not None:
                    answer = self._reply(buffer)
                    if answer is not None:
                        writer.write(answer)
                        await writer.drain()
                        if self._close_after_reply:
                            break
                        buffer = b""
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class ListSink:
    """Keeps every outcome (a real sink, like the windows, only simpler)."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


def proxy_config(stable_url: str, canary_url: str, **sections: Any) -> Config:
    """A Config on ephemeral loopback ports, with sections overriding the defaults."""
    raw: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "upstreams": {"stable": stable_url, "canary": canary_url},
        "access_log": False,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return Config.model_validate(raw)


async def raw_request(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and return everything received until the peer closes
    (or nothing more arrives within `read_timeout` after the first response bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    received = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
            if not chunk:
                break
            received += chunk
            if _complete_response(received):
                break
    except asyncio.TimeoutError:
        pass
    finally:
        writer.close()
    return received


def _complete_response(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> Any:
    return json.loads(response.partition(b"\r\n\r\n")[2])


@dataclass
class SSEScript:
    """An upstream SSE handler: sends `events` one write each, `gap` seconds apart."""

    events: list[bytes]
    gap: float = 0.0
    fail_after: int | None = None  # abort the connection after this many events
    sent_at: list[float] = field(default_factory=list)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, event in enumerate(self.events):
            if self.fail_after is not None and index == self.fail_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(event)
            self.sent_at.append(time.monotonic())
            if self.gap:
                await asyncio.sleep(self.gap)
        await response.write_eof()
        return response
