"""The fast upstream on a real socket: framing, pipelining, one chunk per SSE event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import payloads
from loadgen import ResponseReader
from upstream import ChatUpstream


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(ChatUpstream, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def exchange(port: int, *sends: bytes, responses: int = 1) -> tuple[list[tuple[int, bytes]], bytes]:
    """Send the byte strings one write each, read `responses` responses; return them and every raw
    byte received."""
    reader_stream, writer = await asyncio.open_connection("127.0.0.1", port)
    for data in sends:
        writer.write(data)
        await writer.drain()
    reader, raw, answers = ResponseReader(), bytearray(), []
    while len(answers) < responses:
        data = await asyncio.wait_for(reader_stream.read(65536), 5)
        assert data, "the upstream closed the connection early"
        raw += data
        complete = reader.feed(data)
        while complete:
            answers.append((reader.status, bytes(reader.body)))
            reader.next()
            complete = len(answers) < responses and reader.feed(b"")  # a pipelined one may be whole
    writer.close()
    await writer.wait_closed()
    return answers, bytes(raw)


def request(workload: str, *, extra_headers: str = "") -> bytes:
    body = payloads.WORKLOADS[workload]
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{extra_headers}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_a_chat_request_gets_the_canned_json(port: int) -> None:
    answers, raw = await exchange(port, request("json"))
    assert answers == [(200, payloads.JSON_RESPONSE_BODY)]
    assert b"Content-Type: application/json\r\n" in raw


async def test_stream_true_gets_one_chunk_per_sse_event(port: int) -> None:
    answers, raw = await exchange(port, request("sse"))
    assert answers == [(200, payloads.SSE_RESPONSE_BODY)]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Type: text/event-stream" in head
    chunks = []
    while body != b"0\r\n\r\n":
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        chunks.append(body[:size])
        body = body[size + 2 :]
    assert chunks == list(payloads.SSE_EVENTS)


async def test_a_request_arriving_byte_by_byte_is_answered(port: int) -> None:
    answers, _ = await exchange(port, *(bytes([b]) for b in request("json")))
    assert answers == [(200, payloads.JSON_RESPONSE_BODY)]


async def test_a_request_pipelined_behind_a_stream_waits_for_it(port: int) -> None:
    answers, _ = await exchange(port, request("sse") + request("json") + request("sse"), responses=3)
    assert answers == [
        (200, payloads.SSE_RESPONSE_BODY), (200, payloads.JSON_RESPONSE_BODY), (200, payloads.SSE_RESPONSE_BODY)
    ]


async def test_other_paths_get_404_and_chunked_requests_411(port: int) -> None:
    get = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    answers, _ = await exchange(port, get + chunked, responses=2)
    assert [status for status, _ in answers] == [404, 411]


@pytest.mark.parametrize("length", [b"ten", b"-5"])
async def test_an_unreadable_content_length_gets_400_and_the_connection_closed(port: int, length: bytes) -> None:
    reader_stream, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n")
    raw = await asyncio.wait_for(reader_stream.read(), 5)  # read() returns only at EOF
    writer.close()
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_connection_close_is_honoured(port: int) -> None:
    reader_stream, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request("sse", extra_headers="Connection: close\r\n"))
    raw = await asyncio.wait_for(reader_stream.read(), 5)  # read() returns only at EOF
    writer.close()
    reader = ResponseReader()
    assert reader.feed(raw) and bytes(reader.body) == payloads.SSE_RESPONSE_BODY
