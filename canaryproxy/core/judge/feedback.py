"""The feedback tests' part of the judge: who served each negative record, against which share,
and whether the feedback has had time to arrive.

Two event tests (the conditional-label mixture of events.py) run on feedback records
(core.types.Feedback) when `JudgeConfig.feedback` is on: `negative_feedback` (records of kind
FEEDBACK that say the users' verdict was bad) and `downstream_errors` (records of kind
DOWNSTREAM_ERROR: a service that consumed the response failed on it). An event is a negative
record; its label is the role that served the response.

* **The share at routing, not now.** Under "the canary is no worse" a negative record is the
  canary's with probability q·r₀ / (q·r₀ + 1 − q), q the canary's share of the responses *routed
  at the weight in the record*: feedback comes tens of seconds to minutes late, and the weight may
  have moved meanwhile (at 5% → 25%, a record about a 5% response labelled against 25% would hide
  a canary 5× worse; the other way round, roll a healthy one back). `RoutedShares` counts the
  requests each version served per weight (the same requests the request tests take in); a
  weight with fewer than `COUNTED_FROM` of them, or none on one side, falls back to weight/100.
  Each test counts only the requests of keys below its cap when they are taken in, as the request
  tests' blocks do: a busy user whose negative records are capped must not keep adding requests
  to its version's share (with Zipf users, the busiest on stable would otherwise thin stable's
  events against its share, and 1% of healthy canaries were rolled back at an α of 0.1%).
  The share is rounded *up* to three significant digits: a higher θ₀ only makes the test more
  cautious, and the evidence then keeps a bounded number of shares.
* **Which responses.** Every response that counts for the version, failed or not: the rate the
  null compares is negative records per response, as `negative_feedback_rate` is. The feedback
  received per role is counted as well, for the verdicts.
* **Per-key caps**, as for the request tests (`max_events_per_key` negative records per sticky
  key and test): one unhappy user clicking "bad" on every answer is one user.
* **Settling.** Feedback arrives late and only for a share of the responses: right after a
  weight change, the canary's new responses have had no time to be rated, so "no evidence it is
  worse" is no evidence at all. While less than `feedback_settle` seconds have passed since the
  first request routed at the current weight, the feedback tests say INCONCLUSIVE (which blocks
  a stage from advancing and never rolls back: core/stages); a FAIL needs no waiting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from canaryproxy.core.judge import state as saved
from canaryproxy.core.judge.blocks import EventSeen
from canaryproxy.core.judge.config import JudgeConfig
from canaryproxy.core.judge.keycap import KeyCap
from canaryproxy.core.judge.numerics import CANARY, STABLE
from canaryproxy.core.types import FeedbackKind, Status, Verdict
from canaryproxy.core.units import format_duration

TEST_OF_KIND: Mapping[FeedbackKind, str] = {
    FeedbackKind.FEEDBACK: "negative_feedback",
    FeedbackKind.DOWNSTREAM_ERROR: "downstream_errors",
}
COUNTED_FROM = 100  # requests at a weight before their counted share replaces weight/100
MAX_WEIGHTS = 64  # distinct weights counted; a plan has a handful, an operator adds a few


def rounded_up(share: float) -> float:
    """`share` rounded up to three significant digits (module docstring), kept below 1."""
    step = 10.0 ** (math.floor(math.log10(share)) - 2)
    rounded = math.ceil(share / step - 1e-9) * step
    return rounded if rounded < 1.0 else share


class RoutedShares:
    """The requests each version served per weight, and since when the current weight holds.

    Bounded: at most `MAX_WEIGHTS` weights, the one least recently routed forgotten first (its
    late feedback then falls back to weight/100). The current weight is that of the latest request
    by routing time; `since` is the earliest routing time seen at it since it became current.
    """

    __slots__ = ("counts", "weight", "since", "latest")

    def __init__(self) -> None:
        self.counts: dict[float, list[int]] = {}  # weight in percent -> [stable, canary]
        self.weight: float | None = None
        self.since = math.inf
        self.latest = -math.inf

    def count(self, side: int, weight: float, routed_at: float) -> None:
        pair = self.counts.pop(weight, None)  # re-inserted: the dict's order is the recency
        if pair is None:
            pair = [0, 0]
            if len(self.counts) >= MAX_WEIGHTS:
                del self.counts[next(iter(self.counts))]
        self.counts[weight] = pair
        pair[side] += 1
        if routed_at > self.latest:
            self.latest = routed_at
            if weight != self.weight:
                self.weight, self.since = weight, routed_at
        if weight == self.weight and routed_at < self.since:
            self.since = routed_at

    def share(self, weight: float) -> float:
        """The canary's share of the requests routed at `weight` (percent), rounded up."""
        pair = self.counts.get(weight)
        if pair is None or pair[STABLE] + pair[CANARY] < COUNTED_FROM or not (pair[STABLE] and pair[CANARY]):
            return rounded_up(weight / 100.0)
        return rounded_up(pair[CANARY] / (pair[STABLE] + pair[CANARY]))

    def settle_left(self, now: float, settle: float) -> float:
        """Seconds until the requests at the current weight have had `settle` seconds; 0 when they
        have (or when there are none: then there is nothing to wait for)."""
        if self.weight is None:
            return 0.0
        return max(0.0, self.since + settle - now)

    def state(self) -> dict[str, object]:
        return {
            "counts": [[weight, stable, canary] for weight, (stable, canary) in self.counts.items()],
            "weight": self.weight,
            "since": None if self.weight is None else self.since,
            "latest": None if self.weight is None else self.latest,
        }

    def restoring(self, state: object, where: str) -> Callable[[], None]:
        fields = saved.mapping(state, where, ("counts", "weight", "since", "latest"))
        counts = saved.side_counts(fields["counts"], f"{where}.counts", 100.0, "weight")
        if len(counts) > MAX_WEIGHTS:
            raise saved.fail(f"{where}.counts", f"expected at most {MAX_WEIGHTS} weights, got {len(counts)}")
        weight = saved.optional_number(fields["weight"], f"{where}.weight")
        since = saved.optional_number(fields["since"], f"{where}.since")
        latest = saved.optional_number(fields["latest"], f"{where}.latest")
        if (weight is None) != (since is None) or (weight is None) != (latest is None):
            raise saved.fail(where, "weight, since and latest are all set or all null")

        def commit() -> None:
            self.counts, self.weight = counts, weight
            self.since = math.inf if since is None else since
            self.latest = -math.inf if latest is None else latest

        return commit


