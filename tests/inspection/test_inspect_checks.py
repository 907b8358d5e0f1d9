"""Schema checks, validator caching, guardrail rules, prices and settings validation."""

from __future__ import annotations

import json
import re

import pytest
from inspect_support import run

from canaryproxy.core.types import Role
from canaryproxy.errors import ConfigError
from canaryproxy.inspection import HeaderRule, InspectionSettings, Price, PriceTable, TextRule
from canaryproxy.inspection.guardrails import azure_filtered
from canaryproxy.inspection.pricing import cost_usd, price_for
from canaryproxy.inspection.schema import ValidatorCache, json_output_ok

OBJECT = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
CHAT = "/v1/chat/completions"


# --- schema --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "schema", "require_object", "ok"),
    [
        ('{"n": 1}', OBJECT, False, True),
        ('{"n": "1"}', OBJECT, False, False),
        ('{"n": 1', OBJECT, False, False),
        ("[1]", None, True, False),
        ("{}", None, True, True),
        ("1", None, False, True),
        ("", None, False, False),
        ('{"a": 1}', {"$ref": "https://example.com/remote.json"}, False, None),
        ('{"a": 1}', {"type": "no-such-type"}, False, None),
        ('{"n": 1}', {"$defs": {"n": {"type": "integer"}}, "properties": {"n": {"$ref": "#/$defs/n"}}}, False, True),
    ],
    ids=["valid", "wrong type", "not JSON", "array for object", "object", "scalar", "empty", "remote $ref",
         "invalid schema", "local $ref"],
)
def test_json_output_ok(text: str, schema: dict | None, require_object: bool, ok: bool | None) -> None:
    assert json_output_ok(text, schema=schema, require_object=require_object, validators=ValidatorCache()) is ok


def test_validators_are_cached_by_canonical_json_and_evicted_least_recently_used() -> None:
    cache = ValidatorCache(capacity=2)
    first = cache.get({"type": "object", "required": ["a"]})
    assert cache.get({"required": ["a"], "type": "object"}) is first  # same schema, other key order
    assert len(cache) == 1
    second = cache.get({"type": "string"})
    cache.get({"type": "object", "required": ["a"]})  # use the first again: the second is oldest
    cache.get({"type": "integer"})
    assert len(cache) == 2
    assert cache.get({"type": "object", "required": ["a"]}) is first
    assert cache.get({"type": "string"}) is not second  # evicted and compiled anew


def test_invalid_schemas_are_cached_too() -> None:
    cache = ValidatorCache()
    assert cache.get({"type": 5}) is None
    assert len(cache) == 1


def structured_request(schema: dict) -> dict:
    return {"model": "m", "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def chat_body(content: str) -> bytes:
    return json.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": content}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 2}}).encode()


@pytest.mark.parametrize("size", [64, 65])
def test_outputs_over_max_schema_bytes_are_skipped(size: int) -> None:
    content = '{"n":1,"p":"' + "é" * 25 + "x" * (size - 64) + '"}'  # 40 characters, 64 or 65 bytes
    assert len(content.encode()) == size
    _, outcome = run(CHAT, structured_request(OBJECT), [chat_body(content)], content_type="application/json",
                     settings=InspectionSettings(max_schema_bytes=64))
    assert (outcome.schema_ok, outcome.schema_skipped) == ((True, False) if size == 64 else (None, True))


def test_a_large_stream_output_is_not_kept_and_skipped() -> None:
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"0123456789"},"finish_reason":null}]}\n\n'
    end = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    _, outcome = run(CHAT, {**structured_request(OBJECT), "stream": True}, [chunk] * 10 + [end],
                     settings=InspectionSettings(max_schema_bytes=64))
    assert (outcome.schema_ok, outcome.schema_skipped, outcome.output_chars) == (None, True, 100)


def test_an_empty_answer_to_a_json_request_fails_the_check() -> None:
    _, outcome = run(CHAT, structured_request(OBJECT), [chat_body("")], content_type="application/json")
    assert outcome.schema_ok is False


# --- guardrails ----------------------------------------------------------------------------------

GUARDED = InspectionSettings(
    header_rules=(HeaderRule("amazon-bedrock-guardrailAction", "INTERVENED", "bedrock_guardrail"),),
    status_rules={446: "gateway_guardrail"},
    text_rules=(TextRule("card_number", re.compile(r"\b\d{4}(?: \d{4}){3}\b")), TextRule("secret", re.compile("sk-"))),
)


