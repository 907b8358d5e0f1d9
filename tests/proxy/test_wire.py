"""RequestFraming gives the same verdict however the bytes are split (every split offset)."""

import pytest

from canaryproxy.proxy.wire import RequestFraming
from tests.proxy.test_corpus import CORPUS


def verdict(pieces: list[bytes]) -> tuple[int, str] | None:
    framing = RequestFraming()
    for piece in pieces:
        refusal = framing.feed(piece)
        if refusal is not None:
            return refusal.status, refusal.reason
    return None


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.name)
def test_every_split_offset_gives_the_same_verdict(case):
    whole = verdict([case.data])
    step = 1 if len(case.data) < 2000 else 97  # the long ones at every 97th offset: still quick
    for offset in range(1, len(case.data), step):
        assert verdict([case.data[:offset], case.data[offset:]]) == whole, offset


def test_byte_by_byte_pipelined_requests_are_followed_to_the_end():
    data = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n"
            b"0\r\nX: y\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert verdict([bytes([b]) for b in data]) == (400, "malformed request line")
