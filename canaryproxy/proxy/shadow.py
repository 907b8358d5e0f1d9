"""Shadow copies: a sampled stable request also sent to the canary, whose answer no user sees.

* **The user never pays.** The user's request is served by stable exactly as without shadowing.
  The copy is the same request bytes (never read twice from the client), launched from a task of
  its own only once the user's answer no longer needs the event loop's attention: when stable's
  response has ended, or, for a stream (which lasts as long as the model writes), when its head
  is in — so the user's first bytes go out before the copy does any work. It is sent on an exchange of its
  own (a keep-alive pool to the canary) that never retries: nobody is waiting for it. It runs to
  its end on the same deadlines as live requests (connect, first byte, idle), so a failed shadow
  answer means what a failed live one means; its latency and TTFT count from its own send.
* **Bounded.** At most `max_in_flight` copies at once: a canary that falls behind has new copies
  dropped (reason `busy`), never queued. At most `max_response_bytes` of each answer are read
  (beyond that the copy is closed and its pair dropped: `too_large`). So what the shadow holds is
  at most their product. Only buffered request bodies are copied (`streamed_body`: a streamed
  body is the client's, read once, as it is sent to stable).
* **Only what may be sent twice**: model API requests (they ask for an answer and change nothing)
  and safe methods; any other request is counted (`unsafe`) and not copied. Each copy carries
  `X-Canaryproxy-Shadow: 1`, so a canary can tell it from a live request.
* **Pairs.** When both the user's request and its copy have ended, the two outcomes become a
  `ShadowPair` for the judge's paired tests, with how alike the two texts are
  (core/similarity.py). A user's request that says nothing about stable (the client hung up, its
  body was refused) drops the pair (`client_gone`) and cancels the copy, so the canary stops
  generating: a user who leaves is never counted as the canary's failure. Shutdown cancels the
  copies still running (`shutdown`).
* **Timed alike, with capacity to spare.** Both sides of a pair are timed from their send to the
  upstream (stable's admission and body reading are the user's, not the version's). While the
  process is overloaded (proxy/overload.py: its event loop runs late, or it uses nearly all of its
  core) no copy starts, and no pair whose time overlapped a late loop is compared (`overloaded`):
  a copy would take time the users' requests need, and, run after the user's request on a longer
  queue, show a healthy canary slower.

The copy's Outcome (role shadow) goes to the outcome sink the data plane was given for it (the
exporter's totals: /metrics labels it `shadow`, its cost apart); the pair to the pair sink (the
evidence, or the shared outcome log). Neither counts as a request the canary served a user.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from multidict import CIMultiDict

from canaryproxy.core.similarity import compare
from canaryproxy.core.types import ErrorKind, Outcome, OutcomeSink, PairSink, Role, ShadowPair
from canaryproxy.errors import UpstreamError
from canaryproxy.inspection import Inspection, InspectionSettings, Inspector, RequestFacts, apply, inspector_for
from canaryproxy.proxy.exchange import Exchange, UpstreamResponse
from canaryproxy.proxy.overload import Overload
from canaryproxy.proxy.responses import cut_short, failure_status

log = logging.getLogger("canaryproxy.shadow")

# Why a copy was not sent or its pair not compared: the labels of canaryproxy_shadow_dropped_total.
BUSY, STREAMED_BODY, TOO_LARGE, CLIENT_GONE, SHUTDOWN, UNSAFE, OVERLOADED = (
    "busy", "streamed_body", "too_large", "client_gone", "shutdown", "unsafe", "overloaded")
DROP_REASONS = (BUSY, STREAMED_BODY, TOO_LARGE, CLIENT_GONE, SHUTDOWN, UNSAFE, OVERLOADED)

# What may be sent twice: a model API request the inspection reads (it asks for an answer and
# changes nothing), or a safe method. Another POST, PUT, PATCH or DELETE could do its work twice
# where the canary shares a store with stable: never copied (`unsafe`).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

SHADOW_HEADER = "X-Canaryproxy-Shadow"  # on every copy: the canary may tell it from a live request


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    max_in_flight: int = 64  # copies running at once; beyond: dropped (busy)
    max_response_bytes: int = 4 * 1024**2  # of one shadow answer; beyond: dropped (too_large)
    samples: int = 20  # differing pairs kept for the status view (numbers and ids)
    keep_outputs: bool = False  # keep the two texts of those samples too (off: no user text kept)
    sample_chars: int = 2000  # of each kept text
    max_loop_lag: float = 0.01  # seconds the event loop may run late before copies pause (0: never)
    max_cpu: float | None = 0.9  # share of a core the process may use before copies pause (None: never)


@dataclass(slots=True)
class ShadowCounters:
    """What the shadow did in this process; read by the exporter and the status view."""

    sent: int = 0
    paired: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    same_text: int = 0  # pairs whose texts were compared and equal after normalisation
    compared_texts: int = 0


class ShadowSender:
    """Launches the copies and pairs them with the user's requests. One per data plane."""

    def __init__(self, exchange: Exchange, settings: ShadowSettings, inspection: InspectionSettings | None,
                 sink: OutcomeSink, pairs: PairSink, now: Callable[[], float], wall: Callable[[], float]) -> None:
        self.exchange = exchange
        self.settings = settings
        self.inspection = inspection
        self.sink = sink
        self.pairs = pairs
        self.counters = ShadowCounters()
        self.samples: deque[dict[str, Any]] = deque(maxlen=settings.samples)
        self._now = now
        self._wall = wall
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        watched = settings.max_loop_lag > 0 or settings.max_cpu is not None
        self.overload = Overload(settings.max_loop_lag, settings.max_cpu, now) if watched else None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def view(self) -> dict[str, Any]:
        """What this process did with its copies, for the status view (samples newest first)."""
        counters = self.counters
        return {"sent": counters.sent, "paired": counters.paired, "dropped": dict(counters.dropped),
                "in_flight": self.in_flight, "max_in_flight": self.settings.max_in_flight,
                "outputs_kept": self.settings.keep_outputs, "differing_samples": list(reversed(self.samples))}

    def call(self, stable: Outcome, api: str) -> ShadowCall | None:
        """A copy of the request `stable` is the outcome of, launched by `ShadowCall.prepare` once
        stable has answered; None while shutting down or for a request that must not be sent twice
        (`api`: the model API the inspection reads on its path, "" for none)."""
        if not api and stable.method not in _SAFE_METHODS:
            self.drop(UNSAFE)
            return None
        return None if self._closing else ShadowCall(self, stable)

    def drop(self, reason: str) -> None:
        self.counters.dropped[reason] += 1

    async def start(self) -> None:
        await self.exchange.start()
        if self.overload is not None:
            self.overload.start()

    async def close(self) -> None:
        """Cancel the copies still running (their pairs dropped: shutdown), then the pool."""
        self._closing = True
        if self.overload is not None:
            self.overload.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.exchange.close()

    # --- the copy ------------------------------------------------------------------------------

    def _launch(self, call: ShadowCall, method: str, target: str, headers: CIMultiDict[str],
                body: bytes | None, facts: RequestFacts | None) -> bool:
        """Start the copy; False (dropped, counted) when `max_in_flight` copies are running."""
        if len(self._tasks) >= self.settings.max_in_flight:
            self.drop(BUSY)
            return False
        if self.overload is not None and self.overload.overloaded():
            self.drop(OVERLOADED)
            return False
        task = asyncio.get_running_loop().create_task(self._run(call, method, target, headers, body, facts))
        call.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.counters.sent += 1
        return True

    async def _run(self, call: ShadowCall, method: str, target: str, headers: CIMultiDict[str],
                   body: bytes | None, facts: RequestFacts | None) -> None:
        stable = call.stable
        outcome = Outcome(Role.SHADOW, self._now(), weight=stable.weight, key_hash=stable.key_hash,
                          request_id=stable.request_id, method=method, routed_at=stable.routed_at)
        inspection = Inspection() if facts is not None and self.inspection is not None else None
        too_large = False
        try:
            too_large = await self._exchange(outcome, method, target, headers, body, facts, inspection)
        except UpstreamError as error:
            outcome.status = failure_status(error.kind)
            outcome.error = error.kind
        except asyncio.CancelledError:
            outcome.error = ErrorKind.SHUTDOWN
            call.shadow_done(outcome, None, CLIENT_GONE if call.abandoned else SHUTDOWN)
            raise
        except Exception:  # a copy must never take anything down with it
            log.exception("shadow copy failed [request_id=%s]", outcome.request_id)
            outcome.error = ErrorKind.BAD_RESPONSE
        outcome.latency = self._now() - outcome.started
        apply(outcome, inspection, cut_short(outcome))
        call.shadow_done(outcome, inspection.text if inspection is not None else None,
                         TOO_LARGE if too_large else None)

    async def _exchange(self, outcome: Outcome, method: str, target: str, headers: CIMultiDict[str],
                        body: bytes | None, facts: RequestFacts | None, inspection: Inspection | None) -> bool:
        """Send the copy and read its answer through the inspector. True when it was too large."""
        upstream = await self.exchange.send(method, target, headers, body)
        outcome.ttfb = self._now() - outcome.started
        outcome.status = upstream.status
        inspector = self._inspector(facts, upstream.status, upstream.headers, inspection, outcome)
        limit, read = self.settings.max_response_bytes, 0
        try:
            while chunk := await upstream.read():
                read += len(chunk)
                if read > limit:
                    upstream.close()
                    return True
                if inspector is not None:
                    inspector.feed(chunk)
        except UpstreamError as error:
            outcome.error = error.kind
            if inspector is not None:
                inspector.finish(False)
            upstream.close()
            return False
        except BaseException:
            upstream.close()
            raise
        finally:
            outcome.bytes_out = read
        if inspector is not None:
            inspector.finish(True)
        upstream.release()
        return False

    def _inspector(self, facts: RequestFacts | None, status: int, headers: Any, inspection: Inspection | None,
                   outcome: Outcome) -> Inspector | None:
        if facts is None or inspection is None or self.inspection is None:
            return None
        return inspector_for(facts, status, headers.get("Content-Type", ""), headers, inspection, self.inspection,
                             role=Role.SHADOW, started=outcome.started, now=self._now, share_text=True)

    # --- pairing -------------------------------------------------------------------------------

    def _pair(self, call: ShadowCall, shadow: Outcome, shadow_text: str | None) -> None:
        self._record(shadow)
        stable = from_send(call.stable, call.sent_at)
        if self.overload is not None and self.overload.lagged_since(min(stable.started, shadow.started)):
            self.drop(OVERLOADED)
            return
        stable_text = call.stable_text
        same, overlap = (None, None)
        if stable_text is not None and shadow_text is not None:
            same, overlap = compare(stable_text, shadow_text)
            self.counters.compared_texts += 1
            self.counters.same_text += same
        pair = ShadowPair(stable, shadow, same_text=same, text_overlap=overlap, key_hash=stable.key_hash,
                          finish_reasons=(stable.finish_reason, shadow.finish_reason))
        self.counters.paired += 1
        try:
            self.pairs.record_pair(pair)
        except Exception:  # a sink must never take a request down with it
            log.exception("shadow pair sink failed")
        if differs(pair):
            self.samples.append(self._sample(pair, stable_text, shadow_text))

    def _record(self, shadow: Outcome) -> None:
        try:
            self.sink.record(shadow)
        except Exception:
            log.exception("shadow outcome sink failed")

    def _sample(self, pair: ShadowPair, stable_text: str | None, shadow_text: str | None) -> dict[str, Any]:
        sample: dict[str, Any] = {
            "request_id": pair.stable.request_id if isinstance(pair.stable, Outcome) else "",
            "at": self._wall(), "same_text": pair.same_text, "text_overlap": pair.text_overlap,
            "stable": answer_facts(pair.stable, pair.finish_reasons[0]),
            "canary": answer_facts(pair.shadow, pair.finish_reasons[1]),
        }
        if self.settings.keep_outputs:
            chars = self.settings.sample_chars
            sample["stable"]["text"] = None if stable_text is None else stable_text[:chars]
            sample["canary"]["text"] = None if shadow_text is None else shadow_text[:chars]
        return sample


