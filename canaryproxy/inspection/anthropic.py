"""Readers for Anthropic's Messages API (`/v1/messages`), streamed and whole.

A stream is message_start (model, input tokens), content blocks (text_delta, input_json_delta),
message_delta (stop_reason, final output tokens), message_stop (the proper end); `ping` and
`error` may come in between. Thinking deltas are not output text. All text blocks make one output;
each tool_use block is a tool call keyed by its block index.
"""

from __future__ import annotations

import json
from typing import Any

from canaryproxy.inspection.findings import Findings
from canaryproxy.inspection.guardrails import REFUSAL

TEXT = b'"text":"'
PARTIAL_JSON = b'"partial_json":"'
_TEXT_OUTPUT = 0


def messages_event(event: dict[str, Any], found: Findings) -> None:
    kind = event.get("type")
    if kind == "content_block_delta":
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return
        delta_type = delta.get("type")
        if delta_type == "text_delta" and isinstance(delta.get("text"), str):
            found.add_text(_TEXT_OUTPUT, delta["text"], TEXT)
        elif delta_type == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            found.add_tool_arguments(event.get("index", 0), delta["partial_json"], PARTIAL_JSON)
    elif kind == "content_block_start":
        block = event.get("content_block")
        if isinstance(block, dict):
            _read_block_start(block, event.get("index", 0), found)
    elif kind == "message_start":
        message = event.get("message")
        if isinstance(message, dict):
            found.set_model(message.get("model"))
            _read_input_tokens(message.get("usage"), found)
    elif kind == "message_delta":
        delta = event.get("delta")
        if isinstance(delta, dict):
            _read_stop_reason(delta.get("stop_reason"), found)
        usage = event.get("usage")
        if isinstance(usage, dict):
            # Cumulative: output_tokens is the final count; newer versions repeat the input counts.
            _read_input_tokens(usage, found)
            found.set_usage(None, usage.get("output_tokens"))
    elif kind == "message_stop":
        found.ended = True
    elif kind == "error":
        found.broken = True


def _read_block_start(block: dict[str, Any], index: Any, found: Findings) -> None:
    kind = block.get("type")
    if kind == "tool_use":
        found.name_tool(index, block.get("name"))
    elif kind == "text" and isinstance(block.get("text"), str):
        found.add_text(_TEXT_OUTPUT, block["text"], TEXT)


def messages_body(body: dict[str, Any], found: Findings) -> None:
    found.set_model(body.get("model"))
    content = body.get("content")
    for index, block in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            found.add_text(_TEXT_OUTPUT, block["text"], TEXT)
        elif kind == "tool_use":
            found.name_tool(index, block.get("name"))
            # The input arrives parsed; as text it is what a stream would have carried.
            arguments = json.dumps(block.get("input", {}), ensure_ascii=False, separators=(",", ":"))
            found.add_tool_arguments(index, arguments, PARTIAL_JSON)
    _read_stop_reason(body.get("stop_reason"), found)
    usage = body.get("usage")
    if isinstance(usage, dict):
        _read_input_tokens(usage, found)
        found.set_usage(None, usage.get("output_tokens"))


def _read_stop_reason(reason: Any, found: Findings) -> None:
    found.set_finish_reason(reason)
    if reason == "refusal":
        found.refused = True
        found.guardrail(REFUSAL)


def _read_input_tokens(usage: Any, found: Findings) -> None:
    """Prompt tokens: input_tokens counts only the uncached part, so add the cache reads and writes."""
    if not isinstance(usage, dict):
        return
    input_tokens = usage.get("input_tokens")
    if type(input_tokens) is not int:
        return
    cached = sum(
        count
        for count in (usage.get("cache_creation_input_tokens"), usage.get("cache_read_input_tokens"))
        if type(count) is int
    )
    found.set_usage(input_tokens + cached, None)
