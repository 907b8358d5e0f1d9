"""Structured outputs the simulator answers with: an instance of the requested JSON schema (for
the simple schemas structured outputs use), or one made to break it (`schema_break_rate`)."""

from __future__ import annotations

import json
import random
from typing import Any

VOCABULARY = tuple(
    """the a model answer data canary stable version request token stream latency quality
    release user prompt system result value update rollout traffic server response window metric
    signal check deploy safe fast slow good better new old first next step plan state shift
    because while when then so and but or of to in for on with by from about into over after
    is are was can will should may""".split()
)

JSON_OBJECT_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def output_json(schema: Any, rng: random.Random, break_rate: float) -> str:
    """The JSON text of an instance of `schema`, broken with probability `break_rate`:
    half the time a required property is left out (when there is one), otherwise the text is cut
    before its last character, so it does not parse."""
    try:
        value = instance_of(schema, rng)
    except _NotSimple:
        value = {}
    if rng.random() >= break_rate:
        return json.dumps(value)
    required = [name for name in schema.get("required", ()) if name in value] \
        if isinstance(schema, dict) and isinstance(value, dict) else []
    if required and rng.random() < 0.5:
        del value[rng.choice(required)]
        return json.dumps(value)
    return json.dumps(value)[:-1]


class _NotSimple(Exception):
    """A schema construct the simulator does not generate instances of ($ref, anyOf, ...)."""


_STRING_FORMATS = {"date": "2025-01-31", "date-time": "2025-01-31T12:00:00Z", "email": "user@example.com",
                   "uri": "https://example.com/", "uuid": "00000000-0000-4000-8000-000000000000"}


def instance_of(schema: Any, rng: random.Random) -> Any:
    """A small instance of a simple JSON Schema: every declared property, 1-3 array items."""
    if not isinstance(schema, dict):
        raise _NotSimple
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise _NotSimple
        return {name: instance_of(sub, rng) for name, sub in properties.items()}
    if kind == "array":
        low = schema.get("minItems", 1)
        high = max(low, min(schema.get("maxItems", 3), 3))
        return [instance_of(schema.get("items", {"type": "string"}), rng) for _ in range(rng.randint(low, high))]
    if kind == "string":
        if schema.get("format") in _STRING_FORMATS:
            return _STRING_FORMATS[schema["format"]]
        return " ".join(rng.choices(VOCABULARY, k=max(1, min(3, schema.get("minLength", 1)))))
    if kind == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 100)))
    if kind == "number":
        return round(rng.uniform(float(schema.get("minimum", 0)), float(schema.get("maximum", 1))), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    raise _NotSimple


# --- the wire format ----------------------------------------------------------------------------


