"""`canaryproxy demo`: a whole rollout on this machine in about a minute, healthy or regressing.

Everything runs in this process, on one event loop: two model simulators (stable and canary) on
free 127.0.0.1 ports, the proxy (`CanaryProxy`) with a short stage plan, operator rules and the
judge, and a traffic generator of sticky users. One loop keeps the demo a single thing to start
and stop (Ctrl-C closes every port, no children to reap), lets the demo change the canary's
behaviour with a plain method call, and lets a test run it with `await run_demo(...)`. The cost is
one core for all of it, which is why the simulated answers are short and the rate modest.

A scenario's regression starts when the rollout reaches stage 2, by changing the canary
simulator's behaviour at run time; the rules and the judge then have to notice it. A shadow
scenario's plan starts with a shadow stage (in place of the 5% one), and its regression is there
from the start: the shadow stage must catch it before any user is served by the canary, which
the demo checks by counting the answers whose served-by header (`x-canary-version`) says canary.

The rollout section (`ROLLOUT_YAML`) is written the way a user would write it; the numbers that
depend on the demo's speed (holds, windows, sample sizes) are filled in by `rollout_yaml`.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from canaryproxy.admin.views import status_document
from canaryproxy.config import parse
from canaryproxy.errors import ConfigError
from canaryproxy.sim.scenarios import (
    CANARY,
    FEEDBACK_DELAY,
    FEEDBACK_SHARE,
    SCENARIOS,
    STABLE,
    Scenario,
    demo_config_yaml,
)
from canaryproxy.sim.screen import Frame, Screen
from canaryproxy.sim.simulator import ModelSimulator
from canaryproxy.sim.traffic import FeedbackPlan, Traffic

if TYPE_CHECKING:
    from canaryproxy.server import CanaryProxy

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
    served_by_canary: int = 0  # user answers whose served-by header said canary, up to the outcome
    answers: int = 0  # user answers with a served-by header, up to the outcome

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
        config = parse(demo_config_yaml(stable.url, canary.url, rate, hold, SCENARIOS[scenario].shadow), {},
                       "<demo config>")
        proxy = CanaryProxy(config)
        await proxy.start()
        proxy_url = f"http://127.0.0.1:{proxy.data_port}"
        ratings = FeedbackPlan(proxy_url + config.feedback.path, config.feedback.header, FEEDBACK_SHARE,
                               FEEDBACK_DELAY * hold)
        traffic = Traffic(proxy_url, rate, seed=rng.randrange(2**32), feedback=ratings,
                          served_by_header=config.routing.served_by_header)
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
            self._start_regression()  # the first time round, before the traffic sends anything
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

    def _start_regression(self) -> None:
        """At stage 2, or from the start in a shadow scenario."""
        scenario = self.scenario
        due = scenario.regression_from_start or self.controller.state.stage >= 1
        if self.regression_at is None and scenario.regression and due:
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
        served = self.traffic.served_by
        return DemoResult(scenario=self.scenario.name, outcome=outcome, reason=reason, elapsed=self.elapsed(),
                          regression_at=self.regression_at, decision=decision, admin_url=self.admin_url,
                          served_by_canary=served.get("canary", 0), answers=sum(served.values()))

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


