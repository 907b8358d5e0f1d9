"""Prometheus metrics: lifetime totals per version, computed at scrape time.

`Totals` is an `OutcomeSink`: on the request path it only bumps plain integers and floats (a dict
lookup and a bisect per histogram, about a microsecond). `Exporter` is a prometheus_client
`Collector` that turns those totals, and the live weight and rollout state, into metric families
when Prometheus scrapes; the registry is passed in, so each test gets a fresh one.

Label values are bounded: version ∈ {stable, canary}; status class; error kind (an enum);
guardrail source (fixed names plus the rule names in the config).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from canaryproxy.core.types import Role, Outcome

# Bucket bounds, in the unit of each metric. Model calls range from tens of milliseconds
# (embeddings) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
LENGTH_BUCKETS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000)

_ROLES = (Role.STABLE, Role.CANARY)


class _Histogram:
    """Cumulative Prometheus histogram counts (non-cumulative internally, summed at scrape)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family_buckets(self) -> list[tuple[str, float]]:
        buckets, running = [], 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            buckets.append((_le(bound), running))
        buckets.append(("+Inf", running + self.counts[-1]))
        return buckets


def _le(bound: float) -> str:
    return repr(float(bound))


class _RoleTotals:
    __slots__ = (
        "requests", "upstream_errors", "truncated", "schema_checks", "schema_failures",
        "guardrails", "prompt_tokens", "completion_tokens", "cost_usd", "duration", "ttft",
        "output_length",
    )

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}  # status class -> count
        self.upstream_errors: dict[str, int] = {}  # error kind -> count
        self.truncated = 0
        self.schema_checks = 0
        self.schema_failures = 0
        self.guardrails: dict[str, int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.duration = _Histogram(DURATION_BUCKETS)
        self.ttft = _Histogram(TTFT_BUCKETS)
        self.output_length = _Histogram(LENGTH_BUCKETS)


class Totals:
    """Lifetime totals per version. An OutcomeSink: O(1), never raises for a well-formed Outcome."""

    def __init__(self) -> None:
        self.roles: dict[Role, _RoleTotals] = {role: _RoleTotals() for role in _ROLES}

    def record(self, outcome: Outcome) -> None:
        totals = self.roles[outcome.role]
        status_class = outcome.status_class
        totals.requests[status_class] = totals.requests.get(status_class, 0) + 1
        totals.duration.observe(outcome.latency)
        error = outcome.error
        if error is not None and error.is_upstream_fault:
            totals.upstream_errors[error.value] = totals.upstream_errors.get(error.value, 0) + 1
        if outcome.truncated:
            totals.truncated += 1
        if outcome.ttft is not None:
            totals.ttft.observe(outcome.ttft)
        if outcome.output_chars is not None:
            totals.output_length.observe(outcome.output_chars)
        if outcome.prompt_tokens:
            totals.prompt_tokens += outcome.prompt_tokens
        if outcome.completion_tokens:
            totals.completion_tokens += outcome.completion_tokens
        if outcome.schema_ok is not None:
            totals.schema_checks += 1
            if not outcome.schema_ok:
                totals.schema_failures += 1
        for source in outcome.guardrails:
            totals.guardrails[source] = totals.guardrails.get(source, 0) + 1
        if outcome.cost_usd:
            totals.cost_usd += outcome.cost_usd


class Exporter(Collector):
    """Builds the metric families at scrape time from the totals and the live state.

    `extra` yields more metric families at scrape time (the rollout adds its stage, phase and
    rollback count).
    """

    def __init__(
        self,
        totals: Totals,
        weight: Callable[[], float],
        extra: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        self._totals = totals
        self._weight = weight
        self._extra = extra

    def describe(self) -> list[Metric]:
        # Describing by collecting is cheap here and keeps names in one place.
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        roles = self._totals.roles
        requests = CounterMetricFamily(
            "canaryproxy_requests", "Requests finished, by version and status class "
            "(none: the connection ended before a status was sent).", labels=["version", "status_class"])
        errors = CounterMetricFamily(
            "canaryproxy_upstream_errors", "Requests that failed at the upstream, by kind.",
            labels=["version", "kind"])
        truncated = CounterMetricFamily(
            "canaryproxy_truncated_streams", "Responses cut off before their end.", labels=["version"])
        schema_checks = CounterMetricFamily(
            "canaryproxy_schema_checks", "Outputs checked against a JSON schema.", labels=["version"])
        schema_failures = CounterMetricFamily(
            "canaryproxy_schema_failures", "Outputs that did not parse or validate against their schema.",
            labels=["version"])
        guardrails = CounterMetricFamily(
            "canaryproxy_guardrail_interventions", "Guardrail interventions, by source.",
            labels=["version", "source"])
        tokens = CounterMetricFamily(
            "canaryproxy_tokens", "Tokens reported by the upstream (estimated when usage is missing).",
            labels=["version", "kind"])
        cost = CounterMetricFamily(
            "canaryproxy_cost_usd", "Cost of the requests from the configured price table, in USD.",
            labels=["version"])
        duration = HistogramMetricFamily(
            "canaryproxy_request_duration_seconds", "Time from request received to last byte sent.",
            labels=["version"])
        ttft = HistogramMetricFamily(
            "canaryproxy_time_to_first_token_seconds", "Time from request received to the first content token.",
            labels=["version"])
        length = HistogramMetricFamily(
            "canaryproxy_output_length_chars", "Output length in characters (content plus tool-call arguments).",
            labels=["version"])
        for role in _ROLES:
            totals = roles[role]
            version = role.value
            for status_class, count in sorted(totals.requests.items()):
                requests.add_metric([version, status_class], count)
            for kind, count in sorted(totals.upstream_errors.items()):
                errors.add_metric([version, kind], count)
            truncated.add_metric([version], totals.truncated)
            schema_checks.add_metric([version], totals.schema_checks)
            schema_failures.add_metric([version], totals.schema_failures)
            for source, count in sorted(totals.guardrails.items()):
                guardrails.add_metric([version, source], count)
            tokens.add_metric([version, "prompt"], totals.prompt_tokens)
            tokens.add_metric([version, "completion"], totals.completion_tokens)
            cost.add_metric([version], totals.cost_usd)
            duration.add_metric([version], totals.duration.family_buckets(), totals.duration.total)
            ttft.add_metric([version], totals.ttft.family_buckets(), totals.ttft.total)
            length.add_metric([version], totals.output_length.family_buckets(), totals.output_length.total)
        yield from (requests, errors, truncated, schema_checks, schema_failures, guardrails, tokens,
                    cost, duration, ttft, length)
        yield GaugeMetricFamily(
            "canaryproxy_canary_weight", "Share of traffic routed to the canary, in percent.",
            value=self._weight())
        if self._extra is not None:
            yield from self._extra()
