"""The load generator's HTTP/1.1 response reader, on every way the bytes can be split."""

from __future__ import annotations

import re

import pytest

import payloads
from loadgen import ProtocolError, ResponseReader

LENGTH_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(payloads.JSON_RESPONSE_BODY), payloads.JSON_RESPONSE_BODY)
)
CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(e), e) for e in payloads.SSE_EVENTS[:3])
    + b"0\r\nX-Trailer: 1\r\n\r\n"
)
SSE_HEAD_BODY = b"".join(payloads.SSE_EVENTS[:3])


def read_split(wire: bytes, cut: int) -> tuple[ResponseReader, list[bool]]:
    reader = ResponseReader()
    return reader, [reader.feed(wire[:cut]), reader.feed(wire[cut:])]


@pytest.mark.parametrize(
    "wire, body",
    [(LENGTH_RESPONSE, payloads.JSON_RESPONSE_BODY), (CHUNKED_RESPONSE, SSE_HEAD_BODY)],
    ids=["content-length", "chunked"],
)
def test_a_response_split_anywhere_is_read_whole(wire: bytes, body: bytes) -> None:
    for cut in range(len(wire) + 1):
        reader, done = read_split(wire, cut)
        assert done[-1], f"not complete when split at {cut}"
        assert done[0] is (cut == len(wire)), f"complete too early when split at {cut}"
        assert (reader.status, bytes(reader.body)) == (200, body), f"split at {cut}"


def test_bytes_after_a_response_belong_to_the_next_one() -> None:
    reader = ResponseReader()
    assert reader.feed(LENGTH_RESPONSE + CHUNKED_RESPONSE[:40])
    assert bytes(reader.body) == payloads.JSON_RESPONSE_BODY
    reader.next()
    assert reader.feed(CHUNKED_RESPONSE[40:])
    assert bytes(reader.body) == SSE_HEAD_BODY


def test_a_bodiless_status_completes_with_its_head() -> None:
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert (reader.status, bytes(reader.body)) == (204, b"")


@pytest.mark.parametrize(
    "wire, message",
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size line b'zz'"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd", "chunk of 2 bytes not followed by CRLF"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody", "neither Content-Length nor chunked"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x status line"),
    ],
)
def test_what_is_not_http_1_1_framing_is_refused(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        ResponseReader().feed(wire)
