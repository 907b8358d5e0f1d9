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


PIPELINE = [
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
]


@pytest.mark.parametrize("room", [1, 2, 3])
def test_room_stops_right_after_that_many_messages(room):
    data = b"".join(PIPELINE)
    framing = RequestFraming()
    assert framing.feed(data, room) is None
    assert framing.consumed == len(b"".join(PIPELINE[:room]))
    # The rest, fed later, is followed from exactly there: a refusal after it is still found.
    rest = data[framing.consumed:] + b"GET  / HTTP/1.1\r\n\r\n"
    refusal = framing.feed(rest)
    assert refusal is not None and refusal.offset == len(rest) - len(b"GET  / HTTP/1.1\r\n\r\n")


def test_room_counts_messages_that_began_in_an_earlier_read():
    framing = RequestFraming()
    first, second = PIPELINE[1], PIPELINE[0]
    assert framing.feed(first[:-2]) is None and framing.consumed == len(first) - 2
    assert framing.feed(first[-2:] + second, 1) is None
    assert framing.consumed == 2  # the body's last bytes ended a message: room for no more


def test_without_room_everything_is_followed():
    framing = RequestFraming()
    data = b"".join(PIPELINE)
    assert framing.feed(data) is None and framing.consumed == len(data)
