"""The incremental SSE decoder against a whole-input reading of the WHATWG algorithm."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inspect_support import split_at

from canaryproxy.inspection.sse import SSEDecoder, SSEEvent


def reference_events(stream: bytes) -> list[SSEEvent]:
    """The event stream interpretation, written for clarity over the whole input at once."""
    events: list[SSEEvent] = []
    data: list[bytes] = []
    has_data = False
    event_type = b""
    event_start = 0
    for match in re.finditer(rb"([^\r\n]*)(\r\n|\r|\n)", stream):
        line, line_end = match.group(1), match.end()
        if match.start() == 0 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
            if not line:
                continue
        if not line:
            if has_data:
                events.append((event_type, b"\n".join(data), event_start, line_end))
            data, has_data, event_type, event_start = [], False, b"", line_end
        elif line.startswith(b":"):
            continue
        else:
            name, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
                has_data = True
            elif name == b"event":
                event_type = value
    return events


def decode(pieces: list[bytes]) -> tuple[list[SSEEvent], int]:
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    events += decoder.close()
    return events, decoder.event_start


FIELDS = st.sampled_from(
    [
        b"data: {\"a\":1}",
        b"data:no space",
        b"data:  two spaces",
        b"data",
        b"data:",
        b"event: message_start",
        b"event:delta",
        b"id: 7",
        b"retry: 1000",
        b": keep-alive",
        b":",
        b"unknown: field",
        b"data: caf\xc3\xa9 \xf0\x9f\x98\x80",
    ]
)
LINE_ENDS = [b"\n", b"\r\n", b"\r"]


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Events of one to three field lines, with one line ending per stream or a mix, stray blank
    lines, perhaps a BOM and an unterminated end."""
    style = draw(st.sampled_from([*LINE_ENDS, None]))
    line_end = (lambda: style) if style is not None else (lambda: draw(st.sampled_from(LINE_ENDS)))
    stream = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    for fields in draw(st.lists(st.lists(FIELDS, min_size=1, max_size=3), max_size=12)):
        stream += b"".join(field + line_end() for field in fields)
        stream += line_end() * draw(st.sampled_from([1, 1, 1, 2]))
    if draw(st.booleans()):
        stream += draw(FIELDS)  # an unterminated last line
    return stream


@settings(max_examples=300, deadline=None)
@given(stream=streams(), data=st.data())
def test_any_split_gives_the_reference_events(stream: bytes, data: st.DataObject) -> None:
    offsets = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    events, _ = decode(split_at(stream, offsets))
    assert events == reference_events(stream)


def test_plain_chunks_one_event_each() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n") == [(b"", b"a", 0, 9)]
    assert decoder.feed(b"data:a\n\n") == [(b"", b"a", 9, 17)]
    assert decoder.feed(b"data:\n\n") == [(b"", b"", 17, 24)]
    assert decoder.feed(b"event: x\ndata: b\n\n") == [(b"x", b"b", 24, 42)]
    assert decoder.feed(b"data: c\n\ndata: d\n\n") == [(b"", b"c", 42, 51), (b"", b"d", 51, 60)]
    assert decoder.event_start == 60


def test_multiline_data_joins_with_newline_and_comments_count_in_the_span() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b": ping\n\ndata: a\ndata: b\n\n") == [(b"", b"a\nb", 8, 25)]


def test_crlf_split_between_cr_and_lf_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == []  # the last "\r" may be half of "\r\n"
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [(b"", b"a", 0, 11), (b"", b"b", 11, 22)]


def test_a_final_cr_ends_the_stream_properly() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]\r\r") == []
    assert decoder.close() == [(b"", b"[DONE]", 0, 14)]


def test_an_unterminated_event_is_dropped_at_the_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: [DONE]\n") == [(b"", b"a", 0, 9)]
    assert decoder.close() == []
    assert decoder.event_start == 9


@pytest.mark.parametrize("cut", range(1, 4))
def test_a_bom_is_stripped_only_at_the_start_of_the_stream(cut: int) -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n"
    events, _ = decode(split_at(stream, [cut]))
    assert [(kind, data) for kind, data, _start, _end in events] == [(b"", b"a")]


def test_an_event_without_data_is_not_dispatched() -> None:
    events, start = decode([b"event: ping\n\nid: 3\n\n"])
    assert events == []
    assert start == 20


@settings(max_examples=300, deadline=None)
@given(stream=streams())
def test_a_chunk_per_event_gives_the_reference_events(stream: bytes) -> None:
    # How servers send: each chunk ends at a blank line, which the quick paths read without lines.
    pieces = [piece for piece in re.split(rb"(?<=\n\n)", stream) if piece]
    events, _ = decode(pieces)
    assert events == reference_events(stream)


def test_event_boundary_is_after_a_blank_line_only() -> None:
    decoder = SSEDecoder()
    assert decoder.at_event_boundary
    for piece, at_boundary in [
        (b"data: a\n\n", True),
        (b": ping\n", False),  # a comment line belongs to the event that follows
        (b"\n", True),
        (b"id: 7\n", False),
        (b"data: b\n", False),
        (b"\n", True),
        (b"data: c\r\n\r", False),  # the last "\r" may be half of "\r\n"
        (b"\n", True),
    ]:
        decoder.feed(piece)
        assert decoder.at_event_boundary is at_boundary, piece


def test_skipped_bytes_move_the_offsets_of_later_events() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n") == [(b"", b"a", 0, 9)]
    decoder.skip(100)  # whole events the caller read itself
    assert decoder.feed(b"data: b\n\ndata: c\n") == [(b"", b"b", 109, 118)]
    assert decoder.feed(b"\n") == [(b"", b"c", 118, 127)]
    assert decoder.event_start == 127


def test_skipping_inside_an_event_is_refused() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\ndata: b")
    with pytest.raises(ValueError, match="skip 5 bytes at stream offset 16: the event that started at 9 is not"):
        decoder.skip(5)
