"""The JSON fast path (plainbody.py) writes exactly what the general readers write, or declines."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from inspect_support import run

from canaryproxy.core.types import Role
from canaryproxy.inspection import Inspection, InspectionSettings, Price, PriceTable
from canaryproxy.inspection.findings import findings_for, record
from canaryproxy.inspection.openai import chat_body
from canaryproxy.inspection.plainbody import plain_chat_possible, read_plain_chat
from canaryproxy.inspection.request import RequestFacts

PRICES = PriceTable(models={"gpt-4o": Price(2.5, 10.0)}, roles={Role.CANARY: Price(1.0, 2.0)})
SETTINGS = InspectionSettings(prices=PRICES)
PLAIN = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}

ODD = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=3), st.just([]), st.just({}))
COUNTS = st.one_of(st.integers(-1, 10**6), ODD)
MESSAGES = st.fixed_dictionaries(
    {"role": st.just("assistant")},
    optional={"content": st.one_of(st.text(max_size=30), ODD), "refusal": st.one_of(st.none(), st.text(max_size=5)),
              "tool_calls": st.one_of(st.none(), st.just([]),
                                      st.just([{"id": "c", "type": "function",
                                                "function": {"name": "f", "arguments": "{}"}}])),
              "function_call": st.one_of(st.none(), st.just({"name": "f", "arguments": "{}"}))},
)
CHOICES = st.fixed_dictionaries(
    {"index": st.integers(0, 2)},
    optional={"message": st.one_of(MESSAGES, ODD),
              "finish_reason": st.one_of(st.sampled_from(["stop", "length", "content_filter", "tool_calls", ""]), ODD),
              "content_filter_results": st.just({"hate": {"filtered": True, "severity": "high"}})},
)
USAGE = st.fixed_dictionaries(
    {}, optional={"prompt_tokens": COUNTS, "completion_tokens": COUNTS,
                  "completion_tokens_details": st.one_of(st.fixed_dictionaries({"reasoning_tokens": COUNTS}), ODD)},
)
BODIES = st.fixed_dictionaries(
    {"object": st.just("chat.completion")},
    optional={"model": st.one_of(st.sampled_from(["gpt-4o", "other", ""]), ODD),
              "choices": st.one_of(st.lists(st.one_of(CHOICES, ODD), max_size=2), ODD),
              "usage": st.one_of(USAGE, ODD),
              "error": st.one_of(st.none(), st.just({"message": "boom"})),
              "prompt_filter_results": st.just([{"prompt_index": 0, "content_filter_results": {}}])},
)
# Bodies of the shape the fast path takes, with what may vary inside it (and all else above).
PLAIN_MESSAGES = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": st.text(max_size=30)},
    optional={"refusal": st.none(), "tool_calls": st.one_of(st.none(), st.just([]))},
)
PLAIN_BODIES = st.fixed_dictionaries(
    {"object": st.just("chat.completion"),
     "choices": st.lists(st.fixed_dictionaries(
         {"index": st.integers(0, 2), "message": PLAIN_MESSAGES,
          "finish_reason": st.one_of(st.sampled_from(["stop", "length", "content_filter", ""]), ODD)},
         optional={"content_filter_results": st.just({"hate": {"filtered": True}})}), min_size=1, max_size=1)},
    optional={"model": st.one_of(st.sampled_from(["gpt-4o", "other", ""]), ODD), "usage": st.one_of(USAGE, ODD),
              "error": st.none(), "prompt_filter_results": st.just([{"content_filter_results": {"x": {"filtered": True}}}])},
)
FACTS = st.builds(RequestFacts, api=st.just("chat.completions"),
                  model=st.one_of(st.none(), st.sampled_from(["gpt-4o", "asked"])))
ROLES = st.sampled_from([Role.STABLE, Role.CANARY, Role.SHADOW])


def slots(inspection: Inspection) -> dict[str, Any]:
    return {name: getattr(inspection, name) for name in Inspection.__slots__}


def general(body: dict[str, Any], facts: RequestFacts, role: Role) -> Inspection:
    inspection = Inspection()
    found = findings_for(facts, SETTINGS, inspection, role, 100.0, None, False)
    chat_body(body, found)
    record(found, facts, SETTINGS)
    return inspection


@settings(max_examples=600, deadline=None)
@given(body=st.one_of(PLAIN_BODIES, BODIES), facts=FACTS, role=ROLES)
def test_the_fast_path_writes_what_the_general_readers_write_or_nothing(
        body: dict[str, Any], facts: RequestFacts, role: Role) -> None:
    fast = Inspection()
    if read_plain_chat(body, fast, facts, SETTINGS, role):
        assert slots(fast) == slots(general(body, facts, role))
    else:
        assert slots(fast) == slots(Inspection())  # declined: nothing written


def test_the_usual_answer_takes_the_fast_path_and_reads_usage_and_cost() -> None:
    facts = RequestFacts(api="chat.completions", model="gpt-4o")
    fast = Inspection()
    assert read_plain_chat(PLAIN, fast, facts, SETTINGS, Role.STABLE)
    assert (fast.prompt_tokens, fast.completion_tokens, fast.output_chars) == (12, 3, len("Hello there"))
    assert fast.cost_usd == (12 * 2.5 + 3 * 10.0) / 1e6 and fast.finish_reason == "stop"
    assert slots(fast) == slots(general(PLAIN, facts, Role.STABLE))


def test_without_usage_the_estimate_stands_in_and_nothing_is_priced() -> None:
    body = {**PLAIN, "usage": None}
    fast = Inspection()
    assert read_plain_chat(body, fast, RequestFacts(api="chat.completions"), SETTINGS, Role.CANARY)
    assert fast.usage_missing and fast.completion_tokens == fast.estimated_tokens == 3 and fast.cost_usd is None


def test_requests_whose_answer_text_is_read_never_take_it() -> None:
    plain = RequestFacts(api="chat.completions")
    assert plain_chat_possible(plain, SETTINGS, share_text=False)
    assert not plain_chat_possible(plain, SETTINGS, share_text=True)  # a shadow pair compares texts
    assert not plain_chat_possible(RequestFacts(api="chat.completions", json_object=True), SETTINGS, False)
    assert not plain_chat_possible(RequestFacts(api="chat.completions", output_schema={"type": "object"}),
                                   SETTINGS, False)
    assert not plain_chat_possible(RequestFacts(api="chat.completions", tool_schemas={"f": None}), SETTINGS, False)


def test_a_schema_request_is_still_checked_through_the_inspector() -> None:
    request = {"model": "m", "messages": [], "response_format": {"type": "json_object"}}
    body = {**PLAIN, "choices": [{"index": 0, "message": {"role": "assistant", "content": "not json"},
                                  "finish_reason": "stop"}]}
    _, outcome = run("/v1/chat/completions", request, [json.dumps(body).encode()], content_type="application/json")
    assert outcome.schema_ok is False
    _, outcome = run("/v1/chat/completions", {"model": "m", "messages": []}, [json.dumps(body).encode()],
                     content_type="application/json")
    assert outcome.schema_ok is None and outcome.completion_tokens == 3
