"""Client-caused errors are one log line each, and a burst of one kind is folded into a count."""

from __future__ import annotations

import asyncio
import logging

from canaryproxy.proxy.logs import RateLimitedLog
from tests.support import eventually


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_kind_per_interval_then_the_count_left_out():
    clock, lines = FakeClock(), []
    limited = RateLimitedLog(lines.append, clock, interval=10.0)
    for _ in range(5):
        limited.note("client_body_timeout", "slow")
    limited.note("malformed_request", "bad line")  # another kind has its own allowance
    assert lines == ["client error [client_body_timeout]: slow",
                     "client error [malformed_request]: bad line"]
    clock.now += 9.9
    limited.note("client_body_timeout", "slow")
    assert len(lines) == 2
    clock.now += 0.2
    limited.note("client_body_timeout", "slow again")
    assert lines[2] == ("client error [client_body_timeout]: slow again "
                        "(… repeated 5 more times in the last 10s)")


def test_flush_writes_what_was_held_back():
    clock, lines = FakeClock(), []
    limited = RateLimitedLog(lines.append, clock, interval=10.0)
    limited.note("client_disconnect", "gone")
    limited.note("client_disconnect", "gone")
    clock.now += 3
    limited.flush()
    assert lines[-1] == "client error [client_disconnect]: … repeated 1 more times in the last 3s"


def _proxy_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(("aiohttp", "canaryproxy.proxy"))]


async def test_fifty_slow_bodies_write_a_handful_of_lines_and_no_traceback(make_proxy, caplog):
    caplog.set_level(logging.INFO)
    proxy = await make_proxy(timeouts={"client_body": "200ms"})
    answers: list[bytes] = []

    async def slow_body() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nx")
        try:
            answers.append(await asyncio.wait_for(reader.read(65536), 5))
            await asyncio.wait_for(reader.read(65536), 5)  # until the proxy closes
        finally:
            writer.close()

    await asyncio.gather(*(slow_body() for _ in range(50)))
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers) and len(answers) == 50
    await eventually(lambda: len(proxy.test_sink.outcomes) == 50)
    records = _proxy_records(caplog)
    assert len(records) <= 3, [r.getMessage() for r in records]
    assert all(r.exc_info is None for r in records)
    assert "Traceback" not in caplog.text


async def test_repeated_malformed_requests_are_one_line(make_proxy, caplog):
    caplog.set_level(logging.INFO)
    proxy = await make_proxy()

    async def send(data: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
        writer.write(data)
        await asyncio.wait_for(reader.read(65536), 5)
        writer.close()

    await asyncio.gather(*(send(b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n") for _ in range(20)))
    await asyncio.gather(*(send(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n") for _ in range(20)))
    records = _proxy_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "malformed_request" in records[0].getMessage() and records[0].exc_info is None
