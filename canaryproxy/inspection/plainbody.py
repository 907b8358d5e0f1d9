"""The usual whole chat answer, read straight into its Inspection: the JSON fast path.

Most `chat.completion` bodies are one choice with text content, a finish reason and a usage
block, for a request that asked for no schema and no tools. For those, going through `Findings`
(built for streams: text sinks, tool calls, first-output times) and `findings.record` costs more
than parsing the body. `read_plain_chat` reads such a body in one pass and writes the same fields
`chat_body` + `record` would; for anything else (several choices, tool calls, a refusal, a
content filter, Azure's annotations, an in-body error) it returns False having written nothing,
and the general readers take the body. tests/inspection/test_plain_body.py checks the two agree
on every body it accepts.
"""

from __future__ import annotations

from typing import Any

from canaryproxy.core.types import Role
from canaryproxy.inspection.findings import reported_count, write_counts
from canaryproxy.inspection.request import RequestFacts
from canaryproxy.inspection.result import Inspection
from canaryproxy.inspection.settings import InspectionSettings


def plain_chat_possible(facts: RequestFacts, settings: InspectionSettings, share_text: bool) -> bool:
    """Whether nothing will read the answer's text: no schema, no JSON mode, no tools, no text
    rules, no shadow pair. Only then may a body skip the general readers."""
    return (facts.output_schema is None and not facts.json_object and not facts.tool_schemas
            and not settings.text_rules and not share_text)


def read_plain_chat(body: dict[str, Any], inspection: Inspection, facts: RequestFacts,
                    settings: InspectionSettings, role: Role) -> bool:
    """Read a plain chat.completion into `inspection`; False (nothing written) when it is not one."""
    choices = body.get("choices")
    if type(choices) is not list or len(choices) != 1:
        return False
    choice = choices[0]
    if type(choice) is not dict or "content_filter_results" in choice:
        return False
    message = choice.get("message")
    if type(message) is not dict:
        return False
    content = message.get("content")
    reason = choice.get("finish_reason")
    if (type(content) is not str or message.get("refusal") is not None or message.get("tool_calls")
            or message.get("function_call") is not None or reason == "content_filter"
            or "prompt_filter_results" in body or body.get("error") is not None):
        return False
    prompt = completion = reasoning = None
    usage = body.get("usage")
    if type(usage) is dict:
        prompt = reported_count(usage.get("prompt_tokens"))
        completion = reported_count(usage.get("completion_tokens"))
        details = usage.get("completion_tokens_details")
        if type(details) is dict:
            reasoning = reported_count(details.get("reasoning_tokens"))
    model = body.get("model")
    inspection.finish_reason = reason if type(reason) is str and reason else None
    write_counts(inspection, settings, facts, role, model if type(model) is str and model else None,
                 prompt, completion, reasoning, len(content), 1 if content else 0)
    return True
