"""The judge's intake: what each finished request contributes, before any statistics.

The intake takes every finished request (anything `Observed`: an `Outcome` of this process or an
`Observation` decoded from another's), decides what it counts for, and emits what the evidence
folds: closed `Block`s for the event tests, and for the amount tests the samples of each sampled
request (its side, its weight, a value per amount test). It reads requests through the tally
declarations (core/tally.py), as the windows and the exporter do. The evidence (events.py,
amounts.py) never sees a request. The measured figures behind the choices below are in
bench/README.md, "The judge's design figures".

* **Only requests that say something about the version** (`counts_for_version`) routed at a
  weight strictly between 0 and 100% are taken in; the others carry no information. A shadow
  request is refused (`live_role` raises): nothing may count it as stable. Latency events and
  every amount sample come from requests that did not fail: a failure has its own test, and its
  duration (a quick 502, a 60 s timeout) says nothing about serving speed.
* **The canary's share is counted, not assumed.** Routing is per user, so the canary's share of
  the *requests* is w only on average over which users land on it: one busy user on the canary
  can double its share, and θ₀ from w would then roll a healthy canary back (its share of events
  is above w) or miss a bad one. So each event test cuts the requests it looks at into blocks of
  `BLOCK_REQUESTS` consecutive ones and the evidence labels a block's events against the block's
  own share. A block also ends at a weight change, at a warm-up boundary and at every verdict,
  so none waits long at low traffic; a block may end at any time that does not depend on the
  events in it. Bursts, drifts and users coming and going change the share between blocks, never
  within the comparison.
* **Sticky keys.** One user's requests all go to one role and are correlated: a client retrying
  a failed request (the OpenAI SDK does twice) sends the same failure two more times. Each event
  test counts at most `max_events_per_key` (3) events per sticky key and stops counting the key's
  requests once it has them: three canary events with no stable event in between are then the
  most one user can add, which stays below 1/α at a canary share of a few percent (a cap of 5
  would let one user retrying a crashing prompt roll the canary back). The price is power when
  busy users reach the cap. The amount tests take `max_samples_per_key` (1) samples per key, one
  shared count: a user's prompts share a typical length, so three samples of one user are worth
  much less than three users, and the normal approximation would overstate the evidence. Requests
  without a key are always counted. The assumption left for the event tests is that within a
  version, which request carries an event does not depend on who sent it beyond what the cap
  bounds (the cap itself changes a block only when a key reaches it).
* **The caps live here, in the intake**, because the intake is where every process's compact
  per-request records meet: with several proxies the leader runs one intake over the records of
  all of them (scale-out.md, point 4), so "at most 3 events per key" holds across processes — a
  user whose requests are spread over three replicas is still one user. Caps kept per process
  and their evidence summed would allow 3 per key per process. The caps' memory (up to
  2 × `key_memory` keys per count) is not part of the saved state: a new leader rebuilds it from
  the records the outcome feed retains (`prime_key_caps`).
* **Warm-up, by wall clock.** After each weight increase (the first traffic included) the canary
  may run on cold instances: slow while caches and compiled kernels warm up, failing a little more
  while they do. The requests routed within `warmup_seconds` of the first request at the new
  highest weight are skipped by the latency tests (`WARM_UP_TESTS`), and the other event tests'
  blocks of them are judged against a widened null (events.py): the price is the warm-up's
  evidence on mild regressions; skipping those requests for the failure tests too would lose the
  fast catch of a canary that fails outright. Amount tests other than latency keep counting: a
  longer answer is the version's doing, warm or cold. The times compared are `routed_at`,
  wall-clock seconds, the only clock requests from several hosts agree on.
* **Latency thresholds.** `set_latency_thresholds` takes stable's p95 and p99 fixed before the
  canary gets traffic or taken from stable's window at a stage start, never re-estimated from the
  data under test. The intake holds them and decides what a latency event is: a request that did
  not fail and took longer than the p95 (`latency`) or the p99 (`latency_tail`). Until they are
  set the two latency event tests see no request (inactive). Evidence gathered under an earlier
  threshold is kept: the null is checked per block under the threshold in force then. The tail:
  a canary whose slowest few percent get much slower barely moves the share above stable's p95
  (its slow requests were above it already); above stable's p99 it goes from 1% to several times
  that. Any fixed threshold keeps the tests valid; a noisy p99 only costs power.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Protocol

from canaryproxy.core.judge import state as saved
from canaryproxy.core.judge.blocks import Block, EventLane, Events, EventSeen
from canaryproxy.core.judge.config import (
    AMOUNT_TESTS, EVENT_TESTS, LATENCY_EVENT_TESTS, WARM_UP_TESTS, JudgeConfig,
)  # fmt: skip
from canaryproxy.core.judge.keycap import KeyCap
from canaryproxy.core.judge.numerics import CANARY, STABLE
from canaryproxy.core.tally import DECLARED
from canaryproxy.core.types import Observed, Role, live_role

__all__ = ["AMOUNT_KINDS", "Amounts", "Block", "EventSeen", "EvidenceSink", "Intake"]

# The amount tests, in the order of the per-request samples the intake emits (`fold_samples`).
AMOUNT_KINDS = tuple(AMOUNT_TESTS)
Amounts = tuple[float | None, float | None, float | None, float | None, float | None]  # None: no sample
_CANARY_ROLE, _STABLE_ROLE = Role.CANARY, Role.STABLE
# (side, weight in percent, routed_at, key hash): a request taken in, for the feedback tests.
RoutedCounter = Callable[[int, float, float, "int | None"], None]


class EvidenceSink(Protocol):
    """Where the intake's output goes: the evidence (in `Judge`, the judge itself)."""

    def fold_block(self, block: Block) -> None:
        """A closed block of one event test, with events and requests of both versions."""

    def fold_samples(self, side: int, w: float, samples: Amounts) -> None:
        """One request's amount samples, per test of `AMOUNT_KINDS` (None: no sample for it), from
        `side` (0 stable, 1 canary) routed at weight w; in the tests' units, never negative."""


