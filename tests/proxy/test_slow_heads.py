"""A request head trickled byte by byte (slowloris) is cut off at `timeouts.client_header`."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp


async def trickle(port: int, stop: asyncio.Event) -> tuple[bytes, float]:
    """Send a head one header line at a time until the proxy answers or closes; what it said, when."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: h\r\n")
    received = b""

    async def keep_sending() -> None:
        n = 0
        while not stop.is_set():
            await asyncio.sleep(0.05)  # the slow client's pace, not a wait for a condition
            n += 1
            writer.write(b"X-Slow-%d: y\r\n" % n)

    sender = asyncio.create_task(keep_sending())
    try:
        received = await asyncio.wait_for(reader.read(65536), 5)
        await asyncio.wait_for(reader.read(65536), 5)  # then the proxy closes
    finally:
        sender.cancel()
        writer.close()
    return received, time.monotonic() - started


async def test_a_trickled_head_gets_408_and_is_closed_while_others_are_served(make_proxy, caplog):
    caplog.set_level(logging.INFO)
    proxy = await make_proxy(timeouts={"client_header": "300ms"})
    stop = asyncio.Event()
    slow = [asyncio.create_task(trickle(proxy.data_port, stop)) for _ in range(20)]
    async with aiohttp.ClientSession() as client:  # a normal client is served meanwhile
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/v1/models") as r:
            assert r.status == 200
    results = await asyncio.gather(*slow)
    stop.set()
    for answer, seconds in results:
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert 0.25 < seconds < 2.0, seconds
    assert "Traceback" not in caplog.text
    assert sum("client_header_timeout" in r.getMessage() for r in caplog.records) <= 2


async def test_a_head_that_arrives_in_pieces_within_the_deadline_is_served(make_proxy):
    proxy = await make_proxy(timeouts={"client_header": "2s"})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    for piece in (b"GET /v1/models HTTP/1.1\r\n", b"Host: h\r\n", b"\r\n"):
        writer.write(piece)
        await asyncio.sleep(0.1)  # pieces a real network may split a head into
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
