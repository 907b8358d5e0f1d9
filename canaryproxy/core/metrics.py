"""The catalogue of metrics that rules can name.

One place lists every metric a rule (`metric: error_rate`) may use, its unit and what counts as a
sample. Config validation rejects a name that is not here; the windows compute each one from a
snapshot (`canaryproxy.core.window.WindowSnapshot.metric`).

Units decide how a threshold is written in config: `seconds` accepts durations (`10s`, `250ms`),
the others plain numbers.

*Late* metrics (`MetricSpec.late`) count feedback (core.types.Feedback): a user's rating or a
downstream failure arrives after the response (median ~30 s, sometimes minutes) and is filed in
the second its request was routed, so the last minutes of a window are always short of it. Rules
read them over a window that ends `rollout.feedback_settle` before now (core/rules.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Unit(enum.StrEnum):
    RATIO = "ratio"  # 0..1
    SECONDS = "seconds"
    TOKENS = "tokens"
    CHARS = "chars"
    PER_MINUTE = "per_minute"
    PER_SECOND = "per_second"
    USD = "usd"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    unit: Unit
    samples: str  # what counts as one sample, for "insufficient data" and the decision record
    description: str
    late: bool = False  # counts feedback, which arrives after the response (module docstring)


@dataclass(frozen=True, slots=True)
class MetricValue:
    """A metric over one window: its value (None when there is nothing to compute it from) and the
    number of samples behind it."""

    value: float | None
    samples: int


def _spec(name: str, unit: Unit, samples: str, description: str, late: bool = False) -> tuple[str, MetricSpec]:
    return name, MetricSpec(name, unit, samples, description, late)


METRICS: dict[str, MetricSpec] = dict(
    [
        _spec("error_rate", Unit.RATIO, "requests",
              "share of requests that failed: 5xx, upstream errors, truncated streams"),
        _spec("availability", Unit.RATIO, "requests", "1 - error_rate"),
        _spec("latency_p50", Unit.SECONDS, "requests", "median request duration"),
        _spec("latency_p95", Unit.SECONDS, "requests", "95th percentile request duration"),
        _spec("latency_p99", Unit.SECONDS, "requests", "99th percentile request duration"),
        _spec("latency_mean", Unit.SECONDS, "requests", "mean request duration"),
        _spec("ttft_p50", Unit.SECONDS, "responses with a first token", "median time to first token"),
        _spec("ttft_p95", Unit.SECONDS, "responses with a first token",
              "95th percentile time to first token"),
        _spec("ttft_p99", Unit.SECONDS, "responses with a first token",
              "99th percentile time to first token"),
        _spec("tokens_per_request", Unit.TOKENS, "responses with usage",
              "mean prompt + completion tokens per response"),
        _spec("output_tokens_per_request", Unit.TOKENS, "responses with usage",
              "mean completion tokens per response"),
        _spec("prompt_tokens_per_request", Unit.TOKENS, "responses with usage",
              "mean prompt tokens per response"),
        _spec("output_tokens_p95", Unit.TOKENS, "responses with usage",
              "95th percentile completion tokens"),
        _spec("estimated_tokens_per_request", Unit.TOKENS, "responses with output",
              "mean completion tokens as the proxy counts them (the same estimator on every version)"),
        _spec("tokens_estimated_rate", Unit.RATIO, "responses with usage",
              "share of token counts that are the proxy's estimates (the response had no usage)"),
        _spec("output_length_mean", Unit.CHARS, "inspected responses",
              "mean output length in characters (content plus tool-call arguments)"),
        _spec("output_length_p95", Unit.CHARS, "inspected responses",
              "95th percentile output length in characters"),
        _spec("schema_failure_rate", Unit.RATIO, "schema-checked responses",
              "share of checked outputs that did not parse or validate"),
        _spec("guardrail_per_minute", Unit.PER_MINUTE, "requests",
              "guardrail interventions per minute"),
        _spec("guardrail_rate", Unit.RATIO, "requests",
              "share of requests with a guardrail intervention"),
        _spec("truncation_rate", Unit.RATIO, "requests", "share of responses cut off mid-body"),
        _spec("usage_missing_rate", Unit.RATIO, "inspected responses",
              "share of LLM responses without a usage block"),
        _spec("cost_per_request", Unit.USD, "priced responses", "mean cost per response in USD"),
        _spec("request_rate", Unit.PER_SECOND, "requests", "requests per second"),
        _spec("negative_feedback_rate", Unit.RATIO, "requests",
              "negative user feedback records per response (late)", late=True),
        _spec("negative_feedback_per_minute", Unit.PER_MINUTE, "requests",
              "negative user feedback records per minute (late)", late=True),
        _spec("negative_feedback_share", Unit.RATIO, "rated responses",
              "share of the user feedback received that is negative: among answers rated (late)", late=True),
        _spec("downstream_error_rate", Unit.RATIO, "requests",
              "downstream failures reported per response (late)", late=True),
        _spec("downstream_errors_per_minute", Unit.PER_MINUTE, "requests",
              "downstream failures reported per minute (late)", late=True),
    ]
)
