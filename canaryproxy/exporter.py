"""Prometheus metrics: lifetime totals per version, computed at scrape time.

`Totals` is an `OutcomeSink`: on the request path it counts each request through the tally's
declarations (core/tally.py: a `LifetimeTally` per version, every declaration over every request,
as Prometheus reports what happened) and into fixed-bucket Prometheus histograms. `Exporter` is a
prometheus_client `Collector` that turns those totals, the live weight and the rollout's state
into metric families when Prometheus scrapes; the registry is passed in, so each test gets a
fresh one. Metric families are built here only (the admin listener serves them).

Label values are bounded: version ∈ {stable, canary}; status class; error kind (an enum);
guardrail source (fixed names plus the rule names in the config); token kind and source
(reported | estimated); retry reason (fixed names); feedback name (at most 32, declared in config)
and refusal reason (fixed names).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from typing import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from canaryproxy.control.controller import Readout
from canaryproxy.core.stages import Phase
from canaryproxy.core.tally import DECLARED, LifetimeTally
from canaryproxy.core.types import LIVE_ROLES, ErrorKind, Outcome, Role, Status
from canaryproxy.feedback.endpoint import FeedbackCounters
from canaryproxy.proxy.shadow import ShadowSender

# Bucket bounds, in the unit of each metric. Model calls range from tens of milliseconds
# (embeddings) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
LENGTH_BUCKETS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000)

_ROLES = LIVE_ROLES
# Totals are kept for the shadow too; /metrics shows it (version="shadow") when shadowing is on.
_COUNTED_ROLES = (*LIVE_ROLES, Role.SHADOW)


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


# The tally's distributions the exporter reports as Prometheus histograms, with their buckets.
_HISTOGRAMS = (("latency", DURATION_BUCKETS), ("ttft", TTFT_BUCKETS), ("output_length", LENGTH_BUCKETS))


class _RoleTotals:
    __slots__ = ("tally", "histograms")

    def __init__(self) -> None:
        self.tally = LifetimeTally()
        # name -> (what is read of a request, its Prometheus histogram)
        self.histograms = {name: (DECLARED[name].of, _Histogram(bounds)) for name, bounds in _HISTOGRAMS}


class Totals:
    """Lifetime totals per version. An OutcomeSink: O(1), never raises for a well-formed Outcome."""

    def __init__(self) -> None:
        self.roles: dict[Role, _RoleTotals] = {role: _RoleTotals() for role in _COUNTED_ROLES}

    def record(self, outcome: Outcome) -> None:
        totals = self.roles[outcome.role]
        totals.tally.record(outcome)
        for value_of, histogram in totals.histograms.values():
            value = value_of(outcome)
            if value is not None:
                histogram.observe(value)


class Exporter(Collector):
    """Builds the metric families at scrape time from the totals and the live state.

    `rollout` reads the rollout's state for its gauges (stage, phase, rollbacks, rule statuses);
    None without a rollout. `retries` reads the requests each version's upstream was sent a second
    time, by reason (the exchanges count them: a retried request that succeeded is no failure, and
    leaves no other trace in the totals).
    """

    def __init__(
        self,
        totals: Totals,
        weight: Callable[[], float],
        rollout: Callable[[], Readout] | None = None,
        retries: Callable[[], Mapping[Role, Mapping[str, int]]] | None = None,
        feedback: FeedbackCounters | None = None,
        shadow: ShadowSender | None = None,
    ) -> None:
        self._totals = totals
        self._feedback = feedback
        self._shadow = shadow
        self._weight = weight
        self._rollout = rollout
        self._retries = retries

    def describe(self) -> list[Metric]:
        # Describing by collecting is cheap here and keeps names in one place.
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        families = _traffic_families()
        for role in _ROLES if self._shadow is None else _COUNTED_ROLES:
            _add_version(families, role.value, self._totals.roles[role])
        yield from families.values()
        if self._shadow is not None:
            yield from shadow_families(self._shadow)
        if self._retries is not None:
            yield retry_family(self._retries())
        yield GaugeMetricFamily(
            "canaryproxy_canary_weight", "Share of traffic routed to the canary, in percent.",
            value=self._weight())
        if self._rollout is not None:
            yield from rollout_families(self._rollout())
        if self._feedback is not None:
            yield from feedback_families(self._feedback)


def shadow_families(sender: ShadowSender) -> Iterator[Metric]:
    """The shadow copies of this process. Their answers are counted as version="shadow" in the
    traffic families (cost included): never as the canary's or stable's."""
    counters = sender.counters
    yield CounterMetricFamily("canaryproxy_shadow_copies", "Requests copied to the canary in the shadow.",
                              value=counters.sent)
    yield CounterMetricFamily("canaryproxy_shadow_pairs", "Shadow copies compared with the user's answer.",
                              value=counters.paired)
    dropped = CounterMetricFamily(
        "canaryproxy_shadow_dropped", "Shadow copies not sent or not compared, by reason (busy: the "
        "canary fell behind; streamed_body; too_large; client_gone; shutdown; unsafe: a request that "
        "must not be sent twice; overloaded: the event loop lagged).", labels=["reason"])
    for reason, count in counters.dropped.items():
        dropped.add_metric([reason], count)
    yield dropped
    yield CounterMetricFamily("canaryproxy_shadow_texts_compared", "Pairs whose two texts were compared.",
                              value=counters.compared_texts)
    yield CounterMetricFamily("canaryproxy_shadow_same_text", "Pairs whose texts are equal after normalisation.",
                              value=counters.same_text)
    yield GaugeMetricFamily("canaryproxy_shadow_in_flight", "Shadow copies running now.", value=sender.in_flight)


def feedback_families(counters: FeedbackCounters) -> Iterator[Metric]:
    """Feedback counted where it was accepted (each post once, in the process that took it)."""
    accepted = CounterMetricFamily(
        "canaryproxy_feedback", "Feedback accepted on responses, by the version that served them, "
        "the declared name and whether the declaration calls the value negative.",
        labels=["version", "name", "verdict"])
    for (version, name, verdict), count in sorted(counters.accepted.items()):
        accepted.add_metric([version, name, verdict], count)
    yield accepted
    refused = CounterMetricFamily(
        "canaryproxy_feedback_refused", "Feedback posts refused (nothing counted), by reason.", labels=["reason"])
    for reason, count in sorted(counters.refused.items()):
        refused.add_metric([reason], count)
    yield refused
    yield CounterMetricFamily("canaryproxy_feedback_duplicates",
                              "Feedback posts for a (request, name) already counted: answered, not counted.",
                              value=counters.duplicates)


def _traffic_families() -> dict[str, Metric]:
    """The per-version traffic families, empty."""
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
        "canaryproxy_tokens", "Tokens by source: reported by the upstream's usage, or estimated by "
        "the proxy for responses without usage (completion tokens only: prompts are not estimated).",
        labels=["version", "kind", "source"])
    without_usage = CounterMetricFamily(
        "canaryproxy_responses_without_usage", "LLM responses that carried no usage: their completion "
        "tokens are estimated and they have no cost.", labels=["version"])
    cost = CounterMetricFamily(
        "canaryproxy_cost_usd", "Cost from the configured price table, of responses with reported usage "
        "only (canaryproxy_responses_without_usage counts those without), in USD.",
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
    return {"requests": requests, "errors": errors, "truncated": truncated, "schema_checks": schema_checks,
            "schema_failures": schema_failures, "guardrails": guardrails, "tokens": tokens,
            "without_usage": without_usage, "cost": cost, "duration": duration, "ttft": ttft, "length": length}


def _add_version(families: dict[str, Metric], version: str, totals: _RoleTotals) -> None:
    """One version's samples into every traffic family."""
    tally = totals.tally
    for status_class, count in sorted(tally.labels("status_classes").items()):
        families["requests"].add_metric([version, status_class], count)
    for kind, count in sorted(tally.labels("errors").items()):
        if ErrorKind(kind).is_upstream_fault:
            families["errors"].add_metric([version, kind], count)
    families["truncated"].add_metric([version], tally.count("truncated"))
    families["schema_checks"].add_metric([version], tally.count("schema_checked"))
    families["schema_failures"].add_metric([version], tally.count("schema_failures"))
    for source, count in sorted(tally.labels("guardrails").items()):
        families["guardrails"].add_metric([version, source], count)
    estimated = tally.count("completion_tokens_estimated")
    tokens = families["tokens"]
    tokens.add_metric([version, "prompt", "reported"], tally.count("prompt_tokens"))
    tokens.add_metric([version, "completion", "reported"], tally.count("completion_tokens") - estimated)
    tokens.add_metric([version, "completion", "estimated"], estimated)
    families["without_usage"].add_metric([version], tally.count("usage_missing"))
    families["cost"].add_metric([version], tally.total("cost_usd"))
    for family, name in (("duration", "latency"), ("ttft", "ttft"), ("length", "output_length")):
        histogram = totals.histograms[name][1]
        families[family].add_metric([version], histogram.family_buckets(), histogram.total)


