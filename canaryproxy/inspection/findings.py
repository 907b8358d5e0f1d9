"""What an inspector read from one response, and how that becomes its `Inspection`.

The protocol readers (openai.py, anthropic.py) call the `Findings` methods for what they see; the
inspectors (stream.py, body.py) call `record` once at the end, which writes the totals into the
Inspection (guardrails go there as they are seen).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from canaryproxy.core.types import Role
from canaryproxy.inspection import estimate
from canaryproxy.inspection.guardrails import REFUSAL, record_guardrail, record_text_rules
from canaryproxy.inspection.pricing import cost_usd, price_for
from canaryproxy.inspection.request import RequestFacts
from canaryproxy.inspection.result import Inspection
from canaryproxy.inspection.schema import json_output_ok
from canaryproxy.inspection.settings import InspectionSettings


class TextSink:
    """The text of one output (a choice's content, one tool call's arguments), kept up to a cap.

    Past the cap the text is no longer kept (`overflow`): it is too large to validate in bounded
    time anyway. What was kept is still there for the text rules.
    """

    __slots__ = ("_pieces", "_chars", "_cap", "overflow")

    def __init__(self, cap: int) -> None:
        self._pieces: list[str] = []
        self._chars = 0
        self._cap = cap
        self.overflow = False

    def add(self, text: str) -> None:
        if self.overflow:
            return
        self._chars += len(text)
        if self._chars > self._cap:
            self.overflow = True
            return
        self._pieces.append(text)

    def text(self) -> str:
        return "".join(self._pieces)


class ToolCall:
    __slots__ = ("name", "arguments")

    def __init__(self, arguments: TextSink) -> None:
        self.name: str | None = None
        self.arguments = arguments


class Findings:
    """Everything read so far from one response.

    Text is kept only when something will read it (a schema or a text rule); otherwise appending
    output only counts characters. `appends` and `last_append` tell the stream inspector whether the
    event just read did nothing but append one string, the case its fast path repeats.
    """

    __slots__ = (
        "inspection",
        "_now",
        "started",
        "role",
        "_keep_text",
        "share_text",
        "_keep_tool_arguments",
        "_cap",
        "output_chars",
        "deltas",
        "first_output_at",
        "texts",
        "tool_calls",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "finish_reason",
        "ended",
        "broken",
        "refused",
        "appends",
        "last_append",
    )

    def __init__(
        self,
        inspection: Inspection,
        now: Callable[[], float] | None,
        *,
        started: float,
        role: Role,
        keep_text: bool,
        keep_tool_arguments: bool,
        cap: int,
        share_text: bool = False,
    ) -> None:
        """`now` is None for a whole body: output that arrives all at once has no first-token time.
        `started` is when the request arrived, on the clock of `now`; `role` picks the fallback price."""
        self.inspection = inspection
        self._now = now
        self.started = started
        self.role = role
        self._keep_text = keep_text
        self.share_text = share_text  # the text goes into the inspection too (a shadow pair's)
        self._keep_tool_arguments = keep_tool_arguments
        self._cap = cap
        self.output_chars = 0
        self.deltas = 0  # non-empty strings appended (content, tool arguments): one a stream event
        self.first_output_at: float | None = None
        self.texts: dict[Hashable, TextSink] = {}  # by choice / output index
        self.tool_calls: dict[Hashable, ToolCall] = {}
        self.model: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.finish_reason: str | None = None
        self.ended = False  # the protocol's proper end was seen ([DONE], a finish reason, message_stop)
        self.broken = False  # the upstream reported an error inside the stream
        self.refused = False
        self.appends = 0
        self.last_append: tuple[bytes, str, TextSink | None] | None = None

    def add_text(self, key: Hashable, text: str, marker: bytes) -> None:
        """Content of the output `key`. `marker` is how its JSON member starts on the wire."""
        if not text:
            return
        sink = None
        if self._keep_text:
            sink = self.texts.get(key)
            if sink is None:
                sink = self.texts[key] = TextSink(self._cap)
            sink.add(text)
        self._appended(marker, text, sink)

    def add_tool_arguments(self, key: Hashable, text: str, marker: bytes) -> None:
        if not text:
            return
        sink = self._tool_call(key).arguments if self._keep_tool_arguments else None
        if sink is not None:
            sink.add(text)
        self._appended(marker, text, sink)

    def name_tool(self, key: Hashable, name: Any) -> None:
        if self._keep_tool_arguments and isinstance(name, str) and name:
            self._tool_call(key).name = name

    def refusal(self, text: Any) -> None:
        """A refusal message: a guardrail, and the first output the client sees."""
        if isinstance(text, str) and text:
            self.refused = True
            record_guardrail(self.inspection, REFUSAL)
            self._output_started()

    def guardrail(self, source: str) -> None:
        record_guardrail(self.inspection, source)

    def set_model(self, model: Any) -> None:
        if isinstance(model, str) and model:
            self.model = model

    def set_finish_reason(self, reason: Any) -> None:
        """The first finish reason reported (choice 0's, when several choices finish)."""
        if isinstance(reason, str) and reason and self.finish_reason is None:
            self.finish_reason = reason

    def set_usage(self, prompt: Any, completion: Any, reasoning: Any = None) -> None:
        """Token counts as reported; a count that is not a non-negative integer is not a count."""
        if (prompt := reported_count(prompt)) is not None:
            self.prompt_tokens = prompt
        if (completion := reported_count(completion)) is not None:
            self.completion_tokens = completion
        if (reasoning := reported_count(reasoning)) is not None:
            self.reasoning_tokens = reasoning

    def _tool_call(self, key: Hashable) -> ToolCall:
        call = self.tool_calls.get(key)
        if call is None:
            call = self.tool_calls[key] = ToolCall(TextSink(self._cap))
        return call

    def _output_started(self) -> None:
        if self.first_output_at is None and self._now is not None:
            self.first_output_at = self._now()

    def _appended(self, marker: bytes, text: str, sink: TextSink | None) -> None:
        self._output_started()
        self.output_chars += len(text)
        self.deltas += 1
        self.appends += 1
        self.last_append = (marker, text, sink)


def findings_for(
    facts: RequestFacts,
    settings: InspectionSettings,
    inspection: Inspection,
    role: Role,
    started: float,
    now: Callable[[], float] | None,
    share_text: bool,
) -> Findings:
    """The Findings of one response: text kept only when something reads it."""
    return Findings(
        inspection,
        now,
        started=started,
        role=role,
        keep_text=share_text or facts.output_schema is not None or facts.json_object or bool(settings.text_rules),
        share_text=share_text,
        keep_tool_arguments=bool(facts.tool_schemas),
        cap=settings.max_schema_bytes,
    )


def reported_count(value: Any) -> int | None:
    """A token count as reported: a non-negative integer, else no count."""
    return value if type(value) is int and value >= 0 else None


def record(
    found: Findings,
    facts: RequestFacts,
    settings: InspectionSettings,
    *,
    produces_text: bool = True,
    checks: bool = True,
) -> None:
    """Write what was found into the inspection.

    `produces_text` is False for embeddings: no output length, no estimate. `checks` is False for a
    truncated stream: its output is not the model's answer, and the truncation already counts.
    """
    inspection = found.inspection
    inspection.finish_reason = found.finish_reason
    if found.first_output_at is not None:
        # Taken when the chunk with the first output arrived; only the subtraction happens now.
        inspection.ttft = found.first_output_at - found.started
    write_counts(inspection, settings, facts, found.role, found.model, found.prompt_tokens,
                 found.completion_tokens, found.reasoning_tokens,
                 found.output_chars if produces_text else None, found.deltas)
    if checks:
        inspection.schema_ok, inspection.schema_skipped = _check_outputs(found, facts, settings.max_schema_bytes)
    if found.share_text:
        inspection.text = "".join(sink.text() for sink in found.texts.values())
    if settings.text_rules and found.texts:
        text = inspection.text if found.share_text else "".join(sink.text() for sink in found.texts.values())
        record_text_rules(inspection, text or "", settings)


def write_counts(
    inspection: Inspection,
    settings: InspectionSettings,
    facts: RequestFacts,
    role: Role,
    model: str | None,
    prompt: int | None,
    completion: int | None,
    reasoning: int | None,
    chars: int | None,
    deltas: int,
) -> None:
    """The model, token counts, output length, the proxy's estimate and the cost of one answer, by
    the one rule every reader follows. `model` is the one the answer reported; `chars` None for an
    answer without text (embeddings: no length, no estimate, usage is the prompt count)."""
    inspection.model = model or facts.model
    inspection.prompt_tokens = prompt
    inspection.reasoning_tokens = reasoning
    if chars is not None:
        inspection.output_chars = chars
        inspection.estimated_tokens = estimate.completion_tokens(chars, deltas)
        usage_reported = completion is not None
    else:
        usage_reported = prompt is not None
    if usage_reported:
        inspection.completion_tokens = completion
        price = price_for(settings.prices, model, facts.model, role)
        if price is not None:
            inspection.cost_usd = cost_usd(price, prompt, completion)
    else:
        # No usage block: the proxy's own count (estimate.py), and say so. No cost either: cost
        # comes from reported usage only, and without the prompt count it would be mostly invented.
        inspection.usage_missing = True
        if chars is not None:
            inspection.completion_tokens = inspection.estimated_tokens


def _check_outputs(found: Findings, facts: RequestFacts, max_bytes: int) -> tuple[bool | None, bool]:
    """(schema_ok, schema_skipped): None when nothing was checked."""
    if facts.output_schema is None and not facts.json_object and not found.tool_calls:
        return None, False  # nothing asked for JSON: most responses
    results: list[bool] = []
    skipped = False

    def check(text: str | None, schema: dict[str, Any] | None, require_object: bool) -> None:
        nonlocal skipped
        if text is None or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            skipped = True
            return
        ok = json_output_ok(text, schema=schema, require_object=require_object)
        if ok is not None:
            results.append(ok)

    if (facts.output_schema is not None or facts.json_object) and not found.refused:
        # A refusal is not an answer: it counts as a guardrail, not as a schema failure.
        if found.texts:
            for sink in found.texts.values():
                check(None if sink.overflow else sink.text(), facts.output_schema, facts.json_object)
        elif not found.tool_calls:
            check("", facts.output_schema, facts.json_object)  # asked for JSON, got no answer
    for call in found.tool_calls.values():
        schema = facts.tool_schemas.get(call.name) if call.name is not None else None
        if call.arguments.overflow:
            check(None, schema, False)
        else:
            # A tool without parameters may stream no arguments at all (Anthropic sends no
            # input_json_delta); its SDK reads that as {}.
            check(call.arguments.text() or "{}", schema, False)
    if not results:
        return None, skipped
    return all(results), skipped
