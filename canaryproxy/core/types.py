"""The vocabulary every layer shares: roles, outcomes of requests, feedback, verdicts of rules.

`Outcome` is the one record of a finished (or failed) request. The data plane creates it when it
routes a request and fills in what the transport saw; what the inspectors read from the response is
written into it once, when the request ends (`inspection.apply`); then it is handed to an
`OutcomeSink` (the exporter, and through the outcome feed the windows and the judge). It is a
mutable slotted dataclass because it is filled in step by step on the hot path. `Observed` is what every reader of an outcome relies on, so a decoded `Observation`
(core/observation.py) from another process reads the same.

`Feedback` is a signal that is not an Outcome: it arrives after the response, from the client or
a service downstream, and names the request it is about.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol


class Role(enum.StrEnum):
    """The part a request plays in the rollout, apart from which version's name it reaches.

    `stable` and `canary` serve users. `shadow` is a copy of a request sent to the canary whose
    answer no user sees; it is in the vocabulary so that nothing counts it as stable by default,
    and every place that does not support it yet refuses it (`live_role`). The value is the
    Prometheus `version` label, the window key and the judge's side.
    """

    STABLE = "stable"
    CANARY = "canary"
    SHADOW = "shadow"


LIVE_ROLES = (Role.STABLE, Role.CANARY)  # the roles that serve users


def live_role(role: Role) -> Role:
    """`role` if it serves users; a ValueError for a role this build does not support there."""
    if role is Role.SHADOW:
        raise ValueError("role 'shadow' is not supported here yet: only stable and canary serve users")
    return role


class ErrorKind(enum.StrEnum):
    """Why a request did not end with a complete upstream response. Bounded: used as a label."""

    # Faults of the upstream: they count against the version that served the request.
    CONNECT = "connect"  # refused, unreachable, reset during connect
    CONNECT_TIMEOUT = "connect_timeout"  # no connection (or pool slot) within timeouts.connect
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"  # no response byte within timeouts.first_byte
    IDLE_TIMEOUT = "idle_timeout"  # a gap between body chunks longer than timeouts.idle
    RESET = "reset"  # the upstream connection broke in the middle of the response
    BAD_RESPONSE = "bad_response"  # unparsable status line, headers or body framing

    # Not the upstream's fault: recorded, but never held against a version.
    CLIENT_DISCONNECT = "client_disconnect"  # the client went away before the response ended
    CLIENT_BODY_TIMEOUT = "client_body_timeout"  # the request body did not arrive in time (408)
    BODY_TOO_LARGE = "body_too_large"  # the request body is over limits.max_request_body (413)
    CLIENT_WRITE_TIMEOUT = "client_write_timeout"  # the client stopped reading the response
    SHUTDOWN = "shutdown"  # still running when the drain window ended

    @property
    def is_upstream_fault(self) -> bool:
        return self in _UPSTREAM_FAULTS


_UPSTREAM_FAULTS = frozenset(
    {
        ErrorKind.CONNECT,
        ErrorKind.CONNECT_TIMEOUT,
        ErrorKind.FIRST_BYTE_TIMEOUT,
        ErrorKind.IDLE_TIMEOUT,
        ErrorKind.RESET,
        ErrorKind.BAD_RESPONSE,
    }
)


class Observed:
    """What windows, exporter and judge derive from a finished request, from its fields alone.

    A base class with no state, so that an `Outcome` and a decoded `Observation` answer alike.
    The annotations are the fields every subclass has: what crosses processes.
    """

    __slots__ = ()
    role: Role
    routed_at: float
    weight: float
    key_hash: int | None
    status: int
    latency: float
    error: ErrorKind | None
    truncated: bool
    ttft: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_missing: bool
    estimated_tokens: int | None
    output_chars: int | None
    schema_ok: bool | None
    schema_skipped: bool
    guardrails: tuple[str, ...]
    cost_usd: float | None
    inspect_error: bool

    @property
    def failed(self) -> bool:
        """A failure of the version that served it: 5xx, an upstream fault, or a truncated body."""
        if self.truncated or self.status >= 500:
            return True
        error = self.error
        return error is not None and error.is_upstream_fault

    @property
    def status_class(self) -> str:
        """"2xx".."5xx", or "none" when no status reached the client."""
        status = self.status
        if status < 100 or status > 599:
            return "none"
        return _STATUS_CLASSES[status // 100]

    @property
    def counts_for_version(self) -> bool:
        """Whether this request says anything about the version.

        A client that hung up, or a body we refused, never reached a verdict on the upstream.
        """
        error = self.error
        return error is None or error.is_upstream_fault


_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


@dataclass(slots=True, eq=False)
class Outcome(Observed):
    """One request, from routing to its last byte.

    Times are seconds. `started` is on this process's monotonic clock: durations are measured from
    it. `routed_at` is the wall-clock time of the same moment: what other processes can agree on
    (window buckets, the judge's warm-up, feedback that quotes the request). Optional fields stay
    None when nothing was measured (a non-LLM response has no tokens).
    """

    role: Role
    started: float
    weight: float = 0.0  # canary weight in percent in force when the request was routed
    key_hash: int | None = None  # 64-bit hash of the sticky key; None when routed at random
    request_id: str = ""
    method: str = ""
    route: str = ""  # the inspected API ("chat.completions", "messages", ...) or "" for generic
    routed_at: float = 0.0  # wall-clock seconds when the request was routed

    # Filled by the data plane.
    status: int = 0  # status sent to the client; 0 when the connection ended before headers
    latency: float = 0.0  # received -> last byte sent (or failure)
    ttfb: float | None = None  # received -> upstream response headers
    bytes_in: int = 0  # request body bytes forwarded
    bytes_out: int = 0  # response body bytes sent to the client
    error: ErrorKind | None = None
    truncated: bool = False  # the response body ended before it was complete

    # What the inspection found (LLM responses), written once by `inspection.apply`.
    stream: bool = False
    model: str | None = None
    ttft: float | None = None  # received -> first content token (not first byte)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_missing: bool = False  # no usage in the response; completion_tokens is an estimate
    # Completion tokens as the proxy counted them (content deltas, or length where a stream coalesces
    # tokens), whatever usage says: the one estimator every version gets, for like-with-like comparisons.
    estimated_tokens: int | None = None
    output_chars: int | None = None  # content plus tool-call arguments, in characters
    finish_reason: str | None = None
    schema_ok: bool | None = None  # None: not checked
    schema_skipped: bool = False  # output too large to validate within the time bound
    guardrails: tuple[str, ...] = ()  # sources of guardrail interventions (bounded names)
    cost_usd: float | None = None
    inspect_error: bool = False  # the response could not be parsed; bytes passed through as-is

    @property
    def finished_at(self) -> float:
        """Wall-clock time of the last byte (or the failure): the second a window files it in."""
        return self.routed_at + self.latency


@dataclass(frozen=True, slots=True)
class ShadowPair:
    """One request answered twice: by stable, whose answer the user got, and by the canary in the
    shadow, whose answer no user saw. What the paired tests of a shadow stage compare
    (core/judge/paired.py).

    `stable` has role STABLE; `shadow` is the canary's answer and has role SHADOW (never CANARY:
    nothing may count it as a request the canary served a user). `same_text` (the two texts equal
    after normalisation) and `text_overlap` (a similarity in [0, 1]) are None when not measured.
    `key_hash` is the sticky key's 64-bit hash the pair was sampled by, None when sampled at random.
    `finish_reasons` are (stable's, the canary's), as the inspection read them (None: none read).
    """

    stable: Observed
    shadow: Observed
    same_text: bool | None = None
    text_overlap: float | None = None
    key_hash: int | None = None
    finish_reasons: tuple[str | None, str | None] = (None, None)


class FeedbackKind(enum.StrEnum):
    """What a declared feedback name is about: the users' verdict, or a downstream failure (a
    service that consumed the response failed on it). Each kind has its own metrics and test."""

    FEEDBACK = "feedback"
    DOWNSTREAM_ERROR = "downstream_error"


@dataclass(frozen=True, slots=True)
class Feedback:
    """A verdict on one response that arrives after it: a user's rating, a downstream failure.

    The attribution fields are those of the request when it was routed (the weight may have moved
    since): `routed_at` and `weight` are what a late signal must be judged by.
    """

    role: Role
    request_id: str
    routed_at: float  # wall-clock seconds when the request was routed
    weight: float  # canary weight in percent in force when the request was routed
    key_hash: int | None  # the sticky key's 64-bit hash, None when routed at random
    name: str  # a declared feedback name ("thumbs", "downstream_error", ...)
    value: bool | int | float | str
    negative: bool  # what the declaration says this value means: the users' verdict was bad
    received_at: float  # wall-clock seconds
    kind: FeedbackKind = FeedbackKind.FEEDBACK


class OutcomeSink(Protocol):
    """Receives every finished request. Called on the event loop: must be O(1) and never raise."""

    def record(self, outcome: Outcome) -> None: ...


class ObservedSink(Protocol):
    """Receives finished requests as any process observed them (an Outcome or an Observation)."""

    def record(self, outcome: Observed) -> None: ...


class FeedbackSink(Protocol):
    """Receives every accepted feedback record. On the event loop: O(1), never raises."""

    def record_feedback(self, feedback: Feedback) -> None: ...


class PairSink(Protocol):
    """Receives every shadow pair (one request answered by stable and by the canary in the
    shadow). On the event loop: O(1), never raises."""

    def record_pair(self, pair: ShadowPair) -> None: ...


class DiscardPairs:
    __slots__ = ()

    def record_pair(self, pair: ShadowPair) -> None:
        return None


class DiscardSink:
    __slots__ = ()

    def record(self, outcome: Outcome) -> None:
        return None


class FanOutSink:
    """Hands each outcome to several sinks, in order."""

    __slots__ = ("_sinks",)

    def __init__(self, *sinks: OutcomeSink) -> None:
        self._sinks = tuple(sinks)

    def record(self, outcome: Outcome) -> None:
        for sink in self._sinks:
            sink.record(outcome)


class Status(enum.StrEnum):
    """Argo Rollouts' three outcomes, plus `pending` for a breach not yet sustained for `for:`."""

    PASS = "pass"  # enough samples, condition not met
    PENDING = "pending"  # condition met, not yet for the rule's full `for` duration
    FAIL = "fail"  # condition met for the full `for` duration: the rule fires
    INCONCLUSIVE = "inconclusive"  # too few samples: neither healthy nor failing


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one rule or test says about the canary now, and why.

    `reason` is a sentence an operator reads ("error_rate 0.21 > 0.05 for 5m0s (canary n=340)");
    `details` carries the numbers behind it (values, thresholds, windows, sample counts) for the
    decision record.
    """

    source: str  # rule name, or "judge:<test>" for the statistical judge
    status: Status
    reason: str
    also_on_stable: bool = False  # the same condition holds on stable: an environment problem
    details: Mapping[str, Any] = field(default_factory=dict)