def retry_family(retries: Mapping[Role, Mapping[str, int]]) -> Metric:
    family = CounterMetricFamily(
        "canaryproxy_upstream_retries", "Requests sent to the upstream a second time, by reason: "
        "connect_refused (no byte had reached it), stale_connection (a pooled connection closed "
        "before any byte of the response; safe methods and Idempotency-Key requests only).",
        labels=["version", "reason"])
    for role in _ROLES:
        for reason, count in sorted(retries.get(role, {}).items()):
            family.add_metric([role.value, reason], count)
    return family


def rollout_families(readout: Readout) -> Iterator[Metric]:
    """The rollout's gauges: stage, phase, rollbacks, and each rule's and judge test's status."""
    yield GaugeMetricFamily("canaryproxy_rollout_stage",
                            "Current stage of the rollout, 1-based (0 when idle).", value=readout.stage)
    phase = GaugeMetricFamily("canaryproxy_rollout_phase",
                              "1 for the rollout's current phase, 0 for the others.", labels=["phase"])
    for p in Phase:
        phase.add_metric([p.value], 1.0 if readout.phase is p else 0.0)
    yield phase
    yield CounterMetricFamily("canaryproxy_rollbacks", "Rollbacks, automatic and by operator.",
                              value=readout.rollbacks)
    verdicts = GaugeMetricFamily("canaryproxy_rule_status",
                                 "1 for each rule's (and judge test's) current status.",
                                 labels=["rule", "status"])
    for v in readout.verdicts:
        for status in Status:
            verdicts.add_metric([v.source, status.value], 1.0 if v.status is status else 0.0)
    yield verdicts
