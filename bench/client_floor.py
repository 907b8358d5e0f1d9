"""What the upstream client costs: CPU per request of one HTTP client alone, in one process.

    .venv/bin/python bench/client_floor.py [--requests 20000] [--concurrency 16] [--rounds 3]

Starts bench/upstream.py pinned to the rig core (as bench/ab.py does), pins itself to the proxy
core, and on uvloop sends JSON POSTs of the benchmark's chat request through each client in turn,
`--concurrency` at once, each worker sending its requests one after another and reading every
response body to its end. The number per round is this process's CPU time (time.process_time) per
request: the client's own cost plus the loop's, with no server or proxy in the same process.

Clients:
  aiohttp     canaryproxy's Exchange on aiohttp's ClientSession, configured as the proxy runs it
  llhttp      canaryproxy's Exchange on its own client (canaryproxy/proxy/upstream/)
  prototype   a bare httptools protocol with a LIFO pool: what a client on llhttp costs at least

Rounds alternate between the clients (a b a b ...), so a drift of the machine falls on all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httptools
import uvloop
from multidict import CIMultiDict

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

import payloads  # noqa: E402
from rig import PROXY_CORE, RIG_CORE, Processes, free_port  # noqa: E402

Send = Callable[[], Awaitable[int]]  # one request; the number of body bytes read


def request_headers() -> CIMultiDict[str]:
    """What the forwarder passes to the exchange for a benchmark request (hop-by-hop removed,
    X-Forwarded-* and X-Request-Id added)."""
    return CIMultiDict({
        "Content-Type": "application/json", payloads.STICKY_HEADER: "user-7",
        "X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "127.0.0.1:8000",
        "X-Request-Id": "0123456789abcdef0123456789abcdef",
    })


# --- (a) and (b): the proxy's own Exchange ----------------------------------------------------------

async def exchange_client(url: str, implementation: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    from canaryproxy.core.types import Role
    from canaryproxy.proxy.exchange import AiohttpExchange, Deadlines, LlhttpExchange

    kind = AiohttpExchange if implementation == "aiohttp" else LlhttpExchange
    exchange = kind(Role.STABLE, url, Deadlines(), connections=1000, keepalive=4.0)
    await exchange.start()
    body = payloads.JSON_REQUEST_BODY

    async def send() -> int:
        headers = request_headers()  # the forwarder builds a new one per request
        upstream = await exchange.send("POST", payloads.PATH, headers, body)
        read = 0
        while chunk := await upstream.read():
            read += len(chunk)
        upstream.release()
        return read

    return send, exchange.close


# --- (c): the prototype ----------------------------------------------------------------------------

class _Proto(asyncio.Protocol):
    """Just enough: a head future, body chunks appended to a list, a waiter for more."""

    def __init__(self, pool: list[_Proto]) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[int] | None = None
        self.chunks: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None
        self.done = False
        self.headers: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.head is not None
        self.head.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def read(self) -> bytes:
        while not self.chunks:
            if self.done:
                return b""
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.chunks.pop(0)


async def prototype_client(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    host, port = url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    pool: list[_Proto] = []
    every: list[_Proto] = []
    body = payloads.JSON_REQUEST_BODY
    host_line = f"Host: {host}:{port}\r\n"

    async def send() -> int:
        if pool:
            proto = pool.pop()
        else:
            _, proto = await loop.create_connection(lambda: _Proto(pool), host, int(port))
            every.append(proto)
        proto.head = loop.create_future()
        proto.done = False
        proto.headers = []
        lines = [f"POST {payloads.PATH} HTTP/1.1\r\n", host_line]
        for name, value in request_headers().items():
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        assert proto.transport is not None
        proto.transport.writelines(("".join(lines).encode("latin-1"), body))
        await proto.head
        read = 0
        while chunk := await proto.read():
            read += len(chunk)
        pool.append(proto)
        return read

    async def close() -> None:
        for proto in every:
            if proto.transport is not None:
                proto.transport.close()

    return send, close


# --- the harness -----------------------------------------------------------------------------------

async def one_round(send: Send, requests: int, concurrency: int) -> float:
    """CPU µs per request for `requests` requests, `concurrency` workers at once."""
    per_worker = requests // concurrency
    expected = len(payloads.JSON_RESPONSE_BODY)

    async def worker() -> None:
        for _ in range(per_worker):
            got = await send()
            if got != expected:
                raise RuntimeError(f"read {got} body bytes, expected {expected}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up: the pool fills
    before = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - before) / (per_worker * concurrency) * 1e6


async def measure(url: str, names: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    clients = {}
    for name in names:
        clients[name] = await (prototype_client(url) if name == "prototype" else exchange_client(url, name))
    results: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            results[name].append(await one_round(clients[name][0], args.requests, args.concurrency))
    for _, close in clients.values():
        await close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="per round and client")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="aiohttp,llhttp", help="of: aiohttp, llhttp, prototype")
    args = parser.parse_args()
    names = [n for n in args.clients.split(",") if n]
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"client-floor-{os.getpid()}"
    workdir.mkdir(exist_ok=True)
    with Processes(workdir) as processes:
        port = free_port()
        upstream = processes.start("upstream", [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(port)],
                                   RIG_CORE)
        processes.wait_listening("upstream", upstream, port)
        os.sched_setaffinity(0, {PROXY_CORE})
        results = uvloop.run(measure(f"http://127.0.0.1:{port}", names, args))
    print(f"{args.requests} JSON POSTs per round, {args.concurrency} at once, {args.rounds} rounds, "
          f"alternating {' / '.join(names)}; CPU µs per request (this process, time.process_time)")
    for name, values in results.items():
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"  {name:10s} median {statistics.median(values):6.1f}   rounds {rounds}")
    base = statistics.median(results[names[0]])
    for name in names[1:]:
        print(f"  {names[0]} / {name}: {base / statistics.median(results[name]):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
