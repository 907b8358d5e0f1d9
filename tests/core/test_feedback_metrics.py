"""Feedback in the windows: per-kind counts, and the late catalogue metrics, by hand."""

from __future__ import annotations

import pytest

from canaryproxy.core.metrics import METRICS
from canaryproxy.core.tally import Tally
from canaryproxy.core.types import ErrorKind, Feedback, FeedbackKind, Outcome, Role
from canaryproxy.core.window import WindowConfig, Windows

FEEDBACK_METRICS = ("negative_feedback_rate", "negative_feedback_per_minute", "negative_feedback_share",
                    "downstream_error_rate", "downstream_errors_per_minute")


def feedback(negative: bool, kind: FeedbackKind = FeedbackKind.FEEDBACK, routed_at: float = 10.0,
             role: Role = Role.CANARY) -> Feedback:
    name = "thumbs" if kind is FeedbackKind.FEEDBACK else "downstream_error"
    return Feedback(role=role, request_id="r", routed_at=routed_at, weight=5.0, key_hash=None, name=name,
                    value=not negative, negative=negative, received_at=routed_at + 30.0, kind=kind)


def test_feedback_records_are_counted_per_kind_and_verdict() -> None:
    tally = Tally()
    for record in (feedback(True), feedback(False), feedback(False),
                   feedback(True, FeedbackKind.DOWNSTREAM_ERROR), feedback(False, FeedbackKind.DOWNSTREAM_ERROR)):
        tally.record_feedback(record)
    assert tally.count("feedback_received") == 3
    assert tally.count("negative_feedback_received") == 1
    assert tally.count("downstream_reports") == 2
    assert tally.count("downstream_errors") == 1
    assert tally.count("requests") == 0
    assert tally.labels("negative_feedback") == {"thumbs": 1, "downstream_error": 1}


def test_the_feedback_metrics_are_catalogued_as_late_and_no_other_is() -> None:
    assert {name for name, spec in METRICS.items() if spec.late} == set(FEEDBACK_METRICS)


def test_feedback_metrics_by_hand() -> None:
    """A minute of one role: 200 requests (10 of them a client hang-up, which counts for nothing),
    12 ratings of which 4 negative, 3 downstream reports of which 2 failures."""
    windows = Windows(WindowConfig(bucket_seconds=1.0, span_seconds=120.0))
    for i in range(200):
        outcome = Outcome(role=Role.CANARY, started=0.0, weight=5.0, status=200, latency=0.5,
                          routed_at=float(i % 60), error=ErrorKind.CLIENT_DISCONNECT if i < 10 else None)
        windows.record(outcome, outcome.finished_at)
    records = [feedback(i < 4, routed_at=float(i)) for i in range(12)]
    records += [feedback(i < 2, FeedbackKind.DOWNSTREAM_ERROR, routed_at=float(i)) for i in range(3)]
    for record in records:
        windows.record_feedback(record, record.routed_at)
    snapshot = windows.snapshot(Role.CANARY, 60.0, 59.5)
    value = snapshot.metric
    assert value("negative_feedback_rate").value == pytest.approx(4 / 190)
    assert value("negative_feedback_rate").samples == 190
    assert value("negative_feedback_per_minute").value == pytest.approx(4.0)
    assert value("negative_feedback_share").value == pytest.approx(4 / 12)
    assert value("negative_feedback_share").samples == 12
    assert value("downstream_error_rate").value == pytest.approx(2 / 190)
    assert value("downstream_errors_per_minute").value == pytest.approx(2.0)
    assert snapshot.summary()["feedback"] == {"received": 12, "negative": 4, "downstream_reports": 3,
                                              "downstream_errors": 2}


def test_feedback_metrics_without_requests_or_ratings_have_no_value() -> None:
    windows = Windows(WindowConfig(bucket_seconds=1.0, span_seconds=120.0))
    windows.record_feedback(feedback(True, FeedbackKind.DOWNSTREAM_ERROR), 10.0)
    snapshot = windows.snapshot(Role.CANARY, 60.0, 30.0)
    for name in FEEDBACK_METRICS:
        assert snapshot.metric(name).value is None, name


def filled_windows() -> Windows:
    """Ten minutes of one request a second, and a negative rating on every third, each filed in the
    second its request was routed."""
    windows = Windows(WindowConfig(bucket_seconds=1.0, span_seconds=900.0))
    for second in range(600):
        outcome = Outcome(role=Role.CANARY, started=0.0, weight=5.0, status=200, latency=0.5,
                          routed_at=float(second))
        windows.record(outcome, outcome.finished_at)
        if second % 3 == 0:
            windows.record_feedback(feedback(True, routed_at=float(second)), float(second))
    return windows


def test_a_late_window_ends_before_now_and_keeps_a_running_tally_of_its_own() -> None:
    windows, fresh = filled_windows(), filled_windows()
    for t in (400.5, 410.5, 420.5, 599.5):
        late = windows.snapshot(Role.CANARY, 60.0, t, ends_before=120.0)
        current = windows.snapshot(Role.CANARY, 60.0, t)  # alternating with the late one
        expected = fresh.snapshot(Role.CANARY, 60.0, t - 120.0)
        assert (late.judged, late.negative_feedback_received) == (expected.judged, expected.negative_feedback_received)
        assert late.metric("negative_feedback_rate") == expected.metric("negative_feedback_rate")
        assert current.judged == fresh.snapshot(Role.CANARY, 60.0, t).judged
    since = windows.snapshot(Role.CANARY, 60.0, 599.5, since=500.0, ends_before=120.0)
    assert since.judged == 0  # nothing at the weight since 500 s is 120 s old at 599.5 s
    with pytest.raises(ValueError, match="ends_before must be a number of seconds >= 0"):
        windows.snapshot(Role.CANARY, 60.0, 599.5, ends_before=-1.0)