class ShadowCall:
    """One user's request (its stable Outcome) and the copy of it sent to the canary."""

    __slots__ = ("_sender", "stable", "task", "abandoned", "sent_at", "_request", "stable_text", "_stable_done",
                 "_shadow")

    def __init__(self, sender: ShadowSender, stable: Outcome) -> None:
        self._sender = sender
        self.stable = stable
        self.task: asyncio.Task[None] | None = None
        self.abandoned = False  # the user's request ended without a verdict: the pair is off
        self.sent_at = stable.started  # when the request went to stable (set by the forwarder)
        self._request: tuple[str, str, CIMultiDict[str], bytes | None, RequestFacts | None] | None = None
        self.stable_text: str | None = None
        self._stable_done = False
        self._shadow: tuple[Outcome, str | None] | None = None

    def prepare(self, method: str, target: str, headers: CIMultiDict[str], body: object,
                facts: RequestFacts | None, *, now: bool) -> None:
        """The request as it went to stable (at `sent_at`); the copy is launched at once (`now`: a
        stream) or when the user's request ends (`stable_done`)."""
        if not (body is None or isinstance(body, bytes)):
            self._sender.drop(STREAMED_BODY)
            self.abandoned = True
            return
        self._request = (method, target, headers, body, facts)
        if now:
            self._launch()

    def _launch(self) -> None:
        request, self._request = self._request, None
        if request is None:
            return
        method, target, headers, body, facts = request
        copy = headers.copy()
        copy[SHADOW_HEADER] = "1"
        if not self._sender._launch(self, method, target, copy, body, facts):
            self.abandoned = True

    def stable_done(self, inspection: Inspection | None) -> None:
        """The user's request has ended (its Outcome is final): launch the copy if it waited for
        this, then pair, or wait for the copy."""
        stable = self.stable
        if self._request is not None:
            if not stable.counts_for_version:
                self._request = None
                self._sender.drop(CLIENT_GONE)  # never sent: the user left before stable answered
                return
            self._launch()
        if self.task is None:
            return  # never sent
        if not stable.counts_for_version:
            self.abandoned = True
            if not self.task.done():
                self.task.cancel()  # shadow_done drops it as client_gone
            elif self._shadow is not None:
                self._sender._record(self._shadow[0])
                self._sender.drop(CLIENT_GONE)
            return
        self.stable_text = inspection.text if inspection is not None else None
        self._stable_done = True
        if self._shadow is not None:
            self._sender._pair(self, *self._shadow)

    def shadow_done(self, outcome: Outcome, text: str | None, dropped: str | None) -> None:
        sender = self._sender
        if dropped is not None or self.abandoned:
            sender._record(outcome)
            sender.drop(dropped or CLIENT_GONE)
            self.abandoned = True
            return
        if self._stable_done:
            sender._pair(self, outcome, text)
        else:
            self._shadow = (outcome, text)


