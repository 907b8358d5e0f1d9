"""How the inspectors behave over time: forwarding, holding back, timing, endings, giving up."""

from __future__ import annotations

import json

from inspect_support import STARTED, as_dict, fixture, run
from multidict import CIMultiDict

from canaryproxy.clock import ManualClock
from canaryproxy.core.types import Role, Outcome
from canaryproxy.inspection import Inspection, InspectionSettings, PassThrough, apply, inspector_for, read_request

CHAT = "/v1/chat/completions"
SETTINGS = InspectionSettings()


def chat_chunk(delta: dict, finish: str | None = None, index: int = 0) -> bytes:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
USAGE = b'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'


class Inspecting:
    """An inspector as the data plane drives it: when the body ends, the inspection is applied to
    the outcome (`complete` False: the transport cut the body short)."""

    def __init__(self, inspector, inspection: Inspection, outcome: Outcome) -> None:
        self.inspector = inspector
        self.inspection = inspection
        self.outcome = outcome

    def feed(self, chunk: bytes) -> bytes:
        return self.inspector.feed(chunk)

    def finish(self, complete: bool) -> bytes:
        rest = self.inspector.finish(complete)
        apply(self.outcome, self.inspection, cut_short=not complete)
        return rest


def start(request: dict, *, content_type: str = "text/event-stream", status: int = 200,
          headers: dict[str, str] | None = None, settings: InspectionSettings = SETTINGS, clock: ManualClock | None = None):
    _, facts = read_request(CHAT, json.dumps(request).encode(), settings)
    started = clock.monotonic() if clock else STARTED
    outcome = Outcome(role=Role.STABLE, started=started)
    now = clock.monotonic if clock else (lambda: STARTED)
    inspection = Inspection()
    inspector = inspector_for(facts, status, content_type, CIMultiDict(headers or {}), inspection, settings,
                              role=Role.STABLE, started=started, now=now)
    return Inspecting(inspector, inspection, outcome), outcome


