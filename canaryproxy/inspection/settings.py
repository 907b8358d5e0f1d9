"""What the inspectors are told: plain frozen values, mapped from the YAML config by `config.py`.

Construction checks what can be checked without a request (route schemas are valid JSON Schemas,
limits are positive, rule names unique) and raises `ConfigError`, so a mistake fails at load and
never on the data plane. Text rules take compiled patterns: the config loader compiles them and can
name the YAML line of a bad one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from canaryproxy.core.types import Role
from canaryproxy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        if self.input_per_million < 0 or self.output_per_million < 0:
            raise ConfigError(
                f"a token price cannot be negative (input {self.input_per_million}, "
                f"output {self.output_per_million} USD per million tokens)"
            )


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by exact model name, with a per-role fallback for models not listed."""

    models: Mapping[str, Price] = field(default_factory=dict)
    roles: Mapping[Role, Price] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """An upstream response header that reports a guardrail intervention.

    Example: header `amazon-bedrock-guardrailAction`, value `INTERVENED`. Header names and values
    compare case-insensitively.
    """

    header: str
    value: str
    source: str


@dataclass(frozen=True, slots=True)
class TextRule:
    """A regular expression that, found in the output text, counts as a guardrail intervention."""

    name: str
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class InspectionSettings:
    inject_stream_usage: bool = True
    # Outputs (text or tool arguments) larger than this are not schema-checked: validation runs on
    # the event loop and its time grows with the document. Text rules scan the same first bytes.
    max_schema_bytes: int = 256 * 1024
    # JSON bodies larger than this are passed through uninspected.
    max_json_body_bytes: int = 8 * 1024 * 1024
    # Path prefix -> JSON Schema that outputs on that route must satisfy (longest prefix wins).
    route_schemas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    header_rules: tuple[HeaderRule, ...] = ()
    status_rules: Mapping[int, str] = field(default_factory=dict)  # upstream status -> source
    text_rules: tuple[TextRule, ...] = ()
    prices: PriceTable = field(default_factory=PriceTable)

    def __post_init__(self) -> None:
        for name in ("max_schema_bytes", "max_json_body_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"inspection {name} must be positive, got {getattr(self, name)}")
        for prefix, schema in self.route_schemas.items():
            if not prefix.startswith("/"):
                raise ConfigError(f"route schema path prefix {prefix!r} must start with '/'")
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as error:
                raise ConfigError(
                    f"route schema for {prefix!r} is not a valid JSON Schema (draft 2020-12): "
                    f"{error.message}"
                ) from None
        for status in self.status_rules:
            if not 100 <= status <= 599:
                raise ConfigError(f"guardrail status rule {status} is not an HTTP status code")
        names = [rule.name for rule in self.text_rules]
        if len(names) != len(set(names)):
            raise ConfigError(f"guardrail text rule names must be unique, got {names}")
