"""Every fixture, in the exact wire format of its API, read whole and split in every way.

Each case states the whole Outcome it must produce (every field, defaults included), and which
bytes the client must not see (the usage event the proxy asked for). Splitting the body at every
byte offset, or into random pieces, must change nothing: not the outcome, not the forwarded bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inspect_support import FIRST_TOKEN_AT, STARTED, as_dict, fixture, run, split_at

from canaryproxy.core.types import Role, Outcome
from canaryproxy.inspection import InspectionSettings, Price, PriceTable

TTFT = FIRST_TOKEN_AT - STARTED
PRICES = PriceTable(models={"gpt-4o-2024-08-06": Price(2.5, 10.0)}, roles={Role.CANARY: Price(1.0, 2.0)})
SETTINGS = InspectionSettings(prices=PRICES)
NO_INJECTION = InspectionSettings(prices=PRICES, inject_stream_usage=False)
JSON = "application/json"
SSE = "text/event-stream"

CHAT = "/v1/chat/completions"
WEATHER_TOOL = {
    "type": "object",
    "properties": {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["location"],
}


def gpt4o_cost(prompt: int, completion: int) -> float:
    return (prompt * 2.5 + completion * 10.0) / 1e6


def canary_cost(prompt: int, completion: int) -> float:
    return (prompt * 1.0 + completion * 2.0) / 1e6


@dataclass(frozen=True)
class Case:
    name: str
    fixture: str
    path: str
    request: dict[str, Any]
    expect: dict[str, Any]
    content_type: str = SSE
    status: int = 200
    settings: InspectionSettings = SETTINGS
    drops_usage_event: bool = False

    def expected_outcome(self) -> dict[str, Any]:
        expected = as_dict(Outcome(role=Role.CANARY, started=STARTED))
        expected.update(self.expect)
        return expected

    def expected_forwarded(self, data: bytes, line_end: bytes = b"\n") -> bytes:
        if not self.drops_usage_event:
            return data
        boundary = line_end * 2
        usage_events = [
            event + boundary
            for event in data.split(boundary)
            if b'"choices":[]' in event and b'"usage":{' in event
        ]
        assert len(usage_events) == 1
        return data.replace(usage_events[0], b"")


CASES = [
    Case(
        "chat stream, usage injected by the proxy",
        "openai_chat_stream.sse",
        CHAT,
        {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
        dict(route="chat.completions", estimated_tokens=10, stream=True, model="gpt-4o-2024-08-06", ttft=TTFT, prompt_tokens=19,
             completion_tokens=12, reasoning_tokens=0, output_chars=34, finish_reason="stop",
             cost_usd=pytest.approx(gpt4o_cost(19, 12))),
        drops_usage_event=True,
    ),
    Case(
        "chat stream, usage asked for by the client",
        "openai_chat_stream.sse",
        CHAT,
        {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}, "messages": []},
        dict(route="chat.completions", estimated_tokens=10, stream=True, model="gpt-4o-2024-08-06", ttft=TTFT, prompt_tokens=19,
             completion_tokens=12, reasoning_tokens=0, output_chars=34, finish_reason="stop",
             cost_usd=pytest.approx(gpt4o_cost(19, 12))),
    ),
    Case(
        "chat stream, upstream ignores the usage request",
        "vllm_chat_stream_no_usage.sse",
        CHAT,
        {"model": "llama", "stream": True, "stream_options": {"include_usage": False}, "messages": []},
        dict(route="chat.completions", estimated_tokens=5, stream=True, model="meta-llama/Llama-3.1-8B-Instruct", ttft=TTFT,
             completion_tokens=5, usage_missing=True, output_chars=17, finish_reason="length"),
    ),
    Case(
        "chat stream cut off: no finish reason, no [DONE]",
        "openai_chat_stream_truncated.sse",
        CHAT,
        {"model": "llama", "stream": True, "response_format": {"type": "json_object"}},
        dict(route="chat.completions", estimated_tokens=3, stream=True, model="meta-llama/Llama-3.1-8B-Instruct", ttft=TTFT,
             truncated=True, completion_tokens=3, usage_missing=True, output_chars=13),
        settings=NO_INJECTION,
    ),
    Case(
        "chat stream with two tool calls, arguments split over deltas",
        "openai_chat_stream_tools.sse",
        CHAT,
        {"model": "gpt-4o-mini", "stream": True, "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL}},
            {"type": "function", "function": {"name": "get_time"}}]},
        dict(route="chat.completions", estimated_tokens=16, stream=True, model="gpt-4o-mini-2024-07-18", ttft=TTFT,
             completion_tokens=16, usage_missing=True, output_chars=73, finish_reason="tool_calls", schema_ok=True),
    ),
    Case(
        "chat stream with tool arguments that miss a required property",
        "openai_chat_stream_tools.sse",
        CHAT,
        {"model": "gpt-4o-mini", "stream": True, "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"required": ["city"]}}}]},
        dict(route="chat.completions", estimated_tokens=16, stream=True, model="gpt-4o-mini-2024-07-18", ttft=TTFT,
             completion_tokens=16, usage_missing=True, output_chars=73, finish_reason="tool_calls", schema_ok=False),
    ),
    Case(
        "Azure chat stream: prompt annotations, then a filtered completion",
        "azure_chat_stream_filtered.sse",
        "/openai/deployments/gpt4o/chat/completions",
        {"stream": True, "messages": []},
        dict(route="chat.completions", estimated_tokens=3, stream=True, model="gpt-4o-2024-11-20", ttft=TTFT, completion_tokens=3,
             usage_missing=True, output_chars=10, finish_reason="content_filter",
             guardrails=("content_filter", "azure_content_filter")),
    ),
    Case(
        "legacy completions stream, usage asked for by the client",
        "openai_completions_stream.sse",
        "/v1/completions",
        {"model": "gpt-3.5-turbo-instruct", "stream": True, "stream_options": {"include_usage": True}},
        dict(route="completions", estimated_tokens=6, stream=True, model="gpt-3.5-turbo-instruct", ttft=TTFT, prompt_tokens=5,
             completion_tokens=7, output_chars=17, finish_reason="stop", cost_usd=pytest.approx(canary_cost(5, 7))),
    ),
    Case(
        "legacy completions stream, usage injected by the proxy",
        "openai_completions_stream.sse",
        "/v1/completions",
        {"model": "gpt-3.5-turbo-instruct", "stream": True, "prompt": "Say this is a test"},
        dict(route="completions", estimated_tokens=6, stream=True, model="gpt-3.5-turbo-instruct", ttft=TTFT, prompt_tokens=5,
             completion_tokens=7, output_chars=17, finish_reason="stop", cost_usd=pytest.approx(canary_cost(5, 7))),
        drops_usage_event=True,
    ),
    Case(
        "responses stream",
        "openai_responses_stream.sse",
        "/v1/responses",
        {"model": "gpt-4o", "stream": True, "input": "Tell me a story"},
        dict(route="responses", estimated_tokens=9, stream=True, model="gpt-4o-2024-08-06", ttft=TTFT, prompt_tokens=37,
             completion_tokens=11, reasoning_tokens=0, output_chars=40, finish_reason="completed",
             cost_usd=pytest.approx(gpt4o_cost(37, 11))),
    ),
    Case(
        "responses JSON with reasoning tokens",
        "openai_responses.json",
        "/v1/responses",
        {"model": "o4-mini", "input": "Tell me a story"},
        dict(route="responses", estimated_tokens=10, model="o4-mini-2025-04-16", prompt_tokens=37, completion_tokens=139,
             reasoning_tokens=128, output_chars=40, finish_reason="completed",
             cost_usd=pytest.approx(canary_cost(37, 139))),
        content_type=JSON,
    ),
    Case(
        "embeddings JSON",
        "openai_embeddings.json",
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "The food was delicious"},
        dict(route="embeddings", model="text-embedding-3-small", prompt_tokens=8,
             cost_usd=pytest.approx(canary_cost(8, 0))),
        content_type="application/json; charset=utf-8",
    ),
    Case(
        "Anthropic stream: text, then a tool_use block",
        "anthropic_messages_stream.sse",
        "/v1/messages",
        {"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 1024,
         "tools": [{"name": "get_weather", "input_schema": WEATHER_TOOL}]},
        dict(route="messages", estimated_tokens=18, stream=True, model="claude-sonnet-4-5-20250929", ttft=TTFT, prompt_tokens=572,
             completion_tokens=89, output_chars=103, finish_reason="tool_use", schema_ok=True,
             cost_usd=pytest.approx(canary_cost(572, 89))),
    ),
    Case(
        "Anthropic JSON with a tool_use block",
        "anthropic_messages.json",
        "/v1/messages",
        {"model": "claude-sonnet-4-5", "max_tokens": 1024,
         "tools": [{"name": "get_weather", "input_schema": WEATHER_TOOL}]},
        dict(route="messages", estimated_tokens=27, model="claude-sonnet-4-5-20250929", prompt_tokens=384, completion_tokens=74,
             output_chars=105, finish_reason="tool_use", schema_ok=True, cost_usd=pytest.approx(canary_cost(384, 74))),
        content_type=JSON,
    ),
    Case(
        "Anthropic refusal",
        "anthropic_refusal.json",
        "/v1/messages",
        {"model": "claude-sonnet-4-5", "max_tokens": 1024},
        dict(route="messages", estimated_tokens=6, model="claude-sonnet-4-5-20250929", prompt_tokens=21, completion_tokens=9,
             output_chars=23, finish_reason="refusal", guardrails=("refusal",),
             cost_usd=pytest.approx(canary_cost(21, 9))),
        content_type=JSON,
    ),
    Case(
        "chat JSON with reasoning tokens",
        "openai_chat_reasoning.json",
        CHAT,
        {"model": "o3-mini", "messages": []},
        dict(route="chat.completions", estimated_tokens=8, model="o3-mini-2025-01-31", prompt_tokens=13, completion_tokens=203,
             reasoning_tokens=192, output_chars=31, finish_reason="stop",
             cost_usd=pytest.approx(canary_cost(13, 203))),
        content_type=JSON,
    ),
    Case(
        "structured output that matches its json_schema",
        "openai_chat_structured_valid.json",
        CHAT,
        json.loads(fixture("openai_chat_structured_request.json")),
        dict(route="chat.completions", estimated_tokens=18, model="gpt-4o-2024-08-06", prompt_tokens=92, completion_tokens=17,
             output_chars=70, finish_reason="stop", schema_ok=True, cost_usd=pytest.approx(gpt4o_cost(92, 17))),
        content_type=JSON,
    ),
    Case(
        "structured output that breaks its json_schema",
        "openai_chat_structured_invalid.json",
        CHAT,
        json.loads(fixture("openai_chat_structured_request.json")),
        dict(route="chat.completions", estimated_tokens=18, model="gpt-4o-2024-08-06", prompt_tokens=92, completion_tokens=17,
             output_chars=70, finish_reason="stop", schema_ok=False, cost_usd=pytest.approx(gpt4o_cost(92, 17))),
        content_type=JSON,
    ),
    Case(
        "json_object asked for, a JSON array given",
        "openai_chat_json_object.json",
        CHAT,
        {"model": "gpt-4o-mini", "response_format": {"type": "json_object"}, "messages": []},
        dict(route="chat.completions", estimated_tokens=6, model="gpt-4o-mini-2024-07-18", prompt_tokens=25, completion_tokens=9,
             output_chars=24, finish_reason="stop", schema_ok=False, cost_usd=pytest.approx(canary_cost(25, 9))),
        content_type=JSON,
    ),
    Case(
        "json_object asked for, a JSON object given",
        "openai_chat_structured_valid.json",
        CHAT,
        {"model": "gpt-4o", "response_format": {"type": "json_object"}, "messages": []},
        dict(route="chat.completions", estimated_tokens=18, model="gpt-4o-2024-08-06", prompt_tokens=92, completion_tokens=17,
             output_chars=70, finish_reason="stop", schema_ok=True, cost_usd=pytest.approx(gpt4o_cost(92, 17))),
        content_type=JSON,
    ),
    Case(
        "finish_reason content_filter",
        "openai_chat_content_filter.json",
        CHAT,
        {"model": "gpt-4o", "messages": []},
        dict(route="chat.completions", estimated_tokens=5, model="gpt-4o-2024-08-06", prompt_tokens=31, completion_tokens=4,
             output_chars=18, finish_reason="content_filter", guardrails=("content_filter",),
             cost_usd=pytest.approx(gpt4o_cost(31, 4))),
        content_type=JSON,
    ),
    Case(
        "Azure content_filter_results: a filtered prompt category",
        "azure_chat_filtered.json",
        "/openai/deployments/gpt4o/chat/completions",
        {"messages": []},
        dict(route="chat.completions", estimated_tokens=8, model="gpt-4o-2024-11-20", prompt_tokens=18, completion_tokens=9,
             output_chars=29, finish_reason="stop", guardrails=("azure_content_filter",),
             cost_usd=pytest.approx(canary_cost(18, 9))),
        content_type=JSON,
    ),
    Case(
        "Azure 400 for a filtered prompt",
        "azure_prompt_filtered_error.json",
        "/openai/deployments/gpt4o/chat/completions",
        {"messages": []},
        dict(route="chat.completions", guardrails=("azure_content_filter",)),
        content_type=JSON,
        status=400,
    ),
    Case(
        "OpenAI refusal message",
        "openai_chat_refusal.json",
        CHAT,
        {"model": "gpt-4o", "messages": []},
        dict(route="chat.completions", estimated_tokens=0, model="gpt-4o-2024-08-06", prompt_tokens=81, completion_tokens=12,
             output_chars=0, finish_reason="stop", guardrails=("refusal",), cost_usd=pytest.approx(gpt4o_cost(81, 12))),
        content_type=JSON,
    ),
    Case(
        "malformed SSE: an event that is not JSON",
        "openai_chat_stream_malformed.sse",
        CHAT,
        {"model": "m", "stream": True},
        dict(route="chat.completions", stream=True, model="m", inspect_error=True),
    ),
    Case(
        "malformed JSON body",
        "openai_chat_malformed.json",
        CHAT,
        {"model": "m"},
        dict(route="chat.completions", model="m", inspect_error=True),
        content_type=JSON,
    ),
]

IDS = [case.name for case in CASES]


def read(case: Case, pieces: list[bytes]) -> tuple[bytes, Outcome]:
    return run(case.path, case.request, pieces, content_type=case.content_type, status=case.status,
               settings=case.settings)


def with_line_ends(data: bytes, line_end: bytes) -> bytes:
    """The same stream with other line endings (event data carries no raw newline)."""
    return data.replace(b"\n", line_end)


def event_ends(data: bytes, line_end: bytes = b"\n") -> list[int]:
    """The offsets just after each blank line: where a server that writes one event per chunk cuts."""
    return [match.end() for match in re.finditer(re.escape(line_end * 2), data)]


SSE_CASES = [case for case in CASES if case.content_type == SSE]
SSE_IDS = [case.name for case in SSE_CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_whole_body(case: Case) -> None:
    data = fixture(case.fixture)
    forwarded, outcome = read(case, [data])
    assert as_dict(outcome) == case.expected_outcome()
    assert forwarded == case.expected_forwarded(data)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_split_at_every_offset(case: Case) -> None:
    data = fixture(case.fixture)
    expected_outcome = case.expected_outcome()
    expected_forwarded = case.expected_forwarded(data)
    for offset in range(len(data) + 1):
        forwarded, outcome = read(case, split_at(data, [offset]))
        assert as_dict(outcome) == expected_outcome, f"split at byte {offset}"
        assert forwarded == expected_forwarded, f"split at byte {offset}"


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r"], ids=["CRLF", "CR"])
def test_usage_event_removed_with_other_line_endings_at_every_offset(line_end: bytes) -> None:
    case = CASES[0]
    data = with_line_ends(fixture(case.fixture), line_end)
    expected_forwarded = case.expected_forwarded(data, line_end)
    for offset in range(len(data) + 1):
        forwarded, outcome = read(case, split_at(data, [offset]))
        assert as_dict(outcome) == case.expected_outcome(), f"split at byte {offset}"
        assert forwarded == expected_forwarded, f"split at byte {offset}"


@pytest.mark.parametrize("case", SSE_CASES, ids=SSE_IDS)
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_one_event_per_chunk(case: Case, line_end: bytes) -> None:
    # How servers send, and what the stream inspector's short cuts are for.
    body = with_line_ends(fixture(case.fixture), line_end)
    forwarded, outcome = read(case, split_at(body, event_ends(body, line_end)))
    assert as_dict(outcome) == case.expected_outcome()
    assert forwarded == case.expected_forwarded(body, line_end)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_random_splits(case: Case, data: st.DataObject) -> None:
    line_end = data.draw(st.sampled_from([b"\n", b"\r\n", b"\r"])) if case.content_type == SSE else b"\n"
    body = with_line_ends(fixture(case.fixture), line_end) if line_end != b"\n" else fixture(case.fixture)
    offsets = data.draw(st.lists(st.integers(0, len(body)), max_size=24))
    if case.content_type == SSE:
        # Some cuts at event ends too: chunks of whole events mixed with pieces of events.
        offsets += data.draw(st.lists(st.sampled_from(event_ends(body, line_end)), max_size=24))
    forwarded, outcome = read(case, split_at(body, offsets))
    assert as_dict(outcome) == case.expected_outcome()
    assert forwarded == case.expected_forwarded(body, line_end)
