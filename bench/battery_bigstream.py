"""An upstream whose streams are large: every POST is answered with an OpenAI-style SSE stream of
`--events` chunks of `--event-bytes` of content each (4 MB by default), then usage and [DONE].

    python bench/battery_bigstream.py --port 8001 --port 8002 [--events 4000] [--event-bytes 1000]

aiohttp's `await response.write()` pauses the stream when the proxy stops reading, as a model
server's does. The slow-reader mode uses it: a client that stops reading a small stream never
fills a buffer, a large one does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web


def _event(delta: dict[str, str], finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-big", "object": "chat.completion.chunk", "created": 1_700_000_000,
             "model": "bench-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def application(events: int, event_bytes: int) -> web.Application:
    content_event = _event({"content": "x" * event_bytes})
    usage = {"prompt_tokens": 10, "completion_tokens": events, "total_tokens": 10 + events}
    tail = (
        _event({}, "stop")
        + b"data: " + json.dumps({"id": "chatcmpl-big", "object": "chat.completion.chunk", "choices": [],
                                  "usage": usage}).encode() + b"\n\n"
        + b"data: [DONE]\n\n"
    )

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            await response.write(_event({"role": "assistant", "content": ""}))
            for _ in range(events):
                await response.write(content_event)
            await response.write(tail)
            await response.write_eof()
        except ConnectionError:
            pass  # the proxy closed the stream (its client stopped reading): expected, no traceback
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", stream)
    return app


async def serve(ports: list[int], events: int, event_bytes: int) -> None:
    runner = web.AppRunner(application(events, event_bytes), handle_signals=False)
    await runner.setup()
    for port in ports:
        # The proxy opens hundreds of upstream connections in a burst: the default backlog of 128
        # would drop SYNs and stall connects for seconds.
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--event-bytes", type=int, default=1000)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port, args.events, args.event_bytes))


if __name__ == "__main__":
    main()