def from_send(stable: Outcome, sent_at: float) -> Outcome:
    """Stable's outcome timed from its send to the upstream, as the copy is timed from its own:
    what the user's request spent before (admission, reading the body) is not the version's."""
    before = sent_at - stable.started
    if before <= 0:
        return stable
    return replace(stable, started=sent_at, latency=max(0.0, stable.latency - before),
                   ttfb=None if stable.ttfb is None else max(0.0, stable.ttfb - before),
                   ttft=None if stable.ttft is None else max(0.0, stable.ttft - before))


def streams(upstream: UpstreamResponse) -> bool:
    """Whether a response is a stream (SSE): it lasts as long as the model writes."""
    return upstream.headers.get("Content-Type", "").startswith("text/event-stream")


def differs(pair: ShadowPair) -> bool:
    """Whether the two answers differ in a way the status view shows: the text, a failure, a schema."""
    stable, shadow = pair.stable, pair.shadow
    return (pair.same_text is False or stable.failed != shadow.failed or stable.schema_ok != shadow.schema_ok
            or bool(stable.guardrails) != bool(shadow.guardrails) or pair.finish_reasons[0] != pair.finish_reasons[1])


def answer_facts(o: Any, finish_reason: str | None) -> dict[str, Any]:
    return {"status": o.status, "failed": o.failed, "latency_ms": round(o.latency * 1000, 1),
            "completion_tokens": o.completion_tokens, "output_chars": o.output_chars,
            "schema_ok": o.schema_ok, "guardrails": list(o.guardrails), "finish_reason": finish_reason}
