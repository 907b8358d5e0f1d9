"""The reference floor: the least an aiohttp reverse proxy does, to measure canaryproxy against.

    python bench/floor_proxy.py --port 8080 http://127.0.0.1:8001 http://127.0.0.1:8002

One pooled ClientSession, a random 90/10 pick between the two upstreams, hop-by-hop headers
stripped both ways, the response streamed with StreamResponse + iter_any(), uvloop, no
decompression, no total timeout. The (small) request body is read whole. Nothing else: no
sticky split, no limits, no logging, no inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

CANARY_SHARE = 0.10
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "te", "transfer-encoding", "upgrade", "proxy-connection",
     "trailer", "proxy-authenticate", "proxy-authorization", "host")  # host: the upstream gets its own
)


def end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = HOP_BY_HOP.union(t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(","))
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


async def serve(port: int, stable: str, canary: str) -> None:
    session = aiohttp.ClientSession(
        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
    )

    async def forward(request: web.BaseRequest) -> web.StreamResponse:
        base = canary if random.random() < CANARY_SHARE else stable
        body = await request.read() if request.body_exists else None
        async with session.request(
            request.method, URL(base + request.raw_path, encoded=True),
            headers=end_to_end(request.headers), data=body, allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=end_to_end(upstream.headers)
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    runner = web.ServerRunner(web.Server(forward, access_log=None), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare aiohttp 90/10 pass-through proxy (the benchmark's floor)")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("stable")
    parser.add_argument("canary")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.stable.rstrip("/"), args.canary.rstrip("/")))
