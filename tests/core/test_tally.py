"""The tally's declarations: what windows and exporter count of a request, merging, feedback."""

from __future__ import annotations

from hypothesis import given, strategies as st

from canaryproxy.core.tally import COUNTS, DECLARED, LifetimeTally, Tally
from canaryproxy.core.types import ErrorKind, Feedback, Outcome, Role
from tests.core.test_window import outcomes


def test_a_judged_outcome_counts_in_every_judged_declaration():
    outcome = Outcome(role=Role.CANARY, started=0.0, status=200, latency=0.5, ttft=0.1,
                      prompt_tokens=10, completion_tokens=20, output_chars=80, schema_ok=False,
                      guardrails=("pii",), cost_usd=0.25)
    tally = Tally()
    tally.record(outcome)
    assert tally.count("requests") == tally.count("judged") == 1
    assert (tally.count("failed"), tally.count("schema_checked"), tally.count("schema_failures")) == (0, 1, 1)
    assert (tally.count("prompt_tokens"), tally.count("completion_tokens")) == (10, 20)
    assert tally.total("cost_usd") == 0.25 and tally.count("cost_count") == 1
    assert tally.labels("status_classes") == {"2xx": 1} and tally.labels("guardrails") == {"pii": 1}
    assert tally.distribution("latency").count == 1 and tally.distribution("output_length").total == 80


def test_a_client_hang_up_counts_only_where_every_request_counts_but_prometheus_counts_it_all():
    outcome = Outcome(role=Role.STABLE, started=0.0, status=200, latency=0.1, completion_tokens=3,
                      error=ErrorKind.CLIENT_DISCONNECT)
    window, lifetime = Tally(), LifetimeTally()
    window.record(outcome)
    lifetime.record(outcome)
    assert window.count("requests") == 1 and window.count("judged") == 0
    assert window.labels("errors") == {"client_disconnect": 1} and window.count("completion_tokens") == 0
    assert lifetime.count("judged") == 1 and lifetime.count("completion_tokens") == 3
    assert lifetime.distributions == []  # the exporter keeps its own Prometheus buckets


@given(st.lists(outcomes, max_size=30), st.lists(outcomes, max_size=30))
def test_tallies_merge_and_subtract_to_what_a_fresh_count_gives(first, second):
    a, b, both = Tally(), Tally(), Tally()
    for o in first:
        a.record(o)
        both.record(o)
    for o in second:
        b.record(o)
        both.record(o)
    merged = a.copy()
    merged.add(b)
    assert merged.counts == both.counts and merged.labelled == both.labelled
    assert [h.bins() for h in merged.distributions] == [h.bins() for h in both.distributions]
    merged.subtract(b)
    assert merged.counts == a.counts and merged.labelled == a.labelled
    assert [h.bins() for h in merged.distributions] == [h.bins() for h in a.distributions]


def test_feedback_counts_by_name_and_verdict():
    tally = Tally()
    for negative in (True, False, True):
        tally.record_feedback(Feedback(role=Role.CANARY, request_id="r", routed_at=1.0, weight=5.0,
                                       key_hash=None, name="thumbs", value=not negative,
                                       negative=negative, received_at=2.0))
    assert tally.labels("feedback") == {"thumbs": 3} and tally.labels("negative_feedback") == {"thumbs": 2}
    assert tally.count("requests") == 0


def test_every_declaration_reads_an_outcome_by_its_name():
    outcome = Outcome(role=Role.CANARY, started=0.0, status=503, latency=1.0)
    assert DECLARED["failed"].of(outcome) is True
    assert DECLARED["latency"].of(outcome) == 1.0
    assert len({d.name for d in COUNTS}) == len(COUNTS)
