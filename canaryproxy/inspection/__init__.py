"""Inline inspection of LLM responses.

The data plane reads the request body of an LLM call with `read_request` (which may ask the
upstream for usage), then for the response creates an inspector with `inspector_for` and passes it
every body chunk (`feed`, which returns the bytes to forward now) and the end (`finish`). The
inspector fills an `Inspection`: tokens, output length, time to first token, finish reason, schema
validity, guardrail interventions, cost, whether the protocol ended early. The data plane writes
it into the request's `Outcome` with `apply`, once, when the request ends. An inspector never
raises and never changes a byte, except that it removes the usage chunk the proxy asked for and
the client did not.

    read_request ──► RequestFacts ──► inspector_for ──► StreamInspector (text/event-stream)
                                                    ├─► BodyInspector   (application/json)
                                                    └─► PassThrough     (anything else)
    each fills an Inspection ──► apply(outcome, inspection, cut_short), once per request
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from canaryproxy.core.types import Role
from canaryproxy.inspection import anthropic, openai
from canaryproxy.inspection.body import BodyInspector, BodyReader
from canaryproxy.inspection.findings import findings_for
from canaryproxy.inspection.generic import PASS_THROUGH, PassThrough
from canaryproxy.inspection.plainbody import plain_chat_possible
from canaryproxy.inspection.guardrails import record_response_head
from canaryproxy.inspection.request import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MESSAGES,
    RESPONSES,
    RequestFacts,
    api_for_path,
    read_request,
)
from canaryproxy.inspection.result import Inspection, apply
from canaryproxy.inspection.settings import HeaderRule, InspectionSettings, Price, PriceTable, TextRule
from canaryproxy.inspection.stream import EventReader, StreamInspector

__all__ = [
    "HeaderRule",
    "Inspection",
    "Inspector",
    "InspectionSettings",
    "PassThrough",
    "Price",
    "PriceTable",
    "RequestFacts",
    "TextRule",
    "api_for_path",
    "apply",
    "inspector_for",
    "read_request",
]


class Inspector(Protocol):
    def feed(self, chunk: bytes) -> bytes:
        """The bytes to forward now: normally `chunk` itself, the same object."""
        ...

    def finish(self, complete: bool) -> bytes:
        """End of the body (`complete` False when it ended abnormally); bytes still held back."""
        ...


_STREAM_READERS: dict[str, EventReader] = {
    CHAT: openai.chat_event,
    COMPLETIONS: openai.completions_event,
    RESPONSES: openai.responses_event,
    MESSAGES: anthropic.messages_event,
}
_BODY_READERS: dict[str, BodyReader] = {
    CHAT: openai.chat_body,
    COMPLETIONS: openai.completions_body,
    RESPONSES: openai.responses_body,
    EMBEDDINGS: openai.embeddings_body,
    MESSAGES: anthropic.messages_body,
}


def inspector_for(
    facts: RequestFacts,
    status: int,
    content_type: str,
    response_headers: Mapping[str, str],
    inspection: Inspection,
    settings: InspectionSettings,
    *,
    role: Role,
    started: float,
    now: Callable[[], float],
    share_text: bool = False,
) -> Inspector:
    """The inspector for one response, chosen by API and content type; it fills `inspection`.

    Records at once what the status and headers say (guardrail rules, the route, the model asked
    for). `response_headers` must look names up case-insensitively, as aiohttp's headers do.
    `started` is when the request arrived and `now()` reads the same monotonic clock: the time to
    first token is measured between them. `role` picks the fallback price. `share_text` keeps
    the answer's text in `inspection.text` (bounded by `max_schema_bytes`), for a shadow pair.
    """
    inspection.route = facts.api
    inspection.model = facts.model
    record_response_head(inspection, status, response_headers, settings)
    if not facts.api or response_headers.get("Content-Encoding", "").strip().lower() not in ("", "identity"):
        return PASS_THROUGH  # not an API we read, or compressed bytes we cannot read without inflating
    media_type = content_type.partition(";")[0].strip().lower()
    successful = 200 <= status < 300
    if media_type == "text/event-stream":
        inspection.stream = True
        read_event = _STREAM_READERS.get(facts.api)
        if not successful or read_event is None:
            return PASS_THROUGH
        drop = openai.is_usage_only_chunk if facts.usage_injected and facts.api in (CHAT, COMPLETIONS) else None
        found = findings_for(facts, settings, inspection, role, started, now, share_text)
        return StreamInspector(read_event, found, facts, settings, drop)
    if media_type == "application/json" or media_type.endswith("+json"):
        if not successful:
            return BodyInspector(openai.error_body, inspection, facts, settings, role=role, started=started,
                                 share_text=share_text, record=False)
        return BodyInspector(
            _BODY_READERS[facts.api], inspection, facts, settings, role=role, started=started,
            share_text=share_text, produces_text=facts.api != EMBEDDINGS,
            plain=facts.api == CHAT and plain_chat_possible(facts, settings, share_text),
        )
    return PASS_THROUGH
