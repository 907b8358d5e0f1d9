"""The stream fast path reads exactly what a full json.loads reads, or declines."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inspect_support import run

from canaryproxy.core.types import Role
from canaryproxy.inspection import Inspection, InspectionSettings, TextRule
from canaryproxy.inspection import estimate
from canaryproxy.inspection.fastpath import DeltaTemplate
from canaryproxy.inspection.findings import Findings, TextSink

# Any code point, lone surrogates included (JSON can carry them as \ud800 escapes).
TEXTS = st.text(st.characters(exclude_categories=()), max_size=40)


@dataclass(frozen=True)
class Shape:
    """One kind of delta event: its bytes around the string, and where json.loads finds the string."""

    name: str
    marker: bytes
    build: Callable[[bytes, int], bytes]  # (JSON string literal, event number) -> event data
    value: Callable[[Any], str]


def _chat(literal: bytes, number: int) -> bytes:
    return (
        b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741569952,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":' + literal + b'},"logprobs":null,"finish_reason":null}]}'
    )


def _chat_obfuscated(literal: bytes, number: int) -> bytes:
    return (
        b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o",'
        b'"choices":[{"index":0,"delta":{"content":' + literal + b'},"logprobs":null,"finish_reason":null}],'
        b'"usage":null,"obfuscation":"' + b"xyz"[: number % 4] + b'"}'
    )


def _responses(literal: bytes, number: int) -> bytes:
    return (
        b'{"type":"response.output_text.delta","sequence_number":' + str(number).encode()
        + b',"item_id":"msg_1","output_index":0,"content_index":0,"delta":' + literal + b',"logprobs":[]}'
    )


def _anthropic(literal: bytes, number: int) -> bytes:
    return b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":' + literal + b"}}"


SHAPES = [
    Shape("chat", b'"content":"', _chat, lambda event: event["choices"][0]["delta"]["content"]),
    Shape("chat+obfuscation", b'"content":"', _chat_obfuscated, lambda event: event["choices"][0]["delta"]["content"]),
    Shape("responses", b'"delta":"', _responses, lambda event: event["delta"]),
    Shape("anthropic", b'"text":"', _anthropic, lambda event: event["delta"]["text"]),
]


def literal(text: str, ensure_ascii: bool) -> bytes:
    return json.dumps(text, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def findings() -> Findings:
    return Findings(Inspection(), lambda: 0.0, started=0.0, role=Role.STABLE, keep_text=True,
                    keep_tool_arguments=False, cap=1 << 20)


def learned(shape: Shape, sink: TextSink | None) -> DeltaTemplate:
    template = DeltaTemplate.learn(shape.build(b'"Hello"', 1), shape.marker, "Hello", sink)
    assert template is not None
    return template


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
@settings(max_examples=200, deadline=None)
@given(text=TEXTS, ensure_ascii=st.booleans(), keep=st.booleans(), number=st.integers(0, 10**6))
def test_fast_path_reads_what_json_loads_reads(shape: Shape, text: str, ensure_ascii: bool, keep: bool,
                                               number: int) -> None:
    sink = TextSink(1 << 20) if keep else None
    template = learned(shape, sink)
    event = shape.build(literal(text, ensure_ascii), number)
    found = findings()
    assert template.apply(event, found)
    expected = shape.value(json.loads(event))
    assert found.output_chars == len(expected)
    if sink is not None:
        assert sink.text() == expected


@pytest.mark.parametrize(
    "event",
    [
        _chat(b'"x"', 0).replace(b'"finish_reason":null', b'"finish_reason":"stop"'),
        _chat(b'"x"', 0).replace(b'"index":0', b'"index":1'),
        _chat(b'"x","refusal":"no"', 0),
        _chat(b'"a"b"', 0),  # an unescaped quote: not JSON
        _chat(b'"a\x01b"', 0),  # a raw control character: not JSON
        _chat(b'"a\\xb"', 0),  # an invalid escape
        _chat(b'"a\\u12"', 0),  # a short \u escape
        _chat(b'"x"', 0) + b" ",
        b"x" + _chat(b'"x"', 0),
    ],
    ids=["finish reason", "other choice", "extra member", "quote", "control", "escape", "short unicode",
         "trailing byte", "leading byte"],
)
def test_fast_path_declines_anything_else(event: bytes) -> None:
    template = learned(SHAPES[0], None)
    found = findings()
    assert not template.apply(event, found)
    assert found.output_chars == 0


def on_wire(data: bytes, event_type: bytes = b"") -> bytes:
    return (b"event: " + event_type + b"\n" if event_type else b"") + b"data: " + data + b"\n\n"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
@settings(max_examples=100, deadline=None)
@given(text=TEXTS, ensure_ascii=st.booleans(), keep=st.booleans(), number=st.integers(0, 10**6),
       event_type=st.sampled_from([b"", b"delta"]))
def test_wire_form_reads_what_json_loads_reads(shape: Shape, text: str, ensure_ascii: bool, keep: bool,
                                               number: int, event_type: bytes) -> None:
    sink = TextSink(1 << 20) if keep else None
    template = DeltaTemplate.learn(shape.build(b'"Hello"', 1), shape.marker, "Hello", sink, event_type)
    assert template is not None
    event = shape.build(literal(text, ensure_ascii), number)
    chunk = on_wire(event, event_type) + on_wire(shape.build(literal(text, ensure_ascii), number + 1), event_type)
    found = findings()
    assert template.read_events(chunk, found) == len(chunk)  # two whole events
    expected = shape.value(json.loads(event))
    assert found.output_chars == 2 * len(expected)
    if sink is not None:
        assert sink.text() == 2 * expected


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.tuples(TEXTS, st.booleans(), st.sampled_from(["delta", "delta", "other"])),
                       min_size=1, max_size=12))
def test_a_read_of_many_events_reads_them_up_to_the_first_of_another_shape(
        events: list[tuple[str, bool, str]]) -> None:
    """Several events in one chunk, as reads bring them under load: plain, escaped or not ASCII
    strings (each read as json.loads reads it), up to the first event of another shape."""
    template = learned(SHAPES[0], None)
    chunk, expected_chars, expected_taken, declined = b"", 0, 0, False
    for text, ensure_ascii, kind in events:
        if kind == "other":
            event = on_wire(DECLINED_EVENTS[0])
            declined = True
        else:
            event = on_wire(_chat(literal(text, ensure_ascii), 0))
            if not declined:
                expected_chars += len(SHAPES[0].value(json.loads(event[6:])))
                expected_taken += len(event)
        chunk += event
    found = findings()
    assert template.read_events(chunk, found) == expected_taken
    assert found.output_chars == expected_chars


DECLINED_EVENTS = [
    _chat(b'"x"', 0).replace(b'"finish_reason":null', b'"finish_reason":"stop"'),
    _chat(b'"a"b"', 0),
    _chat(b'"a\x01b"', 0),
    _chat(b'"a\xffb"', 0),
    _chat(b'"a\\xb"', 0),
    _chat(b'"x"', 0) + b" ",
]


@pytest.mark.parametrize(
    "chunk",
    [
        *(on_wire(event) for event in DECLINED_EVENTS),
        b"data:" + _chat(b'"x"', 0) + b"\n\n",  # no space: the template's wire form has one
        b"data: " + _chat(b'"x"', 0) + b"\r\n\r\n",
        b"data: " + _chat(b'"x"', 0) + b"\nid: 1\n\n",
        b"data: " + _chat(b'"x"', 0) + b"\ndata: x\n\n",
        on_wire(_chat(b'"x"', 0), b"delta"),  # an event type the learned event did not have
        on_wire(_chat(b'"x"', 0))[:-1],  # not whole
    ],
)
def test_wire_form_declines_anything_else(chunk: bytes) -> None:
    template = learned(SHAPES[0], None)
    found = findings()
    assert template.read_events(chunk, found) == 0
    assert found.output_chars == 0
    first = on_wire(_chat(b'"abc"', 0))
    assert template.read_events(first + chunk, found) == len(first)  # reads up to the first it declines
    assert found.output_chars == 3


def test_volatile_values_must_stay_plain() -> None:
    template = learned(SHAPES[1], None)
    plain = _chat_obfuscated(b'"x"', 2)
    assert template.apply(plain, findings())
    assert not template.apply(plain.replace(b'"obfuscation":"xy"', b'"obfuscation":"x\\"y"'), findings())
    assert not template.apply(plain.replace(b'"obfuscation":"xy"', b'"obfuscation":7'), findings())
    responses = learned(SHAPES[2], None)
    assert not responses.apply(_responses(b'"x"', 3).replace(b'"sequence_number":3', b'"sequence_number":03'),
                               findings())


@pytest.mark.parametrize(
    "data",
    [
        b'{"choices":[{"delta":{"content": "Hello"}}]}',  # spaces after the colon: no marker
        b'{"choices":[{"delta":{"content":"Hello"}}],"x":{"content":"Hello"}}',  # the marker twice
        b'{"choices":[{"delta":{"content":"Hi"}}]}',  # the string at the marker is not the value
    ],
)
def test_learning_declines_when_the_string_is_not_certain(data: bytes) -> None:
    assert DeltaTemplate.learn(data, b'"content":"', "Hello", None) is None


CHUNK = ('{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1741570000,"model":"m",'
         '"choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}')


def chat_stream(contents: list[str], ensure_ascii: bool) -> bytes:
    events = [CHUNK % ('{"role":"assistant","content":""}', "null")]
    events += [CHUNK % (json.dumps({"content": text}, ensure_ascii=ensure_ascii), "null") for text in contents]
    events.append(CHUNK % ("{}", '"stop"'))
    return b"".join(b"data: " + event.encode("utf-8", "surrogatepass") + b"\n\n" for event in events) + b"data: [DONE]\n\n"


def slow_reference(stream: bytes) -> str:
    """The output text, by json.loads of every event."""
    text = []
    for line in stream.split(b"\n\n"):
        if line.startswith(b"data: {"):
            text.append(json.loads(line[6:])["choices"][0]["delta"].get("content", ""))
    return "".join(text)


@settings(max_examples=100, deadline=None)
@given(contents=st.lists(st.text(max_size=12), max_size=30), ensure_ascii=st.booleans(), keep=st.booleans())
def test_stream_numbers_match_the_slow_reference(contents: list[str], ensure_ascii: bool, keep: bool) -> None:
    stream = chat_stream(contents, ensure_ascii)
    expected = slow_reference(stream)
    # A text rule that matches only the whole output exactly makes the inspector keep the text, and
    # tells whether what it kept is that text.
    rules = (TextRule("exact", re.compile(r"\A" + re.escape(expected) + r"\Z")),) if keep else ()
    settings_ = InspectionSettings(text_rules=rules)
    chunks = [event + b"\n\n" for event in stream.split(b"\n\n")[:-1]]  # one event per chunk
    forwarded, outcome = run("/v1/chat/completions", {"model": "m", "stream": True}, chunks, settings=settings_)
    assert forwarded == stream
    assert outcome.output_chars == len(expected)
    # Every path counts the same deltas (the non-empty contents) as the full reader would.
    deltas = sum(1 for text in contents if text)
    assert (outcome.completion_tokens, outcome.estimated_tokens) == (
        (estimate.completion_tokens(len(expected), deltas),) * 2)
    assert outcome.guardrails == (("exact",) if keep and expected else ())
