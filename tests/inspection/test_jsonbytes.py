"""`jsonbytes.loads` gives what `json.loads` gives, value or exception, for any bytes, but for
integers beyond 64 bits, which read as floats."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryproxy.inspection import jsonbytes

INT64 = st.integers(-(2**63), 2**64 - 1)  # what orjson reads as integers
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


def outcome(load: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "value", load(data)
    except Exception as error:  # noqa: BLE001 - the kind and message are what is compared
        return type(error).__name__, str(error)


def assert_same(data: bytes) -> None:
    assert outcome(jsonbytes.loads, data) == outcome(json.loads, data)


@settings(max_examples=300, deadline=None)
@given(
    value=st.dictionaries(st.text(max_size=5), JSON_VALUES, min_size=1, max_size=4),
    ensure_ascii=st.booleans(),
    before=st.sampled_from([b"", b" ", b"\n", b"\xef\xbb\xbf"]),
    after=st.sampled_from([b"", b" \r\n", b"x", b"}", b",1", b"\x00"]),
)
def test_objects_with_anything_around_them(
    value: dict[str, Any], ensure_ascii: bool, before: bytes, after: bytes
) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":"))
    assert_same(before + text.encode("utf-8", "surrogatepass") + after)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40), prefix=st.sampled_from([b'{"', b'{"a":', b"{", b""]))
def test_any_bytes(data: bytes, prefix: bytes) -> None:
    assert_same(prefix + data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": }',  # the scanner's StopIteration inside an object
        b'{"a": [1,]}',
        b'{"a":1',
        b'{"a":"\xff"}',  # not UTF-8
        b'{"a":"\\ud800"}',  # a lone surrogate, escaped
        b'{"a":"\xed\xa0\x80"}',  # a lone surrogate, raw
        b'{"a":NaN}',
        '{"a":1}'.encode("utf-16"),
        '{"a":1}'.encode("utf-16-le"),  # no BOM: json.loads tells it by the NUL bytes
        b'{ "a":1}',
        b'{"a":1}',
    ],
)
def test_edges(data: bytes) -> None:
    assert_same(data)


def test_a_body_nested_deeper_than_json_loads_reaches_is_sent_as_it_came() -> None:
    from canaryproxy.inspection import InspectionSettings, read_request

    deep = b"[" * 1000 + b"]" * 1000
    body = b'{"model":"m","stream":true,"stream_options":{},"x":' + deep + b"}"
    sent, facts = read_request("/v1/chat/completions", body, InspectionSettings())
    assert sent == body and not facts.usage_injected and facts.model == "m"


def test_integers_beyond_64_bits_read_as_floats_and_stay_whole_in_a_rewritten_request() -> None:
    from canaryproxy.inspection import InspectionSettings, read_request

    assert jsonbytes.loads(b'{"seed":123456789012345678901234567890}') == {"seed": 1.2345678901234568e29}
    body = b'{"model":"m","stream":true,"stream_options":{},"seed":123456789012345678901234567890}'
    sent, facts = read_request("/v1/chat/completions", body, InspectionSettings())
    assert facts.usage_injected
    assert json.loads(sent) == {"model": "m", "stream": True, "stream_options": {"include_usage": True},
                                "seed": 123456789012345678901234567890}
