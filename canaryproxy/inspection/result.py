"""What inspecting one response found, and the one place that writes it into the request's Outcome.

The inspectors never touch the `Outcome`: they fill an `Inspection` as they read (what the response
head says when they are created, guardrails as they are seen, everything else when the body ends),
and the data plane calls `apply` once, when the request ends however it ended. `apply` is also
where `truncated` is decided, from what the transport saw and what the protocol said.

An `Inspection` holds only what has been recorded: the running counts of a stream stay with the
inspector's `Findings` until the body ends. A response the client walked away from therefore
carries what its head and the events read so far announced (route, model, guardrails), and no
token counts, which were never final.
"""

from __future__ import annotations

from canaryproxy.core.types import Outcome


class Inspection:
    """The inspection's share of an Outcome; the defaults are the Outcome's (nothing was read)."""

    __slots__ = (
        "route",
        "model",
        "stream",
        "ttft",
        "prompt_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "usage_missing",
        "estimated_tokens",
        "output_chars",
        "finish_reason",
        "schema_ok",
        "schema_skipped",
        "guardrails",
        "cost_usd",
        "inspect_error",
        "ended_early",
        "text",
    )

    def __init__(self) -> None:
        self.route = ""  # the inspected API ("chat.completions", "messages", ...)
        self.model: str | None = None
        self.stream = False
        self.ttft: float | None = None  # seconds from the request's start to its first output
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        self.usage_missing = False
        self.estimated_tokens: int | None = None  # the proxy's own count of completion tokens
        self.output_chars: int | None = None
        self.finish_reason: str | None = None
        self.schema_ok: bool | None = None
        self.schema_skipped = False
        self.guardrails: tuple[str, ...] = ()
        self.cost_usd: float | None = None
        self.inspect_error = False
        # The protocol's own verdict: the stream ended without its proper end ([DONE], a finish
        # reason, message_stop) or reported an error inside it. Transport failures are not in it.
        self.ended_early = False
        # The answer's text, kept only when asked for (`inspector_for(share_text=True)`): a shadow
        # pair compares the two texts. None otherwise.
        self.text: str | None = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Inspection({fields})"


def apply(outcome: Outcome, inspection: Inspection | None, cut_short: bool) -> None:
    """Write what the inspection found into `outcome` and decide whether the response was truncated.

    `cut_short` is the transport's fact: the body stopped before its end (the upstream failed in
    the middle of it, or shutdown ended it). A response is truncated when it was cut short or when
    its protocol says it ended early, even if every byte arrived. `inspection` is None for a request
    nobody inspected. Called once per request, when it ends.
    """
    if inspection is None:
        outcome.truncated = cut_short
        return
    outcome.route = inspection.route
    outcome.model = inspection.model
    outcome.stream = inspection.stream
    outcome.ttft = inspection.ttft
    outcome.prompt_tokens = inspection.prompt_tokens
    outcome.completion_tokens = inspection.completion_tokens
    outcome.reasoning_tokens = inspection.reasoning_tokens
    outcome.usage_missing = inspection.usage_missing
    outcome.estimated_tokens = inspection.estimated_tokens
    outcome.output_chars = inspection.output_chars
    outcome.finish_reason = inspection.finish_reason
    outcome.schema_ok = inspection.schema_ok
    outcome.schema_skipped = inspection.schema_skipped
    outcome.guardrails = inspection.guardrails
    outcome.cost_usd = inspection.cost_usd
    outcome.inspect_error = inspection.inspect_error
    outcome.truncated = cut_short or inspection.ended_early
