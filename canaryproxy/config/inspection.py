"""The inspection and pricing sections, and their mapping onto what the inspectors are told."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from canaryproxy.config.fields import Size, Strict
from canaryproxy.core.types import Role
from canaryproxy.errors import ConfigError
from canaryproxy.inspection.settings import HeaderRule, InspectionSettings, Price, PriceTable, TextRule

if TYPE_CHECKING:
    from canaryproxy.config.root import Config


class RouteSchemaConfig(Strict):
    path: str = Field(pattern=r"^/")  # path prefix; the longest matching prefix wins
    schema_file: Path = Field(alias="schema")  # JSON Schema (draft 2020-12), relative to the config file

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class GuardrailHeaderConfig(Strict):
    header: str = Field(min_length=1)
    value: str
    source: str = Field(pattern=r"^[a-z0-9_]+$")


class GuardrailStatusConfig(Strict):
    status: int = Field(ge=100, le=599)
    source: str = Field(pattern=r"^[a-z0-9_]+$")


class GuardrailTextConfig(Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


class GuardrailsConfig(Strict):
    headers: tuple[GuardrailHeaderConfig, ...] = ()
    statuses: tuple[GuardrailStatusConfig, ...] = ()
    text: tuple[GuardrailTextConfig, ...] = ()


class InspectionConfig(Strict):
    enabled: bool = True
    inject_stream_usage: bool = True
    identity_encoding: bool = True
    max_schema_bytes: Size = Field(default=256 * 1024, gt=0)
    max_json_body_bytes: Size = Field(default=8 * 1024**2, gt=0)
    routes: tuple[RouteSchemaConfig, ...] = ()
    guardrails: GuardrailsConfig = GuardrailsConfig()


class PriceConfig(Strict):
    input: float = Field(ge=0)  # USD per million prompt tokens
    output: float = Field(ge=0)  # USD per million completion tokens


class PricingConfig(Strict):
    models: dict[str, PriceConfig] = Field(default_factory=dict)
    versions: dict[Literal["stable", "canary"], PriceConfig] = Field(default_factory=dict)


def build_inspection_settings(config: Config, base_dir: Path) -> InspectionSettings:
    """Map the inspection and pricing sections onto the inspectors' settings, reading schema files."""
    problems: list[str] = []
    route_schemas: dict[str, Any] = {}
    for index, route in enumerate(config.inspection.routes):
        path = route.schema_file if route.schema_file.is_absolute() else base_dir / route.schema_file
        try:
            route_schemas[route.path] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"inspection.routes[{index}].schema: cannot read a JSON schema from {path}: {exc}")
    guardrails = config.inspection.guardrails
    pricing = config.pricing
    if problems:
        raise ConfigError("invalid configuration", problems)
    return InspectionSettings(
        inject_stream_usage=config.inspection.inject_stream_usage,
        max_schema_bytes=config.inspection.max_schema_bytes,
        max_json_body_bytes=config.inspection.max_json_body_bytes,
        route_schemas=route_schemas,
        header_rules=tuple(HeaderRule(h.header, h.value, h.source) for h in guardrails.headers),
        status_rules={s.status: s.source for s in guardrails.statuses},
        text_rules=tuple(TextRule(t.name, re.compile(t.pattern)) for t in guardrails.text),
        prices=PriceTable(
            models={name: Price(p.input, p.output) for name, p in pricing.models.items()},
            roles={Role(role): Price(p.input, p.output) for role, p in pricing.versions.items()},
        ),
    )


