"""`canaryproxy demo`: a whole rollout on this machine in about a minute, healthy or regressing.

Everything runs in this process, on one event loop: two model simulators (stable and canary) on
free 127.0.0.1 ports, the proxy (`CanaryProxy`) with a short stage plan, operator rules and the
judge, and a traffic generator of sticky users. One loop keeps the demo a single thing to start
and stop (Ctrl-C closes every port, no children to reap), lets the demo change the canary's
behaviour with a plain method call, and lets a test run it with `await run_demo(...)`. The cost is
one core for all of it, which is why the simulated answers are short and the rate modest.

A scenario's regression starts when the rollout reaches stage 2, by changing the canary
simulator's behaviour at run time; the rules and the judge then have to notice it.

The rollout section (`ROLLOUT_YAML`) is written the way a user would write it; the numbers that
depend on the demo's speed (holds, windows, sample sizes) are filled in by `rollout_yaml`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import shutil
import string
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, TextIO

import aiohttp

from canaryproxy.admin.views import status_document
from canaryproxy.config import parse
from canaryproxy.core.units import format_duration
from canaryproxy.errors import ConfigError
from canaryproxy.sim.simulator import Behaviour, ModelSimulator
from canaryproxy.sim.status_view import progress_bar, render_status

if TYPE_CHECKING:
    from canaryproxy.server import CanaryProxy

# --- what the demo rolls out ------------------------------------------------------------------------

STABLE = Behaviour(latency=0.25, ttft=0.08, tokens_mean=60, error_rate=0.01, model="demo-model-v1")
CANARY = Behaviour(latency=0.25, ttft=0.08, tokens_mean=60, error_rate=0.01, model="demo-model-v2")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    story: str  # one line for the top of the screen
    regression: Mapping[str, object] = field(default_factory=dict)  # canary changes at stage 2


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("healthy", "the canary behaves like stable: it is promoted stage by stage"),
    Scenario("errors", "at stage 2 the canary's error rate rises from 1% to 8%", {"error_rate": 0.08}),
    Scenario("latency", "at stage 2 the canary becomes twice as slow",
             {"latency": CANARY.latency * 2, "ttft": CANARY.ttft * 2}),
    Scenario("tokens", "at stage 2 the canary's answers become twice as long",
             {"tokens_mean": CANARY.tokens_mean * 2}),
    Scenario("guardrail", "at stage 2 a guardrail starts cutting 10% of the canary's answers",
             {"guardrail_rate": 0.10}),
    Scenario("schema", "at stage 2 20% of the canary's structured outputs break",
             {"schema_break_rate": 0.20}),
)}

# The rollout the demo runs: the section to copy into a config. $-names are sized by `rollout_yaml`.
ROLLOUT_YAML = string.Template("""\
rollout:
  start: auto
  # The canary's share of the traffic, and how long each stage lasts at least. After the last
  # stage the canary is promoted to 100%: a stage at 100% would leave the rules that compare
  # with stable nothing to compare with.
  stages:
    - {weight: 5, hold: $hold}
    - {weight: 25, hold: $hold}
    - {weight: 50, hold: $hold}
  # Canary requests a stage must see before it may advance.
  min_requests: $min_requests
  # A stage still without enough data after this long pauses the rollout.
  max_hold: $max_hold
  evaluate_every: $evaluate_every
  rules:
    # More than 5% of canary requests fail.
    - name: errors
      metric: error_rate
      above: 0.05
      window: $window
      for: $for_
      min_samples: $min_samples
    # The canary's p95 latency is above 1.5x stable's over the same window.
    - name: latency
      metric: latency_p95
      above_stable: 1.5
      window: $window
      for: $for_
      min_samples: $min_samples
    # The canary's answers are 1.5x as long as stable's, in tokens.
    - name: tokens
      metric: output_tokens_per_request
      above_stable: 1.5
      window: $window
      for: $for_
      min_samples: $min_samples
    # A guardrail intervenes on more than 5% of the canary's answers.
    - name: guardrails
      metric: guardrail_rate
      above: 0.05
      window: $window
      for: $for_
      min_samples: $min_samples
    # More than 10% of the canary's structured outputs do not match their schema.
    - name: schema
      metric: schema_failure_rate
      above: 0.10
      window: $window
      for: $for_
      min_samples: $schema_min_samples
  # The sequential tests, canary against stable, after every request: 1% false-rollback budget.
  judge:
    enabled: true
