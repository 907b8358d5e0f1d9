"""Recognising guardrail interventions: a filter, a refusal or a policy blocked or changed an answer.

Each intervention is recorded as a source name in `Inspection.guardrails` (and so in the Outcome's),
at most once per response.
The names are bounded (they become metric labels): the fixed ones below, plus rule names and sources
from the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canaryproxy.inspection.result import Inspection
from canaryproxy.inspection.settings import InspectionSettings

CONTENT_FILTER = "content_filter"  # finish_reason "content_filter" (OpenAI, Azure)
AZURE_CONTENT_FILTER = "azure_content_filter"  # Azure content_filter_results with filtered: true
REFUSAL = "refusal"  # Anthropic stop_reason "refusal"; an OpenAI refusal message


def record_guardrail(inspection: Inspection, source: str) -> None:
    if source not in inspection.guardrails:
        inspection.guardrails += (source,)


def record_response_head(
    inspection: Inspection, status: int, headers: Mapping[str, str], settings: InspectionSettings
) -> None:
    """Interventions the upstream announces in its status code or headers."""
    source = settings.status_rules.get(status)
    if source is not None:
        record_guardrail(inspection, source)
    for rule in settings.header_rules:
        value = headers.get(rule.header)
        if value is not None and value.strip().lower() == rule.value.lower():
            record_guardrail(inspection, rule.source)


def azure_filtered(results: Any) -> bool:
    """Whether an Azure `content_filter_results` object says a category was filtered.

    Categories map to {"filtered": bool, ...}; blocklist results may be a list of such objects
    (older API versions) or an object with a `details` list. Anything else says nothing.
    """
    if not isinstance(results, dict):
        return False
    for category in results.values():
        if isinstance(category, dict):
            if category.get("filtered") is True:
                return True
            details = category.get("details")
            if isinstance(details, list) and any(_filtered_entry(entry) for entry in details):
                return True
        elif isinstance(category, list) and any(_filtered_entry(entry) for entry in category):
            return True
    return False


def _filtered_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("filtered") is True


def azure_prompt_filtered(prompt_filter_results: Any) -> bool:
    """Whether any prompt in Azure's `prompt_filter_results` list was filtered."""
    return isinstance(prompt_filter_results, list) and any(
        isinstance(entry, dict) and azure_filtered(entry.get("content_filter_results"))
        for entry in prompt_filter_results
    )


def record_text_rules(inspection: Inspection, text: str, settings: InspectionSettings) -> None:
    """Config rules whose regular expression occurs in the output text."""
    for rule in settings.text_rules:
        if rule.pattern.search(text) is not None:
            record_guardrail(inspection, rule.name)
