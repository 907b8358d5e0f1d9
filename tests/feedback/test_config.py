"""The `feedback:` section: off by default, strict, and precise about what is wrong."""

import pytest

from canaryproxy.config import parse
from canaryproxy.core.types import FeedbackKind
from canaryproxy.errors import ConfigError
from canaryproxy.feedback.names import BooleanName, CategoryName, RangeName

KEY = "0123456789abcdef0123456789abcdef"
BASE = "upstreams: {stable: 'http://127.0.0.1:1', canary: 'http://127.0.0.1:2'}\n"


def problems(text: str, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(BASE + text, environ or {})
    return info.value.problems


def test_off_by_default_and_no_key_needed():
    config = parse(BASE, {})
    assert config.feedback.enabled is False


def test_enabled_without_keys_says_what_to_add():
    [problem] = problems("feedback: {enabled: true}")
    assert "feedback.keys is empty" in problem and "32+ bytes" in problem


def test_a_short_key_is_refused_with_its_size():
    [problem] = problems("feedback: {enabled: true, keys: [short]}")
    assert "feedback.keys[0] is 5 bytes: a key needs at least 32" in problem


def test_keys_come_from_the_environment_and_the_first_signs():
    config = parse(BASE + "feedback: {enabled: true, keys: ['${NEW}', '${OLD}']}", {"NEW": KEY, "OLD": KEY[::-1]})
    settings = config.feedback.to_settings()
    assert settings.keys == (KEY.encode(), KEY[::-1].encode())
    found = problems("feedback: {enabled: true, keys: ['${MISSING}']}")
    assert "feedback.keys[0]: environment variable MISSING is not set" in found


def test_default_names_are_thumbs_and_downstream_error():
    settings = parse(BASE + f"feedback: {{enabled: true, keys: [{KEY}]}}", {}).feedback.to_settings()
    assert settings.names == {
        "thumbs": BooleanName("thumbs", negative=False),
        "downstream_error": BooleanName("downstream_error", True, FeedbackKind.DOWNSTREAM_ERROR),
    }
    assert settings.path == "/canaryproxy/v1/feedback" and settings.header == "Canaryproxy-Feedback-Token"
    assert settings.max_age == 86400 and settings.max_body == 16384 and settings.max_comment == 2000


def test_declared_names_of_every_type():
    text = f"""feedback:
  enabled: true
  keys: [{KEY}]
  max_age: 1h
  max_body: 4KiB
  names:
    rating: {{type: integer, min: 1, max: 5, negative_below: 3}}
    latency_ok: {{type: number, min: 0, negative_above: 2.5}}
    reason: {{type: category, values: [wrong, slow, other], negative: [wrong]}}
    broke: {{type: boolean, negative: true, kind: downstream_error}}
"""
    settings = parse(BASE + text, {}).feedback.to_settings()
    assert settings.names["rating"] == RangeName("rating", True, 1, 5, 3, None)
    assert settings.names["latency_ok"] == RangeName("latency_ok", False, 0, None, None, 2.5)
    assert settings.names["reason"] == CategoryName("reason", frozenset({"wrong", "slow", "other"}), frozenset({"wrong"}))
    assert settings.names["broke"].kind is FeedbackKind.DOWNSTREAM_ERROR
    assert settings.max_age == 3600 and settings.max_body == 4096


@pytest.mark.parametrize("declaration, expected", [
    ("{type: integer, min: 1, max: 5}", "say which values are negative"),
    ("{type: integer, min: 5, max: 1, negative_below: 3}", "min 5 is above max 1"),
    ("{type: integer, min: 1, max: 5, negative_below: 9}", "negative bound 9 lies outside min..max"),
    ("{type: category, values: [a, b], negative: [c]}", "negative names values that are not in values: c"),
    ("{type: category, values: [a, a], negative: []}", "values are listed twice"),
    ("{type: boolean}", "negative: required"),
    ("{type: boolean, negative: false, kind: nope}", "kind"),
    ("{type: text}", "type"),
    ("{type: boolean, negative: false, colour: red}", "colour: unknown key"),
])
def test_bad_declarations_are_refused_precisely(declaration, expected):
    found = problems(f"feedback: {{enabled: true, keys: [{KEY}], names: {{thumbs: {declaration}}}}}")
    assert any(expected in p and "feedback.names.thumbs" in p for p in found), found


def test_names_are_identifiers_and_bounded():
    found = problems(f"feedback: {{enabled: true, keys: [{KEY}], names: {{'Bad Name': {{type: boolean, negative: false}}}}}}")
    assert any("feedback.names.Bad Name" in p for p in found), found
    many = ", ".join(f"n{i}: {{type: boolean, negative: false}}" for i in range(33))
    [problem] = problems(f"feedback: {{enabled: true, keys: [{KEY}], names: {{{many}}}}}")
    assert "declares 33 names: give 1 to 32" in problem


def test_cors_origins_and_unknown_keys():
    found = problems(f"feedback: {{enabled: true, keys: [{KEY}], cors: {{allow_origins: ['app.example']}}}}")
    assert any("feedback.cors.allow_origins[0]" in p for p in found), found
    found = problems(f"feedback: {{enabled: true, keys: [{KEY}], rate: 5}}")
    assert any("feedback.rate: unknown key" in p for p in found), found
