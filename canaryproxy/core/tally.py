"""What is counted of a finished request, declared once, and the mergeable tally that counts it.

Every reader of outcomes — the metric windows, the Prometheus exporter, the judge — reads them
through the declarations below (and feedback records through the FEEDBACK ones), so one new counter is one line here (and, for a rule to name it,
one entry in core/metrics.py). A declaration says what is read of an `Observed` and over which
requests:

* `EVERY`: every recorded request (what Prometheus reports: everything that happened);
* `JUDGED`: only the requests that say something about the version (`counts_for_version`: not a
  client hang-up, not a refused or late request body, not shutdown). A client that hangs up
  mid-stream leaves a short output and a low token count that say nothing about the version, so
  the windows' rates and means count judged requests only.

A `Tally` holds one set of counts: one second of one role in a window, a merge of seconds, or a
role's lifetime in the exporter. Tallies add and subtract (a window slides by subtracting the
seconds that left), so the tallies of two processes merge into the tally of both.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from canaryproxy.core.histogram import Histogram, HistogramLayout
from canaryproxy.core.types import Feedback, Observed

LATENCY_LAYOUT = HistogramLayout(min_value=1e-4, max_value=1e5)  # seconds: 100 µs .. 28 hours
COUNT_LAYOUT = HistogramLayout(min_value=1.0, max_value=1e8)  # tokens and characters


class Scope(enum.Enum):
    EVERY = "every"  # every recorded request
    JUDGED = "judged"  # requests that count for the version
    FEEDBACK = "feedback"  # read of a Feedback record (`Tally.record_feedback`), not of a request


@dataclass(frozen=True, slots=True)
class Declaration:
    """One thing counted of a request: `expression` reads it from an `Observed` named `o`.

    kind `flag`: counts 1 where true; `count`: an integer summed (None counts 0); `total`: a float
    summed where not None; `label`: one bounded label (None: none) counted once; `labels`: an
    iterable of bounded labels, each counted once; `distribution`: a value, where not None, into
    a histogram of `layout`. Expressions are compiled once, at import, into the readers
    (`of`) and into `Tally.record`, so the hot path runs them inline, as hand-written code would.
    """

    kind: str
    name: str
    expression: str
    scope: Scope = Scope.JUDGED
    layout: HistogramLayout | None = None

    @property
    def of(self) -> Callable[[Observed], Any]:
        """The expression as a function of one request."""
        return _READERS[self.name]


def _flag(name: str, expression: str, scope: Scope = Scope.JUDGED) -> Declaration:
    return Declaration("flag", name, expression, scope)


def _count(name: str, expression: str) -> Declaration:
    return Declaration("count", name, expression)


def _total(name: str, expression: str) -> Declaration:
    return Declaration("total", name, expression)


def _label(name: str, expression: str) -> Declaration:
    return Declaration("label", name, expression, Scope.EVERY)


def _labels(name: str, expression: str) -> Declaration:
    return Declaration("labels", name, expression)


def _distribution(name: str, expression: str, layout: HistogramLayout) -> Declaration:
    return Declaration("distribution", name, expression, layout=layout)


COUNTS: tuple[Declaration, ...] = (
    _flag("requests", "True", Scope.EVERY),
    _flag("judged", "True"),
    _flag("failed", "o.failed"),
    _flag("truncated", "o.truncated"),
    _flag("schema_checked", "o.schema_ok is not None"),
    _flag("schema_failures", "o.schema_ok is False"),
    _flag("schema_skipped", "o.schema_skipped"),
    _flag("guardrail_requests", "o.guardrails"),
    _flag("usage_missing", "o.usage_missing"),
    # Responses whose token count is an estimate (no usage), of those with a count (`token_requests`).
    _flag("tokens_estimated", "o.usage_missing and o.completion_tokens is not None"),
    _flag("inspect_errors", "o.inspect_error"),
    _count("prompt_tokens", "o.prompt_tokens"),  # only ever reported: prompts are not estimated
    _count("completion_tokens", "o.completion_tokens"),  # reported, or estimated where usage is missing
    _count("completion_tokens_estimated", "o.completion_tokens if o.usage_missing else None"),
    _count("estimated_tokens", "o.estimated_tokens"),  # the proxy's own count, on every version alike
    _flag("estimated_token_requests", "o.estimated_tokens is not None"),
    _flag("cost_count", "o.cost_usd is not None"),
    # Feedback records (core.types.Feedback), filed in the second their request was routed: per
    # kind, what was received and what was negative (the users' verdict was bad; the consumer failed).
    _flag("feedback_received", "o.kind == 'feedback'", Scope.FEEDBACK),
    _flag("negative_feedback_received", "o.kind == 'feedback' and o.negative", Scope.FEEDBACK),
    _flag("downstream_reports", "o.kind == 'downstream_error'", Scope.FEEDBACK),
    _flag("downstream_errors", "o.kind == 'downstream_error' and o.negative", Scope.FEEDBACK),
)
TOTALS: tuple[Declaration, ...] = (_total("cost_usd", "o.cost_usd"),)
LABELLED: tuple[Declaration, ...] = (
    _label("status_classes", "o.status_class"),
    _label("errors", "None if o.error is None else o.error.value"),
    _labels("guardrails", "o.guardrails"),
    # Feedback that arrives after the response, by declared name (core.types.Feedback).
    Declaration("label", "feedback", "o.name", Scope.FEEDBACK),
    Declaration("label", "negative_feedback", "o.name if o.negative else None", Scope.FEEDBACK),
)
DISTRIBUTIONS: tuple[Declaration, ...] = (
    _distribution("latency", "o.latency", LATENCY_LAYOUT),
    _distribution("ttft", "o.ttft", LATENCY_LAYOUT),
    _distribution("output_tokens", "o.completion_tokens", COUNT_LAYOUT),
    _distribution("output_length", "o.output_chars", COUNT_LAYOUT),
)
DECLARATIONS = (*COUNTS, *TOTALS, *LABELLED, *DISTRIBUTIONS)
DECLARED = {d.name: d for d in DECLARATIONS}
_COUNT_POSITION = {d.name: i for i, d in enumerate(COUNTS)}
_TOTAL_POSITION = {d.name: i for i, d in enumerate(TOTALS)}
_LABELLED_POSITION = {d.name: i for i, d in enumerate(LABELLED)}
_DISTRIBUTION_POSITION = {d.name: i for i, d in enumerate(DISTRIBUTIONS)}
_READERS: dict[str, Callable[[Observed], Any]] = {
    d.name: eval(f"lambda o: {d.expression}", {}) for d in DECLARATIONS  # noqa: S307 (our own text)
}

# The count that says how many requests a total is summed over (an emptied total is exactly 0).
TOTAL_COUNTS: Mapping[str, str] = {"cost_usd": "cost_count"}


def _record_source(scopes: tuple[Scope, ...], everything: bool, distributions: bool) -> str:
    """The body of a `record` for the declarations of `scopes`: one line per declaration, judged
    ones after the `counts_for_version` check (unless `everything`)."""
    lines = ["def record(tally, o):", "    counts, totals, labelled = tally.counts, tally.totals, tally.labelled"]
    if distributions:
        lines.append("    histograms = tally.distributions")
    for scope in scopes:
        if scope is Scope.JUDGED and not everything:
            lines.append("    if not o.counts_for_version:\n        return")
        lines += _declaration_lines(scope, distributions)
    return "\n".join(lines)


def _declaration_lines(scope: Scope, distributions: bool) -> list[str]:
    lines = []
    for group in (COUNTS, TOTALS, LABELLED, DISTRIBUTIONS):
        for i, d in enumerate(group):
            if d.scope is not scope:
                continue
            if d.kind == "flag":
                lines.append(f"    if {d.expression}:\n        counts[{i}] += 1")
            elif d.kind == "count":
                lines.append(f"    value = {d.expression}\n    if value:\n        counts[{i}] += value")
            elif d.kind == "total":
                lines.append(f"    value = {d.expression}\n    if value is not None:\n        totals[{i}] += value")
            elif d.kind == "label":
                lines.append(f"    label = {d.expression}\n    if label is not None:\n"
                             f"        named = labelled[{i}]\n        named[label] = named.get(label, 0) + 1")
            elif d.kind == "labels":
                lines.append(f"    named = labelled[{i}]\n    for label in {d.expression}:\n"
                             "        named[label] = named.get(label, 0) + 1")
            elif distributions:
                lines.append(f"    value = {d.expression}\n    if value is not None:\n"
                             f"        histograms[{i}].add(value)")
    return lines


def _compiled(scopes: tuple[Scope, ...], everything: bool = False, distributions: bool = False
              ) -> Callable[[Tally, Any], None]:
    namespace: dict[str, Any] = {}
    exec(_record_source(scopes, everything, distributions), namespace)  # noqa: S102 (our own text)
    function: Callable[[Tally, Any], None] = namespace["record"]
    return function


class Tally:
    """The counts of a set of requests, by the declarations above. Mergeable.

    The windows' tally counts JUDGED declarations for judged requests only and keeps histograms;
    the exporter's (`LifetimeTally`) counts every declaration for every request, as Prometheus
    totals report what happened, and leaves histograms to its own fixed Prometheus buckets.
    """

    __slots__ = ("counts", "totals", "labelled", "distributions")
    keeps_distributions = True

    def __init__(self) -> None:
        self.counts = [0] * len(COUNTS)
        self.totals = [0.0] * len(TOTALS)
        self.labelled: list[dict[str, int]] = [{} for _ in LABELLED]
        self.distributions = (
            [Histogram(d.layout) for d in DISTRIBUTIONS if d.layout] if self.keeps_distributions else []
        )

    def record(self, o: Observed) -> None:
        """Count one request. On the hot path: every request, for its bucket."""
        _RECORD_JUDGED(self, o)

    def record_feedback(self, feedback: Feedback) -> None:
        """Count one feedback record (the FEEDBACK declarations)."""
        _RECORD_FEEDBACK(self, feedback)

    # --- reading ------------------------------------------------------------------------------

    def count(self, name: str) -> int:
        return self.counts[_COUNT_POSITION[name]]

    def total(self, name: str) -> float:
        return self.totals[_TOTAL_POSITION[name]]

    def labels(self, name: str) -> dict[str, int]:
        return self.labelled[_LABELLED_POSITION[name]]

    def distribution(self, name: str) -> Histogram:
        return self.distributions[_DISTRIBUTION_POSITION[name]]

    @property
    def requests(self) -> int:
        return self.counts[0]

    # --- merging ------------------------------------------------------------------------------

    def clear(self) -> None:
        self.counts = [0] * len(COUNTS)
        self.totals = [0.0] * len(TOTALS)
        self.labelled = [{} for _ in LABELLED]
        for histogram in self.distributions:
            histogram.clear()

    def copy(self) -> Tally:
        twin = type(self).__new__(type(self))
        twin.counts = self.counts.copy()
        twin.totals = self.totals.copy()
        twin.labelled = [labels.copy() for labels in self.labelled]
        twin.distributions = [histogram.copy() for histogram in self.distributions]
        return twin

    def add(self, other: Tally) -> None:
        """self += other."""
        self.counts = [mine + theirs for mine, theirs in zip(self.counts, other.counts)]
        self.totals = [mine + theirs for mine, theirs in zip(self.totals, other.totals)]
        for mine, theirs in zip(self.labelled, other.labelled):
            for label, count in theirs.items():
                mine[label] = mine.get(label, 0) + count
        for histogram, their_histogram in zip(self.distributions, other.distributions):
            their_histogram.merge_into(histogram)

    def subtract(self, other: Tally) -> None:
        """self -= other, where self holds everything `other` holds.

        Counts and histogram bins are integers, so this is exact. A float total picks up rounding
        of about one ulp per subtraction; it is reset to exactly 0 when the count that goes with
        it (`TOTAL_COUNTS`) reaches 0, so an emptied window reads 0, not 1e-17.
        """
        self.counts = [mine - theirs for mine, theirs in zip(self.counts, other.counts)]
        self.totals = [
            mine - theirs if self.counts[_COUNT_POSITION[TOTAL_COUNTS[name]]] else 0.0
            for name, mine, theirs in zip(_TOTAL_POSITION, self.totals, other.totals)
        ]
        for mine, theirs in zip(self.labelled, other.labelled):
            for label, count in theirs.items():
                left = mine[label] - count
                if left:
                    mine[label] = left
                else:
                    del mine[label]  # a merge must equal a fresh count, which has no zero labels
        for histogram, their_histogram in zip(self.distributions, other.distributions):
            their_histogram.remove_from(histogram)

    def as_dict(self) -> dict[str, object]:
        """Every declared field by name: counts, totals, label counts and histograms."""
        fields: dict[str, object] = dict(zip(_COUNT_POSITION, self.counts))
        fields.update(zip(_TOTAL_POSITION, self.totals))
        fields.update(zip(_LABELLED_POSITION, self.labelled))
        fields.update(zip(_DISTRIBUTION_POSITION, self.distributions))
        return fields


class LifetimeTally(Tally):
    """Every declaration over every request, without histograms: the exporter's totals."""

    __slots__ = ()
    keeps_distributions = False

    def record(self, o: Observed) -> None:
        _RECORD_EVERYTHING(self, o)


_RECORD_JUDGED = _compiled((Scope.EVERY, Scope.JUDGED), distributions=True)
_RECORD_EVERYTHING = _compiled((Scope.EVERY, Scope.JUDGED), everything=True)
_RECORD_FEEDBACK = _compiled((Scope.FEEDBACK,))
