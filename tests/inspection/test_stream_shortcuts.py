"""The stream inspector's short cuts read exactly what the decoder and json.loads read.

The short cuts (a chunk that is one delta event of the learned shape, whole delta events read on
the wire, `data: [DONE]`) only apply to chunks that start at an event boundary. So the same stream
is fed one event per chunk (short cuts wherever they apply), whole (several events per chunk), byte
by byte (never a short cut) and cut at random: every way must give the same outcome and forward the
same bytes, and those must be what json.loads of each event says. The streams hold what must make a
short cut decline: escapes, non-ASCII, strings that are not JSON (raw control bytes, line breaks,
invalid UTF-8, stray quotes, bad escapes), events with bytes after their JSON, other framings
("data:" without a space, an `id:` line, a comment line in the event).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inspect_support import as_dict, run, split_at

from canaryproxy.core.types import Outcome
from canaryproxy.inspection import InspectionSettings, TextRule

CHAT = "/v1/chat/completions"
NOT_JSON_STRINGS = [
    b'"a\x01b"', b'"a\nb"', b'"a\rb"', b'"a\xffb"', b'"\xc3"', b'"a"b"', b'"a\\qb"', b'"a\\u12"', b'"', b'"ab'
]
PLAIN = "abc xyz"


def literal(text: str, ensure_ascii: bool = True) -> bytes:
    return json.dumps(text, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


@st.composite
def delta_literals(draw: st.DrawFn) -> bytes:
    """A delta's JSON string as a server writes it, or (rarely) bytes that are not one. Plain
    ASCII, what the quick path takes, is the most common, as in real streams."""
    kind = draw(st.integers(0, 19))
    if kind < 8:
        return literal(draw(st.text(PLAIN, min_size=1, max_size=6)))
    if kind < 10:
        return literal(draw(st.text(PLAIN, min_size=50, max_size=80)))  # longer than the tail
    if kind < 12:
        return literal(draw(st.text(PLAIN + "é€😀", min_size=1, max_size=6)), ensure_ascii=False)
    if kind < 15:
        return literal(draw(st.text(PLAIN + '"\\\n\t', max_size=6)))  # escapes
    if kind < 19:
        return literal(draw(st.text(st.characters(exclude_categories=()), max_size=6)), draw(st.booleans()))
    return draw(st.sampled_from(NOT_JSON_STRINGS))


@dataclass(frozen=True)
class Stream:
    wire: list[bytes]  # the stream as a server writes it, one event (or comment line) per item
    events: list[bytes]  # the data of every event but [DONE]: what json.loads reads
    deltas: list[bytes]  # the data of the content deltas
    usage_event: bytes  # the item of `wire` that carries the usage event
    ends_properly: bool  # a finish reason or [DONE]


def chat_event(delta: bytes, finish: bytes = b"null", padding: bytes | None = None) -> bytes:
    event = (
        b'{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1741569952,"model":"m",'
        b'"choices":[{"index":0,"delta":' + delta + b',"logprobs":null,"finish_reason":' + finish + b"}]"
    )
    if padding is not None:  # OpenAI's `obfuscation`: a value that differs in every event
        event += b',"usage":null,"obfuscation":"' + padding + b'"'
    return event + b"}"


@st.composite
def chat_streams(draw: st.DrawFn) -> Stream:
    padded = draw(st.booleans())

    def padding() -> bytes | None:
        return b"xyz0"[: draw(st.integers(0, 4))] if padded else None

    def spoiled(data: bytes) -> bytes:
        """Now and then, bytes after the JSON object: the event is not JSON."""
        return data + draw(st.sampled_from([b"}", b"x", b'"'])) if draw(st.integers(0, 49)) == 0 else data

    # The first delta teaches the inspector the shape of the rest: plain, so that they can follow it.
    first = literal(draw(st.text(PLAIN, min_size=1, max_size=4)))
    deltas = [chat_event(b'{"content":' + first + b"}", padding=padding())]
    deltas += [
        spoiled(chat_event(b'{"content":' + draw(delta_literals()) + b"}", padding=padding()))
        for _ in range(draw(st.integers(0, 10)))
    ]
    events = [spoiled(chat_event(b'{"role":"assistant","content":""}', padding=padding())), *deltas]
    finishes = draw(st.booleans())
    if finishes:
        events.append(spoiled(chat_event(b"{}", b'"stop"', padding=padding())))
    usage = spoiled(b'{"id":"chatcmpl-7","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}')
    events.append(usage)

    wire = []
    for position, data in enumerate(events):
        framing = draw(
            st.sampled_from(["plain"] * 5 + ["no space", "id line", "comment line", "second data line"])
        )
        if framing == "no space":
            wire.append(b"data:" + data + b"\n\n")
        elif framing == "id line":
            wire.append(b"data: " + data + b"\nid: 7\n\n")
        elif framing == "second data line" and data is not usage:
            wire.append(b"data: " + data + b"\ndata: {}\n\n")  # its data is two lines: not JSON
            events[position] = data + b"\n{}"
        else:
            if framing == "comment line" and data is not usage:
                wire.append(b": ping\n")  # a line of this event's block, in a chunk of its own
            wire.append(b"data: " + data + b"\n\n")
    usage_event = wire[-1]
    if draw(st.booleans()):
        wire.insert(draw(st.integers(1, len(wire) - 1)), b": keep-alive\n\n")
    done = draw(st.booleans())
    if done:
        wire.append(b"data: [DONE]\n\n")
    return Stream(wire, events, deltas, usage_event, finishes or done)


def reference_text(stream: Stream) -> str | None:
    """The output text by json.loads, or None when some event is not JSON."""
    try:
        for data in stream.events:
            json.loads(data)
    except ValueError:
        return None
    return "".join(json.loads(delta)["choices"][0]["delta"]["content"] for delta in stream.deltas)


def feed_every_way(
    stream: Stream, feed: Callable[[list[bytes]], tuple[bytes, Outcome]], cuts: list[int]
) -> tuple[bytes, Outcome]:
    body = b"".join(stream.wire)
    ways = {
        "one event per chunk": list(stream.wire),
        "whole": [body],
        "byte by byte": [body[i : i + 1] for i in range(len(body))],
        "random cuts": split_at(body, cuts),
    }
    results = {name: feed(pieces) for name, pieces in ways.items()}
    forwarded, outcome = results["one event per chunk"]
    for name, (other_forwarded, other_outcome) in results.items():
        assert as_dict(other_outcome) == as_dict(outcome), name
        assert other_forwarded == forwarded, name
    return forwarded, outcome


@settings(max_examples=200, deadline=None)
@given(stream=chat_streams(), asks_for_usage=st.booleans(), keeps_text=st.booleans(), data=st.data())
def test_every_way_of_feeding_reads_what_json_loads_reads(
    stream: Stream, asks_for_usage: bool, keeps_text: bool, data: st.DataObject
) -> None:
    expected_text = reference_text(stream)
    request = {"model": "m", "stream": True, **({"stream_options": {"include_usage": True}} if asks_for_usage else {})}
    # A text rule that matches exactly the whole output makes the inspector keep the text (no
    # quick path), and tells whether what it kept is that text.
    exact = re.escape(expected_text or "")
    rules = (TextRule("exact", re.compile(r"\A" + exact + r"\Z")),) if keeps_text else ()
    body = b"".join(stream.wire)
    # Cuts at event starts, and in some events a second one: chunks that start at a boundary and
    # end inside an event (in a delta's string, say).
    cuts = []
    for start, item in zip(accumulate(map(len, stream.wire), initial=0), stream.wire):
        if data.draw(st.booleans()):
            cuts.append(start)
            if data.draw(st.booleans()):
                cuts.append(start + data.draw(st.integers(1, len(item))))

    def feed(pieces: list[bytes]) -> tuple[bytes, Outcome]:
        return run(CHAT, request, pieces, settings=InspectionSettings(text_rules=rules))

    forwarded, outcome = feed_every_way(stream, feed, cuts)

    if expected_text is None:  # an event that is not JSON: from there on, bytes pass through unread
        assert outcome.inspect_error
        assert forwarded == body
        return
    assert not outcome.inspect_error
    assert (outcome.output_chars, outcome.prompt_tokens, outcome.completion_tokens) == (len(expected_text), 3, 4)
    assert outcome.truncated is not stream.ends_properly
    assert outcome.guardrails == (("exact",) if keeps_text and expected_text else ())
    assert forwarded == (body if asks_for_usage else body.replace(stream.usage_event, b""))


# --- the edges of the checks, one by one ---------------------------------------------------------


def wire(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


LONG = b"x" * 60  # longer than the template's tail


def delta(string: bytes, padding: bytes | None, finish: bytes = b"null") -> bytes:
    return wire(chat_event(b'{"content":' + string + b"}", finish, padding))


def tail_in_the_next_chunk(padding: bytes | None) -> list[bytes]:
    """The head and most of a long string in one chunk, the rest in the next."""
    event = delta(b'"' + LONG + b'"', padding)
    return split_at(event, [event.index(LONG) + 55])


def end_cut_short(padding: bytes | None) -> list[bytes]:
    """The padding string without its closing quote (or, unpadded, the event's last brace)."""
    event = delta(b'"abc"', padding)
    return [event.replace(b'"}\n\n', b"}\n\n") if padding is not None else event.replace(b"}]}\n\n", b"}]\n\n")]


# (chunks after the template is learned from "Hi", output characters or None for "not JSON")
CHUNKS: dict[str, tuple[Callable[[bytes | None], list[bytes]], int | None]] = {
    "plain": (lambda padding: [delta(b'"abc"', padding), delta(b'"d"', padding)], 2 + 3 + 1),
    "empty": (lambda padding: [delta(b'""', padding)], 2),
    "tail in the next chunk": (tail_in_the_next_chunk, 2 + 60),
    "escape": (lambda padding: [delta(b'"a\\tb"', padding)], 2 + 3),
    "UTF-8": (lambda padding: [delta(b'"\xc3\xa9t\xc3\xa9"', padding)], 2 + 3),
    # The head's quote taken for the tail's: {"content":"}, not JSON.
    "overlap": (lambda padding: [delta(b'"', padding)], None),
    "raw tab": (lambda padding: [delta(b'"a\tb"', padding)], None),
    "not UTF-8": (lambda padding: [delta(b'"\xc3"', padding)], None),
    "end cut short": (end_cut_short, None),
}


@pytest.mark.parametrize("padding", [None, b"xy"], ids=["plain", "padded"])
@pytest.mark.parametrize("name", list(CHUNKS))
def test_chunks_of_the_learned_shape(name: str, padding: bytes | None) -> None:
    make_chunks, output_chars = CHUNKS[name]
    chunks = make_chunks(padding)
    stream = [wire(chat_event(b'{"role":"assistant","content":""}', padding=padding)), delta(b'"Hi"', padding),
              *chunks, b"data: [DONE]\n\n"]
    request = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    forwarded, outcome = run(CHAT, request, stream)
    assert forwarded == b"".join(stream)
    assert (outcome.inspect_error, outcome.output_chars) == (
        (False, output_chars) if output_chars is not None else (True, None)
    )


def test_a_padding_that_is_only_its_opening_quote_is_not_json() -> None:
    # "obfuscation":"} : the tail's last quote taken for the padding's closing one.
    stream = [delta(b'"Hi"', b"xy"), delta(b'"abc"', b"xy").replace(b'"xy"}', b'"}'), delta(b'"d"', b"xy")]
    forwarded, outcome = run(CHAT, {"model": "m", "stream": True, "stream_options": {"include_usage": True}}, stream)
    assert forwarded == b"".join(stream)
    assert outcome.inspect_error


@pytest.mark.parametrize("padding", [None, b"xy"], ids=["plain", "padded"])
def test_a_different_tail_of_the_same_length_is_read_in_full(padding: bytes | None) -> None:
    stream = [delta(b'"Hi"', padding), delta(b'"abc"', padding, finish=b'"ab"'), delta(b'"d"', padding)]
    _, outcome = run(CHAT, {"model": "m", "stream": True}, stream)  # "ab" is as long as null
    assert (outcome.output_chars, outcome.finish_reason, outcome.truncated) == (6, "ab", False)