class FeedbackLane:
    """One feedback test's intake: records received and negative ones counted per role, and the
    per-key cap on the negative ones."""

    __slots__ = ("name", "received", "events", "dropped_by_key_cap", "_keys", "shares")

    def __init__(self, name: str, config: JudgeConfig) -> None:
        self.name = name
        self.shares = RoutedShares()  # the requests of keys under this test's cap, per weight
        self.received = [0, 0]  # records of this test's kind, [stable, canary]
        self.events = [0, 0]  # negative ones counted (under the key cap)
        self.dropped_by_key_cap = 0
        self._keys = KeyCap(config.max_events_per_key, config.key_memory)

    def count_request(self, side: int, weight: float, routed_at: float, key: int | None) -> None:
        """Count a request toward the share at its weight, unless its key is at the cap."""
        if key is None or not self._keys.full(key):
            self.shares.count(side, weight, routed_at)

    def take(self, side: int, negative: bool, key: int | None) -> bool:
        """Count one record; True when it is an event for the test (negative, key under its cap)."""
        self.received[side] += 1
        if not negative:
            return False
        if key is not None and not self._keys.admit(key):
            self.dropped_by_key_cap += 1
            return False
        self.events[side] += 1
        return True

    def prime(self, negative: bool, key: int | None) -> None:
        """A record the restored state counted already: through the key cap only."""
        if negative and key is not None:
            self._keys.admit(key)

    def seen(self, responses: Mapping[str, int]) -> EventSeen:
        """For the verdicts: the responses the test compares (every one counted), the events."""
        return EventSeen((responses["stable"], responses["canary"]),
                         (self.events[STABLE], self.events[CANARY]), self.dropped_by_key_cap)

    def state(self) -> dict[str, object]:
        return {"received": list(self.received), "events": list(self.events),
                "dropped_by_key_cap": self.dropped_by_key_cap, "shares": self.shares.state()}

    def restoring(self, state: object, where: str) -> Callable[[], None]:
        fields = saved.mapping(state, where, ("received", "events", "dropped_by_key_cap", "shares"))
        received = saved.counts(fields["received"], f"{where}.received", 2)
        events = saved.counts(fields["events"], f"{where}.events", 2)
        dropped = saved.count(fields["dropped_by_key_cap"], f"{where}.dropped_by_key_cap")
        shares = self.shares.restoring(fields["shares"], f"{where}.shares")

        def commit() -> None:
            self.received, self.events, self.dropped_by_key_cap = received, events, dropped
            shares()

        return commit


def settling_verdict(name: str, label: str, left: float, weight: float, settle: float) -> Verdict:
    """A feedback test's verdict while the feedback on the current weight's requests is due."""
    reason = (f"judge: {label}: waiting {format_duration(left)} more for feedback on requests at "
              f"{weight:g}% to arrive (feedback_settle {format_duration(settle)})")
    details = {"settling": True, "seconds_left": left, "weight": weight, "feedback_settle": settle}
    return Verdict(source=f"judge:{name}", status=Status.INCONCLUSIVE, reason=reason, details=details)
