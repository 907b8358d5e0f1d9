"""Readers for the OpenAI-compatible APIs: chat completions, completions, responses, embeddings.

Each `*_event` function reads one parsed SSE event of a stream, each `*_body` function a whole JSON
response; both only call `Findings` methods. Readers look at what they know and ignore the rest:
servers add fields (vLLM's `stop_reason`, OpenAI's `obfuscation`), and an unknown field is no
error. The markers are how a delta's JSON member starts on the wire; the stream fast path uses them
to find the string again in the next event.
"""

from __future__ import annotations

from typing import Any

from canaryproxy.inspection.findings import Findings
from canaryproxy.inspection.guardrails import (
    AZURE_CONTENT_FILTER,
    CONTENT_FILTER,
    azure_filtered,
    azure_prompt_filtered,
)

CONTENT = b'"content":"'
ARGUMENTS = b'"arguments":"'
TEXT = b'"text":"'
DELTA = b'"delta":"'

_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def is_usage_only_chunk(event: dict[str, Any]) -> bool:
    """The chunk `stream_options.include_usage` adds: usage and an empty choices list.

    Azure's prompt annotation chunk also has empty choices, but no usage, so it never matches.
    """
    return event.get("choices") == [] and isinstance(event.get("usage"), dict)


# --- chat completions -----------------------------------------------------------------------


def chat_event(event: dict[str, Any], found: Findings) -> None:
    _read_chunk_header(event, found)
    for choice in _dicts(event.get("choices")):
        index = choice.get("index", 0)
        delta = choice.get("delta")
        if isinstance(delta, dict):
            _read_message(delta, index, found)
        _read_choice_end(choice, found, streaming=True)


def chat_body(body: dict[str, Any], found: Findings) -> None:
    _read_chunk_header(body, found)
    for position, choice in enumerate(_dicts(body.get("choices"))):
        message = choice.get("message")
        if isinstance(message, dict):
            _read_message(message, choice.get("index", position), found)
        _read_choice_end(choice, found, streaming=False)


def _read_message(message: dict[str, Any], index: Any, found: Findings) -> None:
    content = message.get("content")
    if isinstance(content, str):
        found.add_text(index, content, CONTENT)
    refusal = message.get("refusal")
    if refusal is not None:  # null in every chunk of a stream: spare the call
        found.refusal(refusal)
    tool_calls = message.get("tool_calls")
    if tool_calls:
        for position, call in enumerate(_dicts(tool_calls)):
            function = call.get("function")
            if isinstance(function, dict):
                _read_function(function, (index, call.get("index", position)), found)
    function_call = message.get("function_call")  # the legacy single function call
    if isinstance(function_call, dict):
        _read_function(function_call, (index, "function_call"), found)


def _read_function(function: dict[str, Any], key: Any, found: Findings) -> None:
    found.name_tool(key, function.get("name"))
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        found.add_tool_arguments(key, arguments, ARGUMENTS)


# --- completions (legacy) ---------------------------------------------------------------------


def completions_event(event: dict[str, Any], found: Findings) -> None:
    _read_chunk_header(event, found)
    for choice in _dicts(event.get("choices")):
        _read_completion_choice(choice, choice.get("index", 0), found)
        _read_choice_end(choice, found, streaming=True)


def completions_body(body: dict[str, Any], found: Findings) -> None:
    _read_chunk_header(body, found)
    for position, choice in enumerate(_dicts(body.get("choices"))):
        _read_completion_choice(choice, choice.get("index", position), found)
        _read_choice_end(choice, found, streaming=False)


def _read_completion_choice(choice: dict[str, Any], index: Any, found: Findings) -> None:
    text = choice.get("text")
    if isinstance(text, str):
        found.add_text(index, text, TEXT)


# --- shared by chat and completions -----------------------------------------------------------


def _read_chunk_header(event: dict[str, Any], found: Findings) -> None:
    """Model, usage, Azure's prompt filter and in-stream errors: everything outside the choices."""
    found.set_model(event.get("model"))
    usage = event.get("usage")
    if usage is not None:
        found.set_usage(*_usage(usage, "prompt_tokens", "completion_tokens", "completion_tokens_details"))
    if "prompt_filter_results" in event and azure_prompt_filtered(event["prompt_filter_results"]):
        found.guardrail(AZURE_CONTENT_FILTER)
    if event.get("error") is not None:
        found.broken = True  # vLLM and others report a failure mid-stream as {"error": {...}}