def test_chunks_are_forwarded_as_the_same_objects() -> None:
    inspector, _ = start({"model": "m", "stream": True, "stream_options": {"include_usage": True}})
    for chunk in [chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": "Hi"}), b"data: {\"cho",
                  b'ices":[]}\n\n', chat_chunk({}, "stop"), USAGE, DONE]:
        assert inspector.feed(chunk) is chunk
    assert inspector.finish(True) == b""


def test_ttft_is_the_first_content_not_the_first_byte() -> None:
    clock = ManualClock(monotonic=50.0)
    inspector, outcome = start({"model": "m", "stream": True}, clock=clock)
    clock.advance(0.5)
    inspector.feed(chat_chunk({"role": "assistant", "content": ""}))  # role only: no token yet
    clock.advance(1.0)
    inspector.feed(chat_chunk({"content": "Hello"}))
    clock.advance(2.0)
    inspector.feed(chat_chunk({"content": " there"}) + chat_chunk({}, "stop") + DONE)
    inspector.finish(True)
    assert outcome.ttft == 1.5


def test_first_tool_call_arguments_count_as_the_first_token() -> None:
    clock = ManualClock(monotonic=50.0)
    inspector, outcome = start({"model": "m", "stream": True}, clock=clock)
    clock.advance(0.25)
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    inspector.feed(chat_chunk({"role": "assistant", "content": None, "tool_calls": [call]}))
    clock.advance(0.25)
    inspector.feed(chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
    assert inspector.finish(False) == b""
    assert (outcome.ttft, outcome.output_chars, outcome.truncated) == (0.5, 2, True)


def test_usage_event_is_held_only_while_incomplete() -> None:
    inspector, outcome = start({"model": "m", "stream": True})  # the proxy injects include_usage
    first, second = chat_chunk({"content": "Hi"}), chat_chunk({}, "stop")
    assert inspector.feed(first + second[:10]) == first  # the partial event waits for its blank line
    assert inspector.feed(second[10:] + USAGE[:20]) == second
    assert inspector.feed(USAGE[20:]) == b""  # the usage event is not the client's
    assert inspector.feed(DONE) is DONE
    assert inspector.finish(True) == b""
    assert (outcome.prompt_tokens, outcome.completion_tokens, outcome.usage_missing) == (3, 2, False)


def test_held_bytes_are_released_at_the_end() -> None:
    inspector, outcome = start({"model": "m", "stream": True})
    assert inspector.feed(chat_chunk({"content": "Hi"})[:-2]) == b""
    assert inspector.finish(False) == chat_chunk({"content": "Hi"})[:-2]
    assert outcome.truncated


def test_an_abnormal_end_is_a_truncation_even_after_done() -> None:
    inspector, outcome = start({"model": "m", "stream": True, "response_format": {"type": "json_object"}})
    inspector.feed(chat_chunk({"content": "{}"}, "stop") + DONE)
    inspector.finish(False)
    assert outcome.truncated
    assert outcome.schema_ok is None  # a cut-off answer is not judged


def test_an_error_inside_the_stream_is_a_truncation() -> None:
    inspector, outcome = start({"model": "m", "stream": True})
    inspector.feed(chat_chunk({"content": "Hi"}))
    inspector.feed(b'data: {"error":{"message":"CUDA out of memory","type":"InternalServerError","code":500}}\n\n')
    inspector.feed(DONE)
    inspector.finish(True)
    assert outcome.truncated


def test_malformed_event_turns_the_inspector_into_a_pass_through() -> None:
    inspector, outcome = start({"model": "m", "stream": True})
    first = chat_chunk({"content": "Hi"})
    assert inspector.feed(first + b"data: {not json") == first
    bad = b"}\n\n"
    assert inspector.feed(bad) == b"data: {not json}\n\n"  # what was held comes out with it
    later = USAGE + DONE
    assert inspector.feed(later) is later  # nothing read, nothing dropped any more
    assert inspector.finish(False) == b""
    assert (outcome.inspect_error, outcome.truncated, outcome.output_chars) == (True, True, None)


def test_keepalive_comments_and_ping_events_change_nothing() -> None:
    stream = fixture("anthropic_messages_stream.sse")
    with_comments = stream.replace(b"\n\nevent: content_block_delta", b"\n\n: keep-alive\n\nevent: content_block_delta")
    _, plain = run("/v1/messages", {"model": "c", "stream": True}, [stream])
    forwarded, commented = run("/v1/messages", {"model": "c", "stream": True}, [with_comments])
    assert forwarded == with_comments
    assert as_dict(commented) == as_dict(plain)


def test_anthropic_refusal_and_error_events() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude","usage":'
        b'{"input_tokens":10,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"refusal"},'
        b'"usage":{"output_tokens":3}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    _, outcome = run("/v1/messages", {"model": "c", "stream": True}, [stream])
    assert (outcome.guardrails, outcome.finish_reason, outcome.truncated) == (("refusal",), "refusal", False)
    overloaded = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    message_start = stream[: stream.index(b"\n\n") + 2]
    _, outcome = run("/v1/messages", {"model": "c", "stream": True}, [message_start, overloaded])
    assert outcome.truncated
    assert (outcome.prompt_tokens, outcome.usage_missing) == (10, True)


def test_responses_incomplete_for_content_filter() -> None:
    stream = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":1,'
        b'"output_index":0,"content_index":0,"delta":"Once"}\n\n'
        b'event: response.incomplete\ndata: {"type":"response.incomplete","sequence_number":2,"response":'
        b'{"model":"gpt-4o","status":"incomplete","incomplete_details":{"reason":"content_filter"},'
        b'"usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
    )
    _, outcome = run("/v1/responses", {"model": "gpt-4o", "stream": True}, [stream])
    assert (outcome.finish_reason, outcome.guardrails, outcome.truncated) == ("content_filter", ("content_filter",), False)


def test_several_choices_are_counted_and_checked_each() -> None:
    request = {"model": "m", "n": 2, "response_format": {"type": "json_object"}}
    body = json.dumps({"model": "m", "choices": [
        {"index": 0, "message": {"content": '{"a": 1}'}, "finish_reason": "stop"},
        {"index": 1, "message": {"content": "not json"}, "finish_reason": "stop"},
    ], "usage": {"prompt_tokens": 4, "completion_tokens": 9}}).encode()
    _, outcome = run(CHAT, request, [body], content_type="application/json")
    assert (outcome.output_chars, outcome.schema_ok) == (16, False)


def test_a_body_over_the_cap_is_passed_on_uninspected() -> None:
    body = fixture("openai_chat_reasoning.json")
    forwarded, outcome = run(CHAT, {"model": "m"}, [body[:100], body[100:]], content_type="application/json",
                             settings=InspectionSettings(max_json_body_bytes=len(body) - 1))
    assert forwarded == body
    assert (outcome.inspect_error, outcome.prompt_tokens, outcome.model) == (False, None, "m")


def test_a_body_that_ended_abnormally_is_not_parsed() -> None:
    body = fixture("openai_chat_reasoning.json")
    _, outcome = run(CHAT, {"model": "m"}, [body], content_type="application/json", complete=False)
    assert (outcome.inspect_error, outcome.prompt_tokens) == (False, None)


def test_responses_we_cannot_read_get_the_pass_through() -> None:
    request = {"model": "m", "stream": True}
    for kwargs in (
        dict(headers={"Content-Encoding": "gzip"}, content_type="application/json"),
        dict(status=500),
        dict(content_type="text/plain"),
    ):
        inspecting, _ = start(request, **kwargs)
        assert isinstance(inspecting.inspector, PassThrough)
        assert (inspecting.inspection.route, inspecting.inspection.model) == ("chat.completions", "m")
