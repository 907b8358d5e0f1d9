"""The evidence: the one way finished requests (and late feedback) reach the windows and the judge.

Whatever process served a request, its record arrives here through the outcome feed — in one
process straight from the data plane, with several through the shared backend — and is filed in
the windows at the wall-clock second it finished, counted toward the stage's `min_requests`
when the canary served it, and taken in by the judge. Feedback records (late verdicts on a
response: `record_feedback`) are filed at their request's routing second and taken in by the
judge's feedback tests. The controller reads only from here.

The judge's latency tests compare against stable's p95 and p99, which this module fixes once per
rollout from stable's own window (`LATENCY_BASELINE_SPAN`), never from the data under test: any
threshold fixed before the test looks keeps it valid, and a noisy one only costs power.

Two things change the judge besides requests: a new rollout starts (it forgets), and the latency
baseline is fixed. They are *events*, and go through `announce`: in one process straight back to
`apply`; with several, into the shared outcome stream, so that every process's judge applies them
at the same point among the same requests and all judges stay identical (which is what lets any
one of them take over, or save a checkpoint another can continue from).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from canaryproxy.core.evidence_events import EvidenceEvent, LatencyBaseline, Restart
from canaryproxy.core.judge import DEFAULT_FEEDBACK_SETTLE, Judge
from canaryproxy.core.snapshot import WindowSnapshot
from canaryproxy.core.pair_tally import PairTally
from canaryproxy.core.types import Feedback, Observed, Role, ShadowPair, Verdict
from canaryproxy.core.window import Windows

log = logging.getLogger("canaryproxy.controller")

# Stable's p95 and p99 for the judge's latency tests are fixed from this much of stable's traffic,
# once it has at least this many requests.
LATENCY_BASELINE_SPAN = 300.0
LATENCY_BASELINE_MIN_REQUESTS = 100


class Evidence:
    """An `ObservedSink` and `FeedbackSink`: windows + judge + the canary request count."""

    __slots__ = ("windows", "judge", "feedback_settle", "announce", "pairs", "_canary_requests", "_new_pairs",
                 "_baseline_needed")

    def __init__(self, windows: Windows, judge: Judge | None,
                 feedback_settle: float = DEFAULT_FEEDBACK_SETTLE) -> None:
        if not 0.0 < feedback_settle < math.inf:
            raise ValueError(f"feedback_settle must be a positive number of seconds, got {feedback_settle!r}")
        self.windows = windows
        self.judge = judge
        # How long after a response its feedback is due: the rules' late metrics read windows that
        # end this long before now (`WindowSource`); the judge has its own (JudgeConfig).
        self.feedback_settle = feedback_settle
        # Where events go; replaced by the shared feed's when several processes share the evidence.
        self.announce: Callable[[EvidenceEvent], None] = self.apply
        self._canary_requests = 0  # canary requests that count for the version, since taken
        self.pairs = PairTally()  # the shadow's pairs since the rollout (re)started, described
        self._new_pairs = 0  # shadow pairs since taken (a shadow stage's progress)
        self._baseline_needed = judge is not None

    def record(self, outcome: Observed) -> None:
        """Take in one finished request. On the request path in one process: O(1)."""
        self.windows.record(outcome, outcome.routed_at + outcome.latency)
        if outcome.role is Role.CANARY and outcome.counts_for_version:
            self._canary_requests += 1
        if self.judge is not None:
            self.judge.observe(outcome)

    def replay(self, records: Sequence[Observed], feedback: Sequence[Feedback] = (),
               pairs: Sequence[ShadowPair] = ()) -> None:
        """Records (and feedback, pairs) the judge's restored state already covers: into the
        windows (and the pairs' description), and through the judge's per-key caps only (so a
        user is capped across the checkpoint; the paired tests' caps, like the judge's, are not
        saved and start afresh)."""
        windows = self.windows
        for record in records:
            windows.record(record, record.routed_at + record.latency)
        for verdict in feedback:
            windows.record_feedback(verdict, verdict.routed_at)
        for pair in pairs:
            self._file_pair(pair)
        if self.judge is not None:
            self.judge.prime_key_caps(records)
            self.judge.prime_feedback_caps(feedback)

    def record_pair(self, pair: ShadowPair) -> None:
        """Take in one shadow pair: the canary's answer into the shadow's window (at the second it
        finished), the pair into the judge's paired tests and the shadow's description."""
        self._file_pair(pair)
        self._new_pairs += 1
        if self.judge is not None:
            self.judge.observe_pair(pair)

    def _file_pair(self, pair: ShadowPair) -> None:
        shadow = pair.shadow
        self.windows.record(shadow, shadow.routed_at + shadow.latency)
        self.pairs.take(pair)

    def take_pairs(self) -> int:
        """Shadow pairs since the last call (a shadow stage's progress toward `min_requests`)."""
        taken, self._new_pairs = self._new_pairs, 0
        return taken

    def record_feedback(self, feedback: Feedback) -> None:
        """Take in one feedback record: into the windows in the second its request was routed (it
        is late), and into the judge's feedback tests (which label it by the share at routing)."""
        self.windows.record_feedback(feedback, feedback.routed_at)
        if self.judge is not None:
            self.judge.observe_feedback(feedback)

    # --- what an evaluation reads ------------------------------------------------------------

    def take_canary_requests(self) -> int:
        """Canary requests since the last call (the stage's progress toward `min_requests`)."""
        taken, self._canary_requests = self._canary_requests, 0
        return taken

    @property
    def pending_canary_requests(self) -> int:
        return self._canary_requests

    @property
    def pending_pairs(self) -> int:
        return self._new_pairs

    def judge_verdicts(self, wall: float) -> list[Verdict]:
        """The judge's verdicts, once stable's latency baseline is fixed if it can be."""
        if self.judge is None:
            return []
        if self._baseline_needed:
            self._fix_latency_baseline(wall)
        return self.judge.verdicts(wall)

    def snapshot(self, role: Role, span: float, wall: float, since: float | None = None,
                 ends_before: float = 0.0) -> WindowSnapshot:
        return self.windows.snapshot(role, min(span, self.windows.config.span_seconds), wall, since, ends_before)

    def discard_canary_requests(self) -> None:
        """Forget the pending count: a new leader's stored state already holds its predecessor's."""
        self._canary_requests = 0
        self._new_pairs = 0

    def restart(self) -> None:
        """A new rollout starts (announced, so that every process's judge forgets at one point)."""
        self.announce(Restart())

    def apply(self, event: EvidenceEvent) -> None:
        if isinstance(event, Restart):
            self.pairs = PairTally()
        if self.judge is None:
            return
        if isinstance(event, Restart):
            self.judge.reset()
            self._baseline_needed = True
        else:
            self.judge.set_latency_thresholds(event.p95, event.p99)
            self._baseline_needed = False

    def _fix_latency_baseline(self, wall: float) -> None:
        assert self.judge is not None
        stable = self.snapshot(Role.STABLE, LATENCY_BASELINE_SPAN, wall)
        p95, p99 = stable.metric("latency_p95"), stable.metric("latency_p99")
        if p95.value is None or p99.value is None or p95.samples < LATENCY_BASELINE_MIN_REQUESTS:
            return
        self._baseline_needed = False  # until `apply` takes it (at once, or from the stream)
        self.announce(LatencyBaseline(p95.value, max(p99.value, p95.value)))
        log.info("judge latency thresholds fixed at stable's p95 = %.1f ms, p99 = %.1f ms (n=%d)",
                 p95.value * 1000, p99.value * 1000, p95.samples)
