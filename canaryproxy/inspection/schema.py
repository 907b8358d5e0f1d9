"""Whether an output is the JSON that was asked for.

Schemas are JSON Schema draft 2020-12, the dialect of OpenAI structured outputs. Building a
validator walks the whole schema, so validators are kept in a bounded LRU keyed by the schema's
canonical JSON: the same schema sent with every request of a client is compiled once. `$ref`s
resolve only inside the schema: jsonschema's default registry still fetches a remote `$ref` with
urllib (deprecated, but there), which would block the event loop, so validators get an empty
`referencing.Registry` that retrieves nothing and a remote reference makes the output unjudgeable.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable

_MISSING = object()
_NO_RETRIEVAL = Registry()  # type: ignore[var-annotated]


class ValidatorCache:
    """Compiled validators by schema, least recently used dropped first.

    An invalid schema is cached as None: it is as expensive to reject again as to compile.
    """

    __slots__ = ("_capacity", "_validators")

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"validator cache capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._validators: OrderedDict[str, Draft202012Validator | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._validators)

    def get(self, schema: Mapping[str, Any]) -> Draft202012Validator | None:
        """The validator for a schema, or None when the schema itself is not valid."""
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        validator = self._validators.get(key, _MISSING)
        if validator is not _MISSING:
            self._validators.move_to_end(key)
            return validator  # type: ignore[return-value]
        validator = _compile(schema)
        self._validators[key] = validator
        if len(self._validators) > self._capacity:
            self._validators.popitem(last=False)
        return validator


def _compile(schema: Mapping[str, Any]) -> Draft202012Validator | None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        return None
    return Draft202012Validator(schema, registry=_NO_RETRIEVAL)


VALIDATORS = ValidatorCache()


def json_output_ok(
    text: str,
    *,
    schema: Mapping[str, Any] | None,
    require_object: bool,
    validators: ValidatorCache = VALIDATORS,
) -> bool | None:
    """Whether `text` parses as JSON (an object when `require_object`) valid against `schema`.

    None when it cannot be judged: the schema is not a valid JSON Schema, or refers to another.
    """
    validator = validators.get(schema) if schema is not None else None
    if schema is not None and validator is None:
        return None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if require_object and not isinstance(document, dict):
        return False
    if validator is None:
        return True
    try:
        return bool(validator.is_valid(document))
    except Unresolvable:
        return None
    except RecursionError:
        return False
