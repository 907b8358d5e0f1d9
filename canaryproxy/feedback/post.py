"""Reading one feedback post: the JSON body → a `Post`, or the refusal that says what is wrong.

    {"token": "...", "name": "thumbs", "value": false, "comment": "made up a citation"}
    {"request_id": "...", "name": "rating", "value": 2}

Exactly one of `token` and `request_id`; `name` and `value` required; `comment` optional (a
string, validated and not kept: the proxy stores no user text). Any other key is refused, like an
unknown key in config: a typo (`"valeu"`) must not be silently read as a missing value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

FIELDS = frozenset({"token", "request_id", "name", "value", "comment"})


class Refusal(Exception):
    """A post refused: its status, a bounded reason (the metric's label) and a sentence."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Post:
    token: str | None
    request_id: str | None
    name: str
    value: Any
    comment: str | None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse(body: bytes, max_comment: int) -> Post:
    """The post in `body`; a `Refusal` (400, or 413 for a long comment) when it is not one."""
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refusal(400, "malformed", f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise Refusal(400, "invalid", f"expected a JSON object, got {_json_type(document)}")
    unknown = sorted(set(document) - FIELDS)
    if unknown:
        raise Refusal(400, "invalid", f"unknown field {unknown[0]!r}: a post takes token or request_id, "
                      "name, value and comment")
    token, request_id = document.get("token"), document.get("request_id")
    if (token is None) == (request_id is None):
        raise Refusal(400, "invalid", "give exactly one of token (from the response header) and "
                      "request_id (the response's X-Request-Id)")
    for field, value in (("token", token), ("request_id", request_id)):
        if value is not None and (not isinstance(value, str) or not value):
            raise Refusal(400, "invalid", f"{field} must be a non-empty string, got {_json_type(value)}")
    name = document.get("name")
    if not isinstance(name, str):
        raise Refusal(400, "invalid", "name is required: a declared feedback name (a string)"
                      if name is None else f"name must be a string, got {_json_type(name)}")
    if "value" not in document:
        raise Refusal(400, "invalid", f"value is required (the verdict for {name[:64]!r})")
    comment = document.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise Refusal(400, "invalid", f"comment must be a string, got {_json_type(comment)}")
        if len(comment) > max_comment:
            raise Refusal(413, "too_large", f"comment is {len(comment)} characters, over the limit of "
                          f"{max_comment}")
    return Post(token, request_id, name, document["value"], comment)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
