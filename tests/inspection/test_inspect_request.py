"""Reading LLM request bodies: which API, what to check, and asking the upstream for usage."""

from __future__ import annotations

import json

import pytest

from canaryproxy.inspection import InspectionSettings, RequestFacts, api_for_path, read_request

SETTINGS = InspectionSettings()
CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/chat/completions", "chat.completions"),
        ("/v1/chat/completions/", "chat.completions"),
        ("/openai/deployments/gpt-4o/chat/completions", "chat.completions"),
        ("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", "chat.completions"),
        ("/chat/completions", "chat.completions"),
        ("/v1/completions", "completions"),
        ("/v1/responses", "responses"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/messages", "messages"),
        ("/anthropic/v1/messages/", "messages"),
        ("/v1/messages/count_tokens", ""),
        ("/v1/threads/thread_1/messages", ""),
        ("/v1/responses/resp_123", ""),
        ("/v1/models", ""),
        ("/healthz", ""),
        ("", ""),
    ],
)
def test_api_for_path(path: str, api: str) -> None:
    assert api_for_path(path) == api


def test_streaming_chat_gets_usage_spliced_in_and_nothing_else_changes() -> None:
    body = b'  {"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"caf\\u00e9 1e2"}]}'
    forwarded, facts = read_request(CHAT, body, SETTINGS)
    assert forwarded == (
        b'  {"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,'
        b'"messages":[{"role":"user","content":"caf\\u00e9 1e2"}]}'
    )
    assert facts == RequestFacts(api="chat.completions", model="gpt-4o", stream=True, usage_injected=True)


def test_existing_stream_options_are_kept_and_usage_turned_on() -> None:
    request = {"model": "m", "stream": True, "stream_options": {"include_usage": False, "include_obfuscation": False}}
    forwarded, facts = read_request("/v1/completions", json.dumps(request).encode(), SETTINGS)
    assert json.loads(forwarded) == {**request, "stream_options": {"include_usage": True, "include_obfuscation": False}}
    assert facts.usage_injected


@pytest.mark.parametrize(
    ("path", "request_body", "settings"),
    [
        (CHAT, {"model": "m", "stream": True, "stream_options": {"include_usage": True}}, SETTINGS),
        (CHAT, {"model": "m", "stream": False}, SETTINGS),
        (CHAT, {"model": "m"}, SETTINGS),
        (CHAT, {"model": "m", "stream": True}, InspectionSettings(inject_stream_usage=False)),
        ("/v1/responses", {"model": "m", "stream": True}, SETTINGS),
        ("/v1/messages", {"model": "m", "stream": True}, SETTINGS),
    ],
    ids=["client asked", "not streaming", "stream absent", "injection off", "responses", "anthropic"],
)
def test_no_injection(path: str, request_body: dict[str, object], settings: InspectionSettings) -> None:
    body = json.dumps(request_body).encode()
    forwarded, facts = read_request(path, body, settings)
    assert forwarded is body
    assert not facts.usage_injected


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'["a", "list"]',
        b"\xff\xfe\x00garbage",
        b"",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"model":"m","stream":true,"stream_options":{"include_usage":false},"temperature":NaN}',
    ],
    ids=["text", "array", "bytes", "empty", "deeply nested", "NaN"],
)
def test_unexpected_bodies_pass_unchanged(body: bytes) -> None:
    forwarded, facts = read_request(CHAT, body, SETTINGS)
    assert forwarded is body
    assert facts.api == "chat.completions"
    assert not facts.usage_injected


def test_paths_we_do_not_read_are_not_parsed() -> None:
    body = b'{"model":"m","stream":true}'
    forwarded, facts = read_request("/v1/models", body, SETTINGS)
    assert forwarded is body
    assert facts == RequestFacts()


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_chat_structured_output_and_tools() -> None:
    request = {
        "model": "gpt-4o",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": SCHEMA}},
        "tools": [
            {"type": "function", "function": {"name": "lookup", "parameters": SCHEMA}},
            {"type": "function", "function": {"name": "now"}},
            {"type": "custom", "custom": {"name": "free_text"}},
        ],
        "functions": [{"name": "legacy", "parameters": SCHEMA}],
    }
    _, facts = read_request(CHAT, json.dumps(request).encode(), SETTINGS)
    assert facts.output_schema == SCHEMA
    assert not facts.json_object
    assert facts.tool_schemas == {"lookup": SCHEMA, "now": None, "legacy": SCHEMA}


def test_chat_json_object() -> None:
    request = {"model": "m", "response_format": {"type": "json_object"}}
    _, facts = read_request(CHAT, json.dumps(request).encode(), SETTINGS)
    assert facts.json_object
    assert facts.output_schema is None


def test_responses_text_format_and_function_tools() -> None:
    request = {
        "model": "gpt-4o",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": SCHEMA, "strict": True}},
        "tools": [{"type": "function", "name": "lookup", "parameters": SCHEMA}, {"type": "web_search_preview"}],
    }
    _, facts = read_request("/v1/responses", json.dumps(request).encode(), SETTINGS)
    assert facts.output_schema == SCHEMA
    assert facts.tool_schemas == {"lookup": SCHEMA}


@pytest.mark.parametrize(
    "structured",
    [
        {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
        {"output_format": {"type": "json_schema", "schema": SCHEMA}},
    ],
    ids=["output_config.format", "output_format (beta)"],
)
def test_anthropic_structured_output_and_tools(structured: dict[str, object]) -> None:
    request = {"model": "claude", "max_tokens": 10, "tools": [{"name": "lookup", "input_schema": SCHEMA}], **structured}
    _, facts = read_request("/v1/messages", json.dumps(request).encode(), SETTINGS)
    assert facts.output_schema == SCHEMA
    assert facts.tool_schemas == {"lookup": SCHEMA}


ROUTES = InspectionSettings(
    route_schemas={"/v1": {"type": "array"}, "/v1/chat": {"type": "object"}, "/v1/chat/x": {"type": "string"}}
)


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("/v1/chat/completions", {"type": "object"}),
        ("/v1/chat/completions?api-version=1", {"type": "object"}),
        ("/v1/completions", {"type": "array"}),
        ("/v1/chatx/completions", {"type": "array"}),
        ("/v2/chat/completions", None),
    ],
)
def test_route_schema_by_longest_path_prefix_on_segment_boundaries(path: str, schema: object) -> None:
    _, facts = read_request(path, b'{"model":"m"}', ROUTES)
    assert facts.output_schema == schema


def test_a_schema_in_the_request_wins_over_the_route_schema() -> None:
    request = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}}
    _, facts = read_request(CHAT, json.dumps(request).encode(), ROUTES)
    assert facts.output_schema == SCHEMA
