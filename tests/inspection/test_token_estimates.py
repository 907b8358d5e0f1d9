"""The proxy's token count on recorded streams of each server family, against the known counts.

The streams (tests/fixtures/streams, written by bench/stream_fixtures.py) are in each server's
exact wire format; counts.json holds the completion tokens the server itself counts. The error
figures per family, before and after, are in bench/README.md ("Token estimates").
"""

from __future__ import annotations

import json
import re

import pytest
from inspect_support import FIXTURES, run

STREAMS = FIXTURES / "streams"
COUNTS = json.loads((STREAMS / "counts.json").read_text())
CHAT = "/v1/chat/completions"
# The client asks for no usage and the proxy does not inject it: what reaches the inspector is the
# server's stream as it was recorded.
REQUEST = {"model": "m", "stream": True, "stream_options": {"include_usage": False}}


def read(name: str, one_event_per_chunk: bool = True, request: dict = REQUEST):
    data = (STREAMS / name).read_bytes()
    ends = [m.end() for m in re.finditer(rb"\r?\n\r?\n", data)] if one_event_per_chunk else []
    pieces = [data[a:b] for a, b in zip([0, *ends], [*ends, len(data)]) if a < b]
    forwarded, outcome = run(CHAT, request, pieces)
    assert forwarded == data
    return outcome


@pytest.mark.parametrize("name", sorted(n for n, c in COUNTS.items() if c["family"] in ("llamacpp", "vllm")))
def test_a_stream_of_one_token_per_delta_is_counted_to_within_its_end_token(name: str) -> None:
    known = COUNTS[name]["completion_tokens"]
    for whole in (False, True):
        outcome = read(name, one_event_per_chunk=not whole)
        assert outcome.usage_missing and not outcome.inspect_error and not outcome.truncated
        assert outcome.completion_tokens == outcome.estimated_tokens
        # vLLM counts the EOS token, whose chunk carries no text; llama.cpp's count has no such token.
        assert known - 1 <= outcome.estimated_tokens <= known, name


@pytest.mark.parametrize("text", ["prose", "code", "cjk", "numbers"])
def test_vllm_with_include_usage_is_reported_exactly_and_still_counted(text: str) -> None:
    name = f"vllm_usage_{text}.sse"
    outcome = read(name, request={**REQUEST, "stream_options": {"include_usage": True}})
    known = COUNTS[name]["completion_tokens"]
    assert (outcome.usage_missing, outcome.completion_tokens, outcome.prompt_tokens) == (False, known, 31)
    # The proxy's own count is there too, for comparisons with a version that reports nothing.
    assert outcome.estimated_tokens == known - 1


@pytest.mark.parametrize("text", ["prose", "code", "numbers"])
def test_a_stream_that_coalesces_tokens_falls_back_to_its_length(text: str) -> None:
    name = f"coalescing_{text}.sse"
    outcome = read(name)
    known = COUNTS[name]["completion_tokens"]
    assert outcome.estimated_tokens == -(-outcome.output_chars // 4)  # length, not the ~known/4 deltas
    assert abs(outcome.estimated_tokens - known) <= 0.35 * known


def test_cjk_that_coalesces_is_the_length_estimates_known_weakness() -> None:
    # Four CJK tokens of one character each make 4-character deltas: below the coalescing mark, so
    # the delta count stands, a quarter of the tokens. Recorded, not hidden: bench/README.md.
    outcome = read("coalescing_cjk.sse")
    assert outcome.estimated_tokens == -(-COUNTS["coalescing_cjk.sse"]["completion_tokens"] // 4)