""")

FIRST_STAGE_WEIGHT = 5.0
STRUCTURED_SHARE = 0.4  # share of demo requests asking for a json_schema answer
STREAMING_SHARE = 0.5
USERS = 3000


def rollout_yaml(rate: float, hold: float) -> str:
    """The rollout section for `rate` requests/s and stage holds of `hold` seconds.

    A stage advances only when every rule passes, and a rule says nothing until its window holds
    `min_samples` canary samples, so the window must hold enough of the first stage's canary
    traffic (5% of the rate): 1.5x the time it takes to collect them, and at least a hold. 60
    requests keep the errors rule quiet on a healthy 1% canary (3 failures in 60 would already
    be 5%); schema failures have no such base rate, so 20 structured outputs are enough.
    """
    min_samples, schema_min_samples = 60, 20
    first_stage_rate = rate * FIRST_STAGE_WEIGHT / 100
    collect = max(min_samples / first_stage_rate, schema_min_samples / (first_stage_rate * STRUCTURED_SHARE))
    window = max(hold, 1.5 * collect)
    evaluate_every = min(1.0, max(0.1, hold / 5))
    return ROLLOUT_YAML.substitute(
        hold=format_duration(hold),
        min_requests=max(10, round(first_stage_rate * hold / 2)),
        max_hold=format_duration(max(10 * hold, 4 * window)),
        evaluate_every=format_duration(evaluate_every),
        window=format_duration(window),
        for_=format_duration(max(hold / 2, 2 * evaluate_every)),
        min_samples=min_samples,
        schema_min_samples=schema_min_samples,
    )


def demo_config_yaml(stable_url: str, canary_url: str, rate: float, hold: float) -> str:
    """The whole proxy config of the demo: free loopback ports, the rollout of `rollout_yaml`."""
    bucket = min(1.0, max(0.1, hold / 5))
    return f"""\
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
upstreams:
  stable: {stable_url}
  canary: {canary_url}
routing:
  sticky: [header:x-user-id]
timeouts:
  drain: 1s              # Ctrl-C should not wait long
access_log: false
log_level: warning
windows:
  bucket: {format_duration(bucket)}      # fine enough for windows of a few seconds