def test_header_and_status_rules() -> None:
    _, outcome = run(CHAT, {"model": "m"}, [b'{"error":{"message":"blocked"}}'], content_type="application/json",
                     status=446, settings=GUARDED, headers={"Amazon-Bedrock-GuardrailAction": "intervened"})
    assert outcome.guardrails == ("gateway_guardrail", "bedrock_guardrail")


def test_header_rule_needs_the_value() -> None:
    _, outcome = run(CHAT, {"model": "m"}, [chat_body("hi")], content_type="application/json", settings=GUARDED,
                     headers={"amazon-bedrock-guardrailAction": "NONE"})
    assert outcome.guardrails == ()


def test_rules_apply_to_responses_we_do_not_read() -> None:
    _, outcome = run("/v1/models", b"", [b"{}"], content_type="application/json", status=446, settings=GUARDED)
    assert outcome.guardrails == ("gateway_guardrail",)


def test_text_rules_match_the_output_once_each() -> None:
    content = "card 4111 1111 1111 1111 and again 4111 1111 1111 1111"
    _, outcome = run(CHAT, {"model": "m"}, [chat_body(content)], content_type="application/json", settings=GUARDED)
    assert outcome.guardrails == ("card_number",)


@pytest.mark.parametrize(
    ("results", "filtered"),
    [
        ({"hate": {"filtered": False, "severity": "safe"}}, False),
        ({"hate": {"filtered": True, "severity": "high"}}, True),
        ({"custom_blocklists": [{"filtered": True, "id": "list1"}]}, True),
        ({"custom_blocklists": {"filtered": False, "details": [{"filtered": True, "id": "list1"}]}}, True),
        ({"error": {"code": "Timeout", "message": "filter did not run"}}, False),
        (None, False),
    ],
)
def test_azure_filter_results(results: object, filtered: bool) -> None:
    assert azure_filtered(results) is filtered


# --- prices --------------------------------------------------------------------------------------

TABLE = PriceTable(
    models={"gpt-4o-2024-08-06": Price(2.5, 10.0), "gpt-4o": Price(5.0, 15.0)},
    roles={Role.STABLE: Price(0.5, 1.5)},
)


@pytest.mark.parametrize(
    ("response_model", "request_model", "role", "price"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o", Role.STABLE, Price(2.5, 10.0)),
        ("gpt-4o-2099-01-01", "gpt-4o", Role.STABLE, Price(5.0, 15.0)),
        (None, "other", Role.STABLE, Price(0.5, 1.5)),
        (None, None, Role.CANARY, None),
    ],
)
def test_price_lookup_order(response_model: str | None, request_model: str | None, role: Role, price: Price | None) -> None:
    assert price_for(TABLE, response_model, request_model, role) == price


def test_cost_is_per_million_tokens() -> None:
    assert cost_usd(Price(2.5, 10.0), 1_000, 500) == pytest.approx(0.0075)
    assert cost_usd(Price(2.5, 10.0), 8, None) == pytest.approx(0.00002)


def test_no_cost_without_usage() -> None:
    stream = (b'data: {"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"hello"},"finish_reason":"stop"}]}\n\n'
              b"data: [DONE]\n\n")
    _, outcome = run(CHAT, {"model": "gpt-4o", "stream": True}, [stream], settings=InspectionSettings(prices=TABLE))
    # One delta of five characters: one token, counted; no cost without reported usage.
    assert (outcome.usage_missing, outcome.completion_tokens, outcome.cost_usd) == (True, 1, None)


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: InspectionSettings(max_schema_bytes=0), "max_schema_bytes must be positive"),
        (lambda: InspectionSettings(max_json_body_bytes=-1), "max_json_body_bytes must be positive"),
        (lambda: InspectionSettings(route_schemas={"/v1": {"type": 12}}), "route schema for '/v1' is not a valid"),
        (lambda: InspectionSettings(route_schemas={"v1": {}}), "path prefix 'v1' must start with '/'"),
        (lambda: InspectionSettings(status_rules={46: "x"}), "status rule 46 is not an HTTP status"),
        (lambda: InspectionSettings(text_rules=(TextRule("a", re.compile("x")), TextRule("a", re.compile("y")))),
         "text rule names must be unique"),
        (lambda: Price(-1.0, 1.0), "cannot be negative"),
    ],
)
def test_settings_reject_mistakes_at_load(make, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()
