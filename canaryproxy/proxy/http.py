"""The one place the data plane takes its HTTP request and response types from.

The data plane is served by the engine in `proxy/engine/` (an asyncio protocol on llhttp). While it
replaces aiohttp's server, `CANARYPROXY_ENGINE=aiohttp` selects the previous one (`proxy/edge.py`)
for the whole process: the differential test (tests/proxy/test_engine_differential.py) runs both
and compares what each answered and sent upstream. Both offer the same names with the same
meanings, so nothing else in the data plane knows which one serves it.
"""

from __future__ import annotations

import os

ENGINE = os.environ.get("CANARYPROXY_ENGINE", "llhttp")
if ENGINE not in ("llhttp", "aiohttp"):
    raise ImportError(f"CANARYPROXY_ENGINE must be llhttp or aiohttp, not {ENGINE!r}")

if ENGINE == "aiohttp":
    from aiohttp.web import BaseRequest as Request
    from aiohttp.web import Response, StreamResponse, json_response

    async def write_continue(request: Request) -> None:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # aiohttp's own expect handler does the same: the response proper has not begun.
        request.writer.output_size = 0
else:
    from canaryproxy.proxy.engine.request import Request, write_continue  # type: ignore[assignment]
    from canaryproxy.proxy.engine.response import (  # type: ignore[assignment]
        Response,
        StreamResponse,
        json_response,
    )

__all__ = ["ENGINE", "Request", "Response", "StreamResponse", "json_response", "write_continue"]