# USD per million tokens, so that cost per request shows (and the judge tests it).
pricing:
  versions:
    stable: {{input: 0.5, output: 1.5}}
    canary: {{input: 0.5, output: 1.5}}
{rollout_yaml(rate, hold)}"""


# --- traffic ------------------------------------------------------------------------------------------

_PROMPTS = (
    "Summarise the release notes of the new model version in two sentences.",
    "Which of these deployment strategies reduces risk the most, and why?",
    "Write a short answer to a customer who asks why their request was slow.",
    "Explain a canary release to a new engineer.",
)
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "sentiment": {"enum": ["positive", "neutral", "negative"]},
        "topics": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["answer", "sentiment"],
    "additionalProperties": False,
}


def _request_bodies() -> list[tuple[float, bytes]]:
    """Every kind of request the users send, encoded once, with its share of the traffic: each
    prompt, answered whole or streamed (with or without the usage chunk), as text or as JSON."""
    deliveries = (({}, 1 - STREAMING_SHARE),
                  ({"stream": True}, STREAMING_SHARE / 2),
                  ({"stream": True, "stream_options": {"include_usage": True}}, STREAMING_SHARE / 2))
    structured = {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}}
    formats = (({}, 1 - STRUCTURED_SHARE), (structured, STRUCTURED_SHARE))
    bodies = []
    for prompt in _PROMPTS:
        for delivery, delivery_share in deliveries:
            for output, output_share in formats:
                body = {"model": "demo-model", "messages": [{"role": "user", "content": prompt}],
                        **delivery, **output}
                bodies.append((delivery_share * output_share / len(_PROMPTS), json.dumps(body).encode()))
    return bodies


class Traffic:
    """Users sending chat requests through the proxy at a steady rate, until stopped.

    Open loop: requests start on schedule whether or not earlier ones have finished (users do not
    wait for each other), up to `MAX_IN_FLIGHT` at once. Each user has a sticky id (`x-user-id`).
    """

    MAX_IN_FLIGHT = 2000
    TICK = 0.01

    def __init__(self, url: str, rate: float, seed: int | None = None) -> None:
        self.url = url + "/v1/chat/completions"
        self.rate = rate
        self._rng = random.Random(seed)
        shares, self._bodies = zip(*_request_bodies())
        self._cumulative = list(itertools.accumulate(shares))
        self.sent = 0
        self.failed = 0  # no complete answer: an error status, a reset or a truncated body
        self.skipped = 0  # not sent: MAX_IN_FLIGHT reached (the machine cannot keep up)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.MAX_IN_FLIGHT, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector,
                                              timeout=aiohttp.ClientTimeout(total=60))
        self._task = asyncio.create_task(self._run(), name="demo-traffic")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        launched = 0
        while True:
            due = int((loop.time() - started) * self.rate) - launched
            for _ in range(due):
                if len(self._in_flight) >= self.MAX_IN_FLIGHT:
                    self.skipped += 1
                    continue
                task = loop.create_task(self._one())
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            launched += due
            await asyncio.sleep(self.TICK)

    async def _one(self) -> None:
        assert self._session is not None
        rng = self._rng
        body = rng.choices(self._bodies, cum_weights=self._cumulative)[0]
        headers = {"x-user-id": f"user-{rng.randrange(USERS)}", "Content-Type": "application/json"}
        self.sent += 1
        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    self.failed += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.failed += 1


# --- running it ---------------------------------------------------------------------------------------

FINAL_PHASES = ("promoted", "rolled_back", "paused")
WATCH_EVERY = 0.05  # how often the demo checks the stage (to start the regression) and the phase
STATUS_WINDOW = 5.0  # seconds of traffic behind the per-version numbers on screen


@dataclass(frozen=True, slots=True)
class DemoResult:
    scenario: str
    outcome: str  # "promoted", "rolled_back", "paused", or "interrupted" (stopped before an outcome)
    reason: str  # the summary of the decision that ended the rollout
    elapsed: float  # seconds from the start of the traffic to the outcome
    regression_at: float | None  # seconds from the start of the traffic to the regression
    decision: dict[str, Any] | None  # the decision record, as GET /admin/decisions shows it
    admin_url: str

    @property
    def fired(self) -> tuple[str, ...]:
        """The rules and judge tests that failed in the decision that ended the rollout."""
        verdicts = (self.decision or {}).get("verdicts", [])
        return tuple(v["source"] for v in verdicts if v["status"] == "fail")


async def run_demo(
    scenario: str = "healthy",
    *,
    rate: float = 200.0,
    hold: float = 15.0,
    out: TextIO = sys.stdout,
    plain: bool = True,
    color: bool = False,
    keep_running: bool = False,
    stop: asyncio.Event | None = None,
    seed: int | None = None,
) -> DemoResult:
    """Run one scenario until the rollout ends (or `stop` is set) and return how it ended.

    `plain` prints a line per second; otherwise the screen is redrawn twice a second with ANSI
    codes. With `keep_running`, traffic and the proxy go on after the outcome until `stop` is set.
    Everything started here is stopped before returning, also when cancelled.
    """
    # Imported here: the CLI reads SCENARIOS to build its parser, and every command would
    # otherwise load the whole data plane first.
    from canaryproxy.server import CanaryProxy

    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if not (rate > 0 and hold > 0):
        raise ConfigError(f"rate and hold must be above 0, got rate {rate!r}, hold {hold!r}")
    stop = stop or asyncio.Event()
    rng = random.Random(seed)
    stable = ModelSimulator(STABLE, seed=rng.randrange(2**32))
    canary = ModelSimulator(CANARY, seed=rng.randrange(2**32))
    proxy: CanaryProxy | None = None
    traffic: Traffic | None = None
    screen = Screen(out, plain=plain, color=color)
    try:
        await stable.start()
        await canary.start()
        config = parse(demo_config_yaml(stable.url, canary.url, rate, hold), {}, "<demo config>")
        proxy = CanaryProxy(config)
        await proxy.start()
        traffic = Traffic(f"http://127.0.0.1:{proxy.data_port}", rate, seed=rng.randrange(2**32))
        run = DemoRun(SCENARIOS[scenario], proxy, canary, traffic, screen, keep_running)
        traffic.start()
        result = await run.until_outcome(stop)
        if keep_running and result.outcome != "interrupted":
            await run.keep_showing(stop)
        return result
    finally:
        screen.close()
        if traffic is not None:
            await traffic.stop()
        if proxy is not None:
            await proxy.shutdown()
        await canary.stop()
        await stable.stop()


class DemoRun:
    """One scenario in progress: watches the rollout, starts the regression, draws the screen."""

    def __init__(self, scenario: Scenario, proxy: CanaryProxy, canary: ModelSimulator,
                 traffic: Traffic, screen: Screen, keep_running: bool) -> None:
        assert proxy.controller is not None  # the demo config always has a rollout
        self.scenario = scenario
        self.controller = proxy.controller
        self.canary = canary
        self.traffic = traffic
        self.screen = screen
        self.keep_running = keep_running
        self.admin_url = f"http://127.0.0.1:{proxy.admin_port}/"
        self.proxy_url = f"http://127.0.0.1:{proxy.data_port}/"
        self.started = time.monotonic()
        self.regression_at: float | None = None
        self.result: DemoResult | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def until_outcome(self, stop: asyncio.Event) -> DemoResult:
        next_frame = 0.0
        while True:
            self._start_regression_at_stage_2()
            phase = self.controller.state.phase.value
            if phase in FINAL_PHASES or stop.is_set():
                self.result = self._result(phase if phase in FINAL_PHASES else "interrupted")
                self.screen.show(self.frame())
                return self.result
            if self.elapsed() >= next_frame:
                self.screen.show(self.frame())
                next_frame = self.elapsed() + self.screen.interval
            await _wait(stop, WATCH_EVERY)

    async def keep_showing(self, stop: asyncio.Event) -> None:
        """After the outcome: traffic goes on (for the dashboard) until stopped."""
        while not await _wait(stop, self.screen.interval):
            self.screen.show(self.frame())

    def _start_regression_at_stage_2(self) -> None:
        if self.regression_at is None and self.scenario.regression and self.controller.state.stage >= 1:
            self.canary.configure(self.scenario.regression)
            self.regression_at = self.elapsed()

    def _result(self, outcome: str) -> DemoResult:
        decision = None
        if outcome == "interrupted":
            reason = "stopped at " + status_document(self.controller, window=STATUS_WINDOW)["explain"]
        else:
            decision = next(d for d in reversed(list(self.controller.decisions))
                            if d["kind"] == "transition" and d["after"]["phase"] == outcome)
            reason = decision["summary"]
        return DemoResult(scenario=self.scenario.name, outcome=outcome, reason=reason, elapsed=self.elapsed(),
                          regression_at=self.regression_at, decision=decision, admin_url=self.admin_url)

    def frame(self) -> Frame:
        window = min(STATUS_WINDOW, max(1.0, self.elapsed()))  # a rate over seconds that had traffic
        return Frame(self, status_document(self.controller, window=window))


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; whether it is set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    return event.is_set()


# --- drawing --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """What the screen shows at one moment: the demo's own lines around `render_status`."""

    run: DemoRun
    status: dict[str, Any]

    def lines(self) -> list[str]:
        """The full-screen view, without the outcome (the screen wraps that one, never cuts it)."""
        run = self.run
        header = [
            f"canaryproxy demo, scenario {run.scenario.name}: {run.scenario.story}",
            f"elapsed {run.elapsed():.1f}s   {run.traffic.rate:g} req/s to {run.proxy_url}: "
            f"{run.traffic.sent} sent, {run.traffic.failed} without a complete answer"
            + (f", {run.traffic.skipped} not sent (this machine cannot keep up: try a lower --rate)"
               if run.traffic.skipped else ""),
            self._regression_line(),
            "",
            "stages  " + "  ".join(self._stage_cells()),
        ]
        # Judge tests that pass are counted, not listed: the view must fit a terminal.
        judged = self.status.get("judge_verdicts") or []
        unwell = [v for v in judged if v["status"] != "pass"]
        lines = header + render_status({**self.status, "judge_verdicts": unwell}).split("\n")
        if judged:
            lines.append(f"  judge: {len(judged) - len(unwell)} of {len(judged)} tests pass")
        return lines

    def line(self) -> str:
        """One line for logs and CI."""
        status = self.status
        stage = status.get("stage") or {}
        cells = [f"[{self.run.elapsed():5.1f}s] {status['phase']} stage {stage.get('number')}/"
                 f"{stage.get('of')} weight {status['weight']:g}%"]
        for role in ("stable", "canary"):
            metrics = ((status.get("versions") or {}).get(role) or {}).get("metrics") or {}
            cells.append(role + " " + " ".join(
                f"{label} {show(metrics.get(name, {}).get('value'))}" for label, name, show in _LINE_METRICS))
        verdicts = list(status.get("rules") or []) + list(status.get("judge_verdicts") or [])
        unwell = [f"{v['source']} {v['status']}" for v in verdicts if v["status"] != "pass"]
        cells.append("checks: " + (", ".join(unwell) if unwell else f"all {len(verdicts)} pass"))
        return " | ".join(cells)

    def _regression_line(self) -> str:
        run = self.run
        if not run.scenario.regression:
            return "regression: none, the canary stays like stable"
        change = ", ".join(f"{name} {_setting(name, getattr(CANARY, name))} -> {_setting(name, value)}"
                           for name, value in run.scenario.regression.items())
        if run.regression_at is None:
            return f"regression when stage 2 begins: {change}"
        return f"regression started at {run.regression_at:.1f}s: {change}"

    def _stage_cells(self) -> list[str]:
        status = self.status
        stage = status.get("stage") or {}
        current = (stage.get("number") or 1) - 1
        phase = status["phase"]
        cells = []
        for index, planned in enumerate(status.get("plan") or []):
            if index == current and phase in ("rolled_back", "paused"):
                bar = "[" + phase.replace("_", " ").center(10) + "]"
            else:
                done = 1.0 if index < current or phase == "promoted" else 0.0
                if index == current and phase == "progressing":
                    done = (stage.get("elapsed") or 0) / planned["hold"] if planned["hold"] else 1.0
                bar = progress_bar(done, 1.0, width=10)
            cells.append(f"{planned['weight']:g}% {bar}")
        return cells + ["then 100%" + (" [promoted]" if phase == "promoted" else "")]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