class Intake:
    """Takes each finished request into the event tests' blocks and the amount tests' samples.

    Emits into `sink`: `fold_block` for every closed block that can say anything, `fold_samples`
    for every request sampled for the amount tests. O(1) per request and event test, never raises
    on a well-formed request (a shadow request is refused with ValueError), not thread-safe.
    """

    __slots__ = (
        "_sink", "_lanes", "_warm_lanes", "_by_name", "_sampled", "_warm_sampled", "_sample_keys", "_p95",
        "_p99", "_observed", "_top_weight", "_warm_from", "_warmup_seconds", "_failed", "_latency",
        "_guardrail", "_schema_checked", "_schema_failure", "_truncated", "_prompt_tokens",
        "_completion_tokens", "_usage_missing", "_estimated_tokens", "_output_length", "_cost_usd", "_routed",
    )  # fmt: skip

    def __init__(self, config: JudgeConfig, sink: EvidenceSink, routed: RoutedCounter | None = None) -> None:
        self._sink = sink
        # With the feedback tests: counts each request per weight for them (feedback.py).
        self._routed = routed
        self._lanes = tuple(EventLane(name, config, sink.fold_block) for name in config.enabled(EVENT_TESTS))
        self._by_name = {lane.name: lane for lane in self._lanes}
        # During a warm-up only these run: a cold canary is slow, which says nothing about the version.
        self._warm_lanes = tuple(lane for lane in self._lanes if lane.name not in WARM_UP_TESTS)
        amounts = config.enabled(AMOUNT_TESTS)
        self._sampled = bool(amounts)  # whether any amount test runs, warm or cold
        self._warm_sampled = any(name not in WARM_UP_TESTS for name in amounts)
        self._sample_keys = KeyCap(config.max_samples_per_key, config.key_memory)
        self._p95: float | None = None
        self._p99: float | None = None
        self._observed = [0, 0]  # requests taken in, [stable, canary]
        self._top_weight = 0.0  # the highest weight seen
        self._warm_from = -math.inf  # requests routed before this are in a warm-up
        self._warmup_seconds = config.warmup_seconds
        # The declarations' readers, cached once: the hot path calls them for every request.
        self._failed: Callable[[Observed], bool] = DECLARED["failed"].of
        self._latency: Callable[[Observed], float] = DECLARED["latency"].of
        self._guardrail: Callable[[Observed], tuple[str, ...]] = DECLARED["guardrail_requests"].of
        self._schema_checked: Callable[[Observed], bool] = DECLARED["schema_checked"].of
        self._schema_failure: Callable[[Observed], bool] = DECLARED["schema_failures"].of
        self._truncated: Callable[[Observed], bool] = DECLARED["truncated"].of
        self._prompt_tokens: Callable[[Observed], int | None] = DECLARED["prompt_tokens"].of
        self._completion_tokens: Callable[[Observed], int | None] = DECLARED["completion_tokens"].of
        self._usage_missing: Callable[[Observed], bool] = DECLARED["usage_missing"].of
        self._estimated_tokens: Callable[[Observed], int | None] = DECLARED["estimated_tokens"].of
        self._output_length: Callable[[Observed], int | None] = DECLARED["output_length"].of
        self._cost_usd: Callable[[Observed], float | None] = DECLARED["cost_usd"].of

    def observe(self, o: Observed) -> None:
        """Take one finished request into every enabled test."""
        role = o.role
        if role is _CANARY_ROLE:
            side = CANARY
        elif role is _STABLE_ROLE:
            side = STABLE
        else:
            live_role(role)  # raises for a role that serves no user
            return
        if not o.counts_for_version:
            return
        w = o.weight / 100.0
        if not 0.0 < w < 1.0:  # all traffic on one version: nothing to compare
            return
        self._observed[side] += 1
        routed_at = o.routed_at
        if self._routed is not None:
            self._routed(side, o.weight, routed_at, o.key_hash)
        if w > self._top_weight:  # more canary traffic than ever: new instances may start cold
            self._top_weight = w
            self._warm_from = routed_at + self._warmup_seconds
        cold = routed_at < self._warm_from
        key = o.key_hash
        failed = self._failed(o)
        # events_of(o, failed), inline: this runs for every request (a test holds the two equal).
        latency, p95, p99 = self._latency(o), self._p95, self._p99
        events = (
            failed,
            None if failed or p95 is None else latency > p95,
            None if failed or p99 is None else latency > p99,
            bool(self._guardrail(o)),
            self._schema_failure(o) if self._schema_checked(o) else None,
            self._truncated(o),
        )
        for lane in self._warm_lanes if cold else self._lanes:
            event = events[lane.index]
            if event is not None:
                lane.observe(event, side, w, key, cold)
        if failed or not (self._warm_sampled if cold else self._sampled):
            return
        if key is not None and not self._sample_keys.admit(key):
            return
        self._sink.fold_samples(side, w, self.amounts_of(o, cold))

    def events_of(self, o: Observed, failed: bool) -> Events:
        """What `o` is for each event test (`EVENT_KINDS`): an event, not one, or not looked at
        (None: a latency test without thresholds or for a failed request; an unchecked schema)."""
        latency, p95, p99 = self._latency(o), self._p95, self._p99
        return (
            failed,
            None if failed or p95 is None else latency > p95,
            None if failed or p99 is None else latency > p99,
            bool(self._guardrail(o)),
            self._schema_failure(o) if self._schema_checked(o) else None,
            self._truncated(o),
        )

    def amounts_of(self, o: Observed, cold: bool) -> Amounts:
        """The amount samples of a request that did not fail (`AMOUNT_KINDS`), in units whose
        typical values are much larger than 1 (amounts.py says why): reported tokens (prompt plus
        completion; no sample without usage, so that reported counts meet only reported counts),
        the proxy's own count of completion tokens, characters, micro-USD, milliseconds (not in a
        warm-up). A negative amount is a bug upstream and no sample: a sink must not raise."""
        prompt, completion = self._prompt_tokens(o), self._completion_tokens(o)
        tokens = None
        if not self._usage_missing(o) and (prompt is not None or completion is not None):
            tokens = (prompt or 0) + (completion or 0)
        estimated = self._estimated_tokens(o)
        length, cost = self._output_length(o), self._cost_usd(o)
        milliseconds = None if cold else self._latency(o) * 1000.0
        return (
            None if tokens is None or tokens < 0 else tokens,
            None if estimated is None or estimated < 0 else estimated,
            None if length is None or length < 0 else length,
            None if cost is None or cost < 0.0 else cost * 1e6,
            None if milliseconds is None or milliseconds < 0.0 else milliseconds,
        )

    def close_blocks(self) -> None:
        """Close every open block (at a verdict: so that the verdicts cover every request)."""
        for lane in self._lanes:
            lane.close_block()

    def prime_key_caps(self, observations: Iterable[Observed]) -> int:
        """Run requests through the key caps only, as `observe` would: no blocks, no samples, no
        counts. Returns how many were taken in.

        Their warm-ups are replayed from the first of them, without touching the intake's own;
        their latency events are those of the thresholds in force now.
        """
        top_weight, warm_from, primed = 0.0, -math.inf, 0
        for o in observations:
            live_role(o.role)
            w = o.weight / 100.0
            if not o.counts_for_version or not 0.0 < w < 1.0:
                continue
            primed += 1
            if w > top_weight:
                top_weight, warm_from = w, o.routed_at + self._warmup_seconds
            cold = o.routed_at < warm_from
            key = o.key_hash
            if key is None:
                continue
            failed = self._failed(o)
            events = self.events_of(o, failed)
            for lane in self._warm_lanes if cold else self._lanes:
                lane.prime(events, key)
            if not failed and (self._warm_sampled if cold else self._sampled):
                self._sample_keys.admit(key)
        return primed

    # --- latency thresholds -------------------------------------------------------------------

    @property
    def latency_thresholds(self) -> tuple[float, float] | None:
        return None if self._p95 is None or self._p99 is None else (self._p95, self._p99)

    def set_latency_thresholds(self, p95: float, p99: float) -> None:
        """Count a request slower than `p95` as a `latency` event and one slower than `p99` as a
        `latency_tail` event from now on. ValueError unless 0 < p95 <= p99 < inf."""
        _check_thresholds(p95, p99)
        self._p95, self._p99 = p95, p99

    def active(self, test: str) -> bool:
        """Whether an event test looks at requests: the latency tests only once thresholds are set."""
        return test not in LATENCY_EVENT_TESTS or self._p95 is not None

    def label(self, test: str) -> str:
        """What an event test counts, in words: with its threshold once a latency test has one."""
        threshold = {"latency": self._p95, "latency_tail": self._p99}.get(test)
        return EVENT_TESTS[test] if threshold is None else f"requests slower than {threshold:.3g} s"

    # --- what it has counted ------------------------------------------------------------------

    def seen(self, test: str) -> EventSeen:
        return self._by_name[test].seen()

    def observed(self) -> dict[str, int]:
        """The requests taken in: at a FAIL, how much traffic the canary had served when the
        evidence crossed (what the decision record and the benchmark report)."""
        return {"canary": self._observed[CANARY], "stable": self._observed[STABLE]}

    def state(self) -> dict[str, object]:
        """Everything but the key caps' memory, as plain data."""
        return {
            "top_weight": self._top_weight,
            "warm_from": None if self._warm_from == -math.inf else self._warm_from,
            "latency_thresholds": None if self._p95 is None else [self._p95, self._p99],
            "observed": list(self._observed),
            "events": {lane.name: lane.state() for lane in self._lanes},
        }

    def restoring(self, state: object, where: str) -> Callable[[], None]:
        """Check `state` against this intake; return what puts it in force (nothing changes
        before). The key caps stay as they are (`prime_key_caps`)."""
        keys = ("top_weight", "warm_from", "latency_thresholds", "observed", "events")
        fields = saved.mapping(state, where, keys)
        top_weight = saved.number(fields["top_weight"], f"{where}.top_weight")
        if not 0.0 <= top_weight < 1.0:
            raise saved.fail(f"{where}.top_weight", f"expected a weight in [0, 1), got {top_weight!r}")
        warm_from = saved.optional_number(fields["warm_from"], f"{where}.warm_from")
        thresholds = _thresholds(fields["latency_thresholds"], f"{where}.latency_thresholds")
        observed = saved.counts(fields["observed"], f"{where}.observed", 2)
        lanes = saved.mapping(fields["events"], f"{where}.events", tuple(self._by_name))
        commits = [lane.restoring(lanes[name], f"{where}.events.{name}") for name, lane in self._by_name.items()]

        def commit() -> None:
            self._top_weight, self._warm_from = top_weight, -math.inf if warm_from is None else warm_from
            self._p95, self._p99 = thresholds if thresholds is not None else (None, None)
            self._observed = observed
            for lane_commit in commits:
                lane_commit()

        return commit


def _check_thresholds(p95: float, p99: float) -> None:
    for name, seconds in (("p95", p95), ("p99", p99)):
        if not 0.0 < seconds < math.inf:
            raise ValueError(f"latency threshold {name} must be a positive number of seconds, got {seconds!r}")
    if p99 < p95:
        raise ValueError(f"latency threshold p99 ({p99!r} s) must not be below p95 ({p95!r} s)")


def _thresholds(value: object, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    p95, p99 = (saved.number(seconds, where) for seconds in saved.sequence(value, where, 2))
    try:
        _check_thresholds(p95, p99)
    except ValueError as exc:
        raise saved.fail(where, str(exc)) from None
    return p95, p99