def _read_choice_end(choice: dict[str, Any], found: Findings, *, streaming: bool) -> None:
    reason = choice.get("finish_reason")
    if isinstance(reason, str) and reason:
        found.set_finish_reason(reason)
        if streaming:
            found.ended = True
        if reason == "content_filter":
            found.guardrail(CONTENT_FILTER)
    if "content_filter_results" in choice and azure_filtered(choice["content_filter_results"]):
        found.guardrail(AZURE_CONTENT_FILTER)


# --- responses --------------------------------------------------------------------------------


def responses_event(event: dict[str, Any], found: Findings) -> None:
    kind = event.get("type")
    if kind == "response.output_text.delta":
        delta = event.get("delta")
        if isinstance(delta, str):
            found.add_text(event.get("output_index", 0), delta, DELTA)
    elif kind == "response.function_call_arguments.delta":
        delta = event.get("delta")
        if isinstance(delta, str):
            found.add_tool_arguments(event.get("output_index", 0), delta, DELTA)
    elif kind == "response.output_item.added":
        item = event.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call":
            found.name_tool(event.get("output_index", 0), item.get("name"))
    elif kind == "response.refusal.delta":
        found.refusal(event.get("delta"))
    elif kind in _RESPONSE_ENDS:
        response = event.get("response")
        if isinstance(response, dict):
            _read_response_end(response, found)
        found.ended = True
    elif kind in ("response.created", "response.in_progress"):
        response = event.get("response")
        if isinstance(response, dict):
            found.set_model(response.get("model"))
    elif kind == "error":
        found.broken = True


def responses_body(body: dict[str, Any], found: Findings) -> None:
    for index, item in enumerate(_dicts(body.get("output"))):
        kind = item.get("type")
        if kind == "message":
            for part in _dicts(item.get("content")):
                if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                    found.add_text(index, part["text"], TEXT)
                elif part.get("type") == "refusal":
                    found.refusal(part.get("refusal"))
        elif kind == "function_call":
            found.name_tool(index, item.get("name"))
            if isinstance(item.get("arguments"), str):
                found.add_tool_arguments(index, item["arguments"], ARGUMENTS)
    _read_response_end(body, found)


def _read_response_end(response: dict[str, Any], found: Findings) -> None:
    """Model, usage and how it ended: "completed", "failed", or why it is incomplete."""
    found.set_model(response.get("model"))
    usage = response.get("usage")
    if usage is not None:
        found.set_usage(*_usage(usage, "input_tokens", "output_tokens", "output_tokens_details"))
    status = response.get("status")
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if status == "incomplete" and isinstance(reason, str):
        found.set_finish_reason(reason)
        if reason == "content_filter":
            found.guardrail(CONTENT_FILTER)
    else:
        found.set_finish_reason(status)


# --- embeddings and errors --------------------------------------------------------------------


def embeddings_body(body: dict[str, Any], found: Findings) -> None:
    found.set_model(body.get("model"))
    usage = body.get("usage")
    if isinstance(usage, dict):
        found.set_usage(usage.get("prompt_tokens"), None)


def error_body(body: dict[str, Any], found: Findings) -> None:
    """An error response. Azure answers a filtered prompt with 400 and error code content_filter."""
    error = body.get("error")
    if not isinstance(error, dict):
        return
    inner = error.get("innererror")
    inner_result = inner.get("content_filter_result") if isinstance(inner, dict) else None
    if error.get("code") == "content_filter" or azure_filtered(inner_result):
        found.guardrail(AZURE_CONTENT_FILTER)


def _usage(usage: Any, prompt_key: str, completion_key: str, details_key: str) -> tuple[Any, Any, Any]:
    """(prompt, completion, reasoning) tokens from a usage object of either naming, None where absent."""
    if not isinstance(usage, dict):
        return None, None, None
    details = usage.get(details_key)
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return usage.get(prompt_key), usage.get(completion_key), reasoning


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