_LINE_METRICS = (
    ("req/s", "request_rate", _count),
    ("err", "error_rate", _ratio),
    ("p95", "latency_p95", _ms),
    ("ttft95", "ttft_p95", _ms),
    ("tok", "tokens_per_request", _count),
    ("guard", "guardrail_rate", _ratio),
    ("schema", "schema_failure_rate", _ratio),
)


def _setting(name: str, value: object) -> str:
    if name in ("latency", "ttft") and isinstance(value, float):
        return format_duration(value)
    if name.endswith("_rate") and isinstance(value, float):
        return f"{value * 100:g}%"
    return f"{value:g}" if isinstance(value, float) else str(value)


def outcome_lines(run: DemoRun) -> list[str]:
    """How the rollout ended and why, where to look, and (with --keep-running) what goes on."""
    result = run.result
    assert result is not None
    if result.outcome == "promoted":
        head = f"PROMOTED after {result.elapsed:.1f}s: the canary takes all traffic"
    elif result.outcome == "rolled_back":
        head = f"ROLLED BACK after {result.elapsed:.1f}s"
        if result.regression_at is not None:
            head += f", {result.elapsed - result.regression_at:.1f}s after the regression started"
    elif result.outcome == "paused":
        head = f"PAUSED after {result.elapsed:.1f}s: the rollout waits for an operator"
    else:
        head = f"STOPPED after {result.elapsed:.1f}s, before the rollout ended"
    url = result.admin_url
    lines = [head, f"  why: {result.reason}",
             f"  admin: {url} (status {url}admin/status, decisions {url}admin/decisions)"]
    if run.keep_running and result.outcome != "interrupted":
        lines.append(f"  still running: traffic through {run.proxy_url} goes on until Ctrl-C")
    return lines


