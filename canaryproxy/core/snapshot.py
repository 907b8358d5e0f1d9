"""A window's merged tally over a span, and the catalogue metrics computed from it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from canaryproxy.core.histogram import Histogram
from canaryproxy.core.metrics import METRICS, MetricValue
from canaryproxy.core.tally import Tally


class WindowSnapshot:
    """The merged tally of one role over `span` seconds, read-only by convention: it owns its
    counts and histograms, which no window references any more.

    Every field the tally declares (core/tally.py) reads as an attribute: `snapshot.failed`,
    `snapshot.errors` (label -> count), `snapshot.latency` (a Histogram).
    """

    __slots__ = ("span", "_fields")

    def __init__(self, span: float, tally: Tally) -> None:
        self.span = span  # seconds covered: the requested span rounded up to whole buckets
        self._fields = tally.as_dict()  # takes over the tally's dicts and histograms

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"a window snapshot has no field {name!r}") from None

    @property
    def token_requests(self) -> int:
        """Judged outcomes with a completion token count ("responses with usage")."""
        count: int = self.output_tokens.count
        return count

    @property
    def output_chars(self) -> int:
        histogram: Histogram = self.output_length
        return round(histogram.total)

    @property
    def output_chars_count(self) -> int:
        """Judged outcomes with an output length ("inspected responses")."""
        count: int = self.output_length.count
        return count

    @property
    def guardrail_interventions(self) -> int:
        guardrails: dict[str, int] = self.guardrails
        return sum(guardrails.values())

    def metric(self, name: str) -> MetricValue:
        """The value of a metric of the catalogue (`canaryproxy.core.metrics.METRICS`)."""
        try:
            compute = _METRIC_FUNCTIONS[name]
        except KeyError:
            raise KeyError(
                f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}"
            ) from None
        return compute(self)

    def summary(self) -> dict[str, Any]:
        """Counts and every catalogue metric, JSON-serializable, for the admin API."""
        return {
            "span_seconds": self.span,
            "requests": self.requests,
            "judged": self.judged,
            "failed": self.failed,
            "status_classes": dict(self.status_classes),
            "errors": dict(self.errors),
            "truncated": self.truncated,
            "schema": {"checked": self.schema_checked, "failures": self.schema_failures,
                       "skipped": self.schema_skipped},
            "guardrails": dict(self.guardrails),
            "guardrail_requests": self.guardrail_requests,
            "usage_missing": self.usage_missing,
            "inspect_errors": self.inspect_errors,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                       "requests": self.token_requests, "estimated": self.tokens_estimated,
                       "estimated_share": self.metric("tokens_estimated_rate").value},
            "cost_usd": self.cost_usd,
            "feedback": {"received": self.feedback_received, "negative": self.negative_feedback_received,
                         "downstream_reports": self.downstream_reports,
                         "downstream_errors": self.downstream_errors},
            "metrics": {
                name: {"value": value.value, "samples": value.samples}
                for name, value in ((name, self.metric(name)) for name in METRICS)
            },
        }


def _ratio(part: float, whole: int) -> MetricValue:
    return MetricValue(part / whole if whole else None, whole)


def _quantile(histogram_of: Callable[[WindowSnapshot], Histogram], q: float
              ) -> Callable[[WindowSnapshot], MetricValue]:
    def compute(snapshot: WindowSnapshot) -> MetricValue:
        histogram = histogram_of(snapshot)
        return MetricValue(histogram.quantile(q), histogram.count)
    return compute


def _availability(s: WindowSnapshot) -> MetricValue:
    error_rate = _ratio(s.failed, s.judged)
    return MetricValue(None if error_rate.value is None else 1.0 - error_rate.value, s.judged)


def _per_span(count: float, samples: int, span_units: float) -> MetricValue:
    return MetricValue(count / span_units if samples else None, samples)


# How each catalogue metric is computed from a snapshot; samples follow the catalogue's `samples`.
_METRIC_FUNCTIONS: dict[str, Callable[[WindowSnapshot], MetricValue]] = {
    "error_rate": lambda s: _ratio(s.failed, s.judged),
    "availability": _availability,
    "latency_p50": _quantile(lambda s: s.latency, 0.50),
    "latency_p95": _quantile(lambda s: s.latency, 0.95),
    "latency_p99": _quantile(lambda s: s.latency, 0.99),
    "latency_mean": lambda s: MetricValue(s.latency.mean, s.latency.count),
    "ttft_p50": _quantile(lambda s: s.ttft, 0.50),
    "ttft_p95": _quantile(lambda s: s.ttft, 0.95),
    "ttft_p99": _quantile(lambda s: s.ttft, 0.99),
    "tokens_per_request": lambda s: _ratio(s.prompt_tokens + s.completion_tokens, s.token_requests),
    "output_tokens_per_request": lambda s: _ratio(s.completion_tokens, s.token_requests),
    "prompt_tokens_per_request": lambda s: _ratio(s.prompt_tokens, s.token_requests),
    "output_tokens_p95": _quantile(lambda s: s.output_tokens, 0.95),
    "estimated_tokens_per_request": lambda s: _ratio(s.estimated_tokens, s.estimated_token_requests),
    "tokens_estimated_rate": lambda s: _ratio(s.tokens_estimated, s.token_requests),
    "output_length_mean": lambda s: _ratio(s.output_chars, s.output_chars_count),
    "output_length_p95": _quantile(lambda s: s.output_length, 0.95),
    "schema_failure_rate": lambda s: _ratio(s.schema_failures, s.schema_checked),
    "guardrail_per_minute": lambda s: _per_span(s.guardrail_interventions, s.judged, s.span / 60.0),
    "guardrail_rate": lambda s: _ratio(s.guardrail_requests, s.judged),
    "truncation_rate": lambda s: _ratio(s.truncated, s.judged),
    "usage_missing_rate": lambda s: _ratio(s.usage_missing, s.output_chars_count),
    "cost_per_request": lambda s: _ratio(s.cost_usd, s.cost_count),
    "request_rate": lambda s: _per_span(s.requests, s.requests, s.span),
    # Feedback is filed at its request's routing second, requests at their last byte's: the
    # denominators are the requests that count for the version in the same window.
    "negative_feedback_rate": lambda s: _ratio(s.negative_feedback_received, s.judged),
    "negative_feedback_per_minute": lambda s: _per_span(s.negative_feedback_received, s.judged, s.span / 60.0),
    "negative_feedback_share": lambda s: _ratio(s.negative_feedback_received, s.feedback_received),
    "downstream_error_rate": lambda s: _ratio(s.downstream_errors, s.judged),
    "downstream_errors_per_minute": lambda s: _per_span(s.downstream_errors, s.judged, s.span / 60.0),
}