# --- the terminal -----------------------------------------------------------------------------------

_COLORS = {"promoted": "32", "pass": "32", "rolled_back": "31", "rolled back": "31", "fail": "31",
           "paused": "33", "pending": "33", "progressing": "36", "inconclusive": "90",
           "PROMOTED": "1;32", "ROLLED BACK": "1;31", "PAUSED": "1;33", "STOPPED": "1;33"}
_COLORED_WORDS = re.compile(r"\b(" + "|".join(sorted(_COLORS, key=len, reverse=True)) + r")\b")


class Screen:
    """Where frames go: a full-screen redraw (ANSI) twice a second, or a plain line per second."""

    def __init__(self, out: TextIO, *, plain: bool, color: bool) -> None:
        self.out = out
        self.plain = plain
        self.color = color and not plain
        self.interval = 1.0 if plain else 0.5
        self._drawn = False
        self._outcome_shown = False

    def show(self, frame: Frame) -> None:
        result = frame.run.result
        if self.plain:
            text = frame.line() + "\n"
            if result is not None and not self._outcome_shown:
                text += "\n".join(outcome_lines(frame.run)) + "\n"
                self._outcome_shown = True
        else:
            width, height = shutil.get_terminal_size((120, 50))
            lines = [line[:width] for line in frame.lines()]
            if result is not None:
                lines.append("")
                for line in outcome_lines(frame.run):
                    lines += textwrap.wrap(line, width, subsequent_indent="       ") or [""]
            lines = [self._paint(line) for line in lines[-(height - 1):]]
            # Home, each line cleared to its end, everything below cleared: no flicker, no scrolling.
            start = "\x1b[?25l\x1b[2J\x1b[H" if not self._drawn else "\x1b[H"
            text = start + "\x1b[K\n".join(lines) + "\x1b[K\n\x1b[J"
        self.out.write(text)
        self.out.flush()
        self._drawn = True

    def _paint(self, line: str) -> str:
        if not self.color:
            return line
        return _COLORED_WORDS.sub(lambda m: f"\x1b[{_COLORS[m.group(1)]}m{m.group(1)}\x1b[0m", line)

    def close(self) -> None:
        if not self.plain and self._drawn:
            self.out.write("\x1b[?25h")  # the cursor, hidden while drawing
            self.out.flush()
