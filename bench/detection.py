"""The detection benchmark: how soon a worse canary is rolled back, and how rarely a healthy one is.

    nice -n 19 .venv/bin/python bench/detection.py [--runs 1000] [--scenarios a,b]
        [--methods judge,thresholds,shadow] [--plan fixed|staged] [--jobs 2] [--seed N] [--json FILE]
        [--rate 100] [--weight 5] [--base-error 0.01] [--horizon 1800] [--warmup SECONDS]
        [--shadow PERCENT] [--shared-events 0.3]

Each run is one rollout with no sockets and a manual clock: synthetic outcomes of both versions go
through the product's own evidence and decision path — `Evidence.record(outcome)` (the windows
and the `Judge`), then every `evaluate_every` (10 s) `Controller.evaluate()`:
`RuleEngine.evaluate` + `Judge.verdicts` + `stages.step`, with a `ManualClock`, the memory backends
and an `Alerter` without webhooks (`send` only logs, and the workers silence the log). A run ends at the rollback (or
another stop of the rollout) or at the horizon.

Traffic. `--rate` requests per second start evenly spaced in time, from a population of 5,000
users with Zipf activity (exponent 1: the busiest user sends 11% of all requests). Each user is a
sticky key with a random 64-bit hash per run, so the real `Splitter` decides its role at the weight
in force when the request starts, and who is on the canary changes from run to run. A request
reaches the sinks when it completes (start + latency), in completion order, as in the proxy. A
user's prompts and answers have their own typical length (a lognormal factor per user), so one
user's requests are correlated, as in production. Per request, on a healthy version:
* failure (status 500, no usage) with probability `--base-error`;
* latency lognormal, median 2 s, σ = 0.35 in log space (p95 = 3.56 s);
* prompt tokens lognormal, median 400, per-user σ 0.5 and per-request σ 0.5; completion tokens
  lognormal, median 250, per-user σ 0.3 and per-request σ 0.6; output characters 4 per token;
* a guardrail intervention with probability 0.5%.
In the feedback scenarios (and only there, so the others draw the same numbers as before) 5% of the
successful responses are rated by their user after a lognormal delay (median 30 s, σ = 1: a few
minutes for the slowest 2%), negatively with probability 10% on a healthy version; the records
reach `Evidence.record_feedback` when due, as they would through the proxy's feedback endpoint,
and the judge runs with its feedback tests (`JudgeConfig(feedback=True)`: the family α stays 1%).
In the schema scenarios (only there, likewise) every successful answer is checked against a
schema, which a healthy version fails 1% of the time.

Decision methods. `judge`: the judge with its defaults and no operator rules. `thresholds`: no
judge, and the operator rules of config/example.yaml (`THRESHOLD_RULES`). Both use the same seeds,
so they see the same users and the same requests until one of them stops. `shadow` (asked for by
name): the plan's stage is a shadow stage, no user is served by the canary, `--shadow` percent of
the requests (default `--weight`) are also answered by it and the judge's paired tests decide
(detection_shadow.py; the fixed plan only, and not the feedback scenarios: nobody rates a shadow
answer). Its seeds are the others': the same users, so the canary answers in the shadow the
requests of the very users it serves live at that weight, though not the same draws.

Detection. For the judge, the moment its evidence crossed 1/α: the verdict's `observed` count of
canary requests, and the time of that canary request; the rollback follows at the next evaluation.
For the thresholds, the evaluation at which a rule fired. Canary requests count from the canary's
first request, warm-up included.

Plans. `fixed` (default): one stage at `--weight`, held past the horizon, so "canary requests to
detection" is well defined. `staged`: 5% -> 25% -> 50% -> 100%, 10 minutes each (example.yaml);
the horizon is then the end of the plan, and a healthy canary ends promoted.

Cost. A 30-minute rollout is 180,000 requests, about a second of one core: the product's own work
per request (windows, judge) and the simulator's (drawing the outcome, ordering completions) are
of the same size. With the judge alone, nothing reads the windows once the controller has fixed
the judge's latency baseline (at its first evaluation), so the run stops recording into them then:
no decision changes, and the run costs a third less. Runs go to `--jobs` worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from hashlib import blake2b
from heapq import heappop, heappush
from typing import Callable, Iterable, Sequence

from canaryproxy.alerts import Alerter
from canaryproxy.backends.memory import MemoryRolloutStore, SoleLeadership
from canaryproxy.clock import ManualClock
from canaryproxy.control.controller import Controller
from canaryproxy.control.decisions import DecisionRecord
from canaryproxy.control.evidence import Evidence
from canaryproxy.control.follower import Follower
from canaryproxy.core.judge import Judge, JudgeConfig
from canaryproxy.core.rules import Comparison, Rule, RuleEngine
from canaryproxy.core.splitter import Splitter
from canaryproxy.core.stages import Phase, Plan, Stage
from canaryproxy.core.types import Feedback, Observed, Outcome, Role, Status
from canaryproxy.core.window import WindowConfig, Windows

USERS = 5_000
ZIPF_EXPONENT = 1.0
EVALUATE_EVERY = 10.0
WINDOW = WindowConfig(bucket_seconds=1.0, span_seconds=900.0)  # what server.window_config gives

LATENCY_MEDIAN = 2.0
LATENCY_SIGMA = 0.35
TAIL_QUANTILE_Z = 1.6448536269514722  # the slowest 5%: z above the 95th percentile
PROMPT_MEDIAN, PROMPT_USER_SIGMA, PROMPT_SIGMA = 400.0, 0.5, 0.5
COMPLETION_MEDIAN, COMPLETION_USER_SIGMA, COMPLETION_SIGMA = 250.0, 0.3, 0.6
CHARS_PER_TOKEN = 4
GUARDRAIL_RATE = 0.005
GUARDRAIL = ("moderation",)
# In the schema scenarios (and only there) every successful answer is checked against a schema.
SCHEMA_FAILURE_RATE = 0.01  # of the successful answers of a healthy version
FEEDBACK_RATED = 0.05  # share of successful responses whose user rates them
FEEDBACK_DELAY_MEDIAN, FEEDBACK_DELAY_SIGMA = 30.0, 1.0  # seconds after the response; lognormal
BASE_NEGATIVE_FEEDBACK = 0.1  # of the rated answers of a healthy version
# One user in 50 is "hard": in the scenario "hard users" their prompts (long documents, odd
# inputs) fail more often on either version. Chosen by key hash, so independent of activity and
# of the role (the splitter hashes the key again with BLAKE2b).
HARD_USER_MODULUS = 50

# The operator rules of config/example.yaml: what a user without the judge would write.
THRESHOLD_RULES = (
    Rule("errors", "error_rate", Comparison.ABOVE, 0.05, window=60.0, for_=300.0),
    Rule("latency", "latency_p95", Comparison.ABOVE, 10.0, window=60.0, for_=300.0),
    Rule("tokens", "tokens_per_request", Comparison.ABOVE_STABLE, 1.5, window=300.0, for_=600.0),
    Rule("guardrails", "guardrail_per_minute", Comparison.ABOVE, 10.0, window=60.0, for_=300.0),
    Rule("schema", "schema_failure_rate", Comparison.ABOVE, 0.02, window=300.0, for_=300.0),
)
STAGED_PLAN = (Stage(5.0, 600.0), Stage(25.0, 600.0), Stage(50.0, 600.0), Stage(100.0, 600.0))
METHODS = ("judge", "thresholds", "shadow")
# The shadow method: the share of the lower of the two versions' failure (schema, guardrail) rates
# that happens on both answers to a request (detection_shadow.py).
SHARED_EVENTS = 0.3
LIVE_METHODS = ("judge", "thresholds")  # the default: the shadow stage is asked for by name

# Standard normal quantiles at 2^16 evenly spaced probabilities: one table lookup per draw instead
# of a Box-Muller, the largest cost of the simulation otherwise. Tails end at |z| = 4.3.
_NORMAL_BITS = 16
_NORMALS = tuple(
    statistics.NormalDist().inv_cdf((i + 0.5) / 2**_NORMAL_BITS) for i in range(2**_NORMAL_BITS)
)


# --- scenarios ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How one version serves during one second."""

    error_rate: float
    latency_scale: float = 1.0  # multiplies every latency
    tail_scale: float = 1.0  # multiplies the slowest 5% once more
    tokens_scale: float = 1.0  # multiplies prompt and completion tokens
    guardrail_rate: float = GUARDRAIL_RATE
    hard_user_error_factor: float = 1.0  # multiplies the failure rate of the hard users' requests
    negative_feedback: float = BASE_NEGATIVE_FEEDBACK  # of rated answers (feedback scenarios only)
    schema_failure_rate: float = SCHEMA_FAILURE_RATE  # of successful answers (schema scenarios only)


@dataclass(frozen=True, slots=True)
class Setup:
    rate: float  # requests per second, both versions
    weight: float  # canary percent (the first stage's in the staged plan)
    base_error: float
    horizon: float  # seconds
    plan: str  # "fixed" or "staged"
    warmup: float | None  # the judge's warm-up override; None: the judge's default
    shadow: float = 5.0  # percent of the requests copied to the canary (the shadow method)
    shared_events: float = SHARED_EVENTS  # on both answers of a pair (the shadow method)


# A version's behaviour at second t of the run, `since_increase` seconds after the canary weight
# last rose.
BehaviourAt = Callable[[Setup, float, float], Behaviour]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    regression: bool  # a worse canary to detect; otherwise a healthy one that must stay
    description: str
    canary: BehaviourAt
    stable: BehaviourAt
    feedback: bool = False  # users rate answers (late), and the judge runs its feedback tests
    schema: bool = False  # every successful answer is checked against a schema


def _healthy(setup: Setup, t: float, since_increase: float) -> Behaviour:
    return Behaviour(setup.base_error)


def _steady(**change: float) -> BehaviourAt:
    """A canary that is worse in the same way from its first request to its last."""

    def canary(setup: Setup, t: float, since_increase: float) -> Behaviour:
        error_rate = change.get("error_rate", setup.base_error * change.get("error_factor", 1.0))
        others = {k: v for k, v in change.items() if k not in ("error_rate", "error_factor")}
        return Behaviour(error_rate, **others)

    return canary


BURST_START, BURST_SECONDS, BURST_FACTOR = 120.0, 30.0, 10.0


def _burst(setup: Setup, t: float, since_increase: float) -> Behaviour:
    in_burst = BURST_START <= t < BURST_START + BURST_SECONDS
    return Behaviour(setup.base_error * (BURST_FACTOR if in_burst else 1.0))


DRIFT = 0.3  # both versions' latency and tokens rise this much over the horizon


def _drift(setup: Setup, t: float, since_increase: float) -> Behaviour:
    scale = 1.0 + DRIFT * t / setup.horizon
    return Behaviour(setup.base_error, latency_scale=scale, tokens_scale=scale)


COLD_SECONDS, COLD_LATENCY, COLD_ERRORS = 20.0, 3.0, 2.0


def _cold_start(setup: Setup, t: float, since_increase: float) -> Behaviour:
    if since_increase < COLD_SECONDS:
        return Behaviour(setup.base_error * COLD_ERRORS, latency_scale=COLD_LATENCY)
    return Behaviour(setup.base_error)


HARD_USER_FACTOR = 10.0


def _hard_users(setup: Setup, t: float, since_increase: float) -> Behaviour:
    return Behaviour(setup.base_error, hard_user_error_factor=HARD_USER_FACTOR)


def _scenarios() -> dict[str, Scenario]:
    regressions = [
        ("errors x1.5", "failures 1.5x stable's", _steady(error_factor=1.5)),
        ("errors x2", "failures 2x stable's", _steady(error_factor=2.0)),
        ("errors x3", "failures 3x stable's", _steady(error_factor=3.0)),
        ("errors x10", "failures 10x stable's", _steady(error_factor=10.0)),
        ("errors 50%", "half the canary's requests fail", _steady(error_rate=0.5)),
        ("latency x1.1", "every request 10% slower", _steady(latency_scale=1.1)),
        ("latency x1.3", "every request 30% slower (p95 +30%)", _steady(latency_scale=1.3)),
        ("latency tail x2", "the slowest 5% twice as slow, the rest unchanged", _steady(tail_scale=2.0)),
        ("tokens x1.2", "prompt and completion tokens 1.2x", _steady(tokens_scale=1.2)),
        ("tokens x1.5", "prompt and completion tokens 1.5x", _steady(tokens_scale=1.5)),
        ("guardrail x2", "guardrail interventions 2x stable's (1% vs 0.5%)",
         _steady(guardrail_rate=2 * GUARDRAIL_RATE)),
    ]
    healthy = [
        ("A/A", "the canary is the same version", _healthy, _healthy),
        ("burst (shared)", f"both versions fail {BURST_FACTOR:g}x as often for {BURST_SECONDS:g} s "
         f"from t = {BURST_START:g} s", _burst, _burst),
        ("drift (shared)", f"both versions' latency and tokens rise {DRIFT:.0%} over the horizon",
         _drift, _drift),
        ("cold start", f"the canary's first {COLD_SECONDS:g} s after each weight increase: latency "
         f"x{COLD_LATENCY:g} and failures x{COLD_ERRORS:g}", _cold_start, _healthy),
        ("hard users (shared)", f"one user in {HARD_USER_MODULUS} fails {HARD_USER_FACTOR:g}x as often, "
         "on both versions (correlated failures within a user)", _hard_users, _hard_users),
    ]
    rated = (f"{FEEDBACK_RATED:.0%} of answers rated after a lognormal delay (median "
             f"{FEEDBACK_DELAY_MEDIAN:g} s, σ = {FEEDBACK_DELAY_SIGMA:g})")
    with_feedback = [
        ("feedback x2", f"negative feedback 2x stable's (20% vs 10% of rated answers); {rated}",
         _steady(negative_feedback=2 * BASE_NEGATIVE_FEEDBACK)),
        ("feedback x3", f"negative feedback 3x stable's (30% vs 10% of rated answers); {rated}",
         _steady(negative_feedback=3 * BASE_NEGATIVE_FEEDBACK)),
    ]
    with_schema = [
        ("schema x3", f"schema failures 3x stable's ({3 * SCHEMA_FAILURE_RATE:.0%} vs {SCHEMA_FAILURE_RATE:.0%} "
         "of the successful answers, every one checked)", _steady(schema_failure_rate=3 * SCHEMA_FAILURE_RATE)),
    ]
    scenarios = [Scenario(name, True, text, canary, _healthy) for name, text, canary in regressions]
    scenarios += [Scenario(name, True, text, canary, _healthy, schema=True) for name, text, canary in with_schema]
    scenarios += [Scenario(name, True, text, canary, _healthy, feedback=True) for name, text, canary in with_feedback]
    scenarios += [Scenario(name, False, text, canary, stable) for name, text, canary, stable in healthy]
    scenarios.append(Scenario("A/A (feedback)", False, f"the canary is the same version; {rated}", _healthy,
                              _healthy, feedback=True))
    return {scenario.name: scenario for scenario in scenarios}


SCENARIOS = _scenarios()


# --- one run ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunResult:
    scenario: str
    method: str
    run: int
    phase: str  # the rollout's phase at the end: rolled_back, paused, promoted or progressing
    sources: tuple[str, ...]  # the verdicts that stopped the rollout
    detect_requests: int | None  # canary requests served when the evidence crossed (None: never)
    detect_seconds: float | None
    stop_seconds: float | None  # when the rollout stopped (the evaluation that acted)
    canary_requests: int  # served by the canary during the run
    requests: int


class Population:
    """The users of one run: Zipf activity, a sticky key hash each, their own typical lengths."""

    __slots__ = ("ids", "cumulative", "hashes", "prompt_offsets", "completion_offsets")

    def __init__(self, rng: random.Random, users: int = USERS) -> None:
        self.ids = range(users)
        total = 0.0
        cumulative = []
        for rank in range(1, users + 1):
            total += rank ** -ZIPF_EXPONENT
            cumulative.append(total)
        self.cumulative = cumulative
        self.hashes = [rng.getrandbits(64) for _ in self.ids]
        self.prompt_offsets = [rng.gauss(0.0, PROMPT_USER_SIGMA) for _ in self.ids]
        self.completion_offsets = [rng.gauss(0.0, COMPLETION_USER_SIGMA) for _ in self.ids]


def seed_for(base: int, scenario: str, run: int) -> int:
    """The seed of one run: the same for every method, so they are compared on the same traffic."""
    digest = blake2b(f"{base}:{scenario}:{run}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def plan_for(setup: Setup) -> Plan:
    if setup.plan == "staged":
        return Plan(STAGED_PLAN, min_requests=100, max_hold=3600.0)
    # One stage held past the horizon: the weight never changes during a run.
    hold = setup.horizon + EVALUATE_EVERY
    return Plan((Stage(setup.weight, hold),), min_requests=100, max_hold=hold)


def judge_config(setup: Setup, feedback: bool = False) -> JudgeConfig:
    if setup.warmup is None:
        return JudgeConfig(feedback=feedback)
    return JudgeConfig(warmup_seconds=setup.warmup, feedback=feedback)


def run_once(scenario: Scenario, method: str, setup: Setup, run: int, base_seed: int) -> RunResult:
    return asyncio.run(_run_once(scenario, method, setup, run, base_seed))


async def _run_once(scenario: Scenario, method: str, setup: Setup, run: int, base_seed: int) -> RunResult:
    rng = random.Random(seed_for(base_seed, scenario.name, run))
    population = Population(rng)
    clock = ManualClock()
    start = clock.monotonic()
    wall_offset = clock.wall() - start  # requests carry wall-clock routing times, as in the proxy
    splitter = Splitter(0.0, rng)
    judging = Judge(judge_config(setup, scenario.feedback)) if method == "judge" else None
    evidence = Evidence(Windows(WINDOW), judging)
    store = MemoryRolloutStore()
    controller = Controller(
        plan_for(setup), RuleEngine(THRESHOLD_RULES if method == "thresholds" else ()), evidence,
        store, SoleLeadership(), Follower(store, splitter.set_weight, clock.monotonic), Alerter([]),
        DecisionRecord(), clock, EVALUATE_EVERY,
    )
    await controller.boot()  # start: auto, so the canary gets the first stage's weight now

    judge = controller.judge
    in_flight: list[tuple[float, int, Outcome]] = []  # (completion time, sequence, outcome)
    # (wall time it arrives, sequence, record); None: no feedback in this scenario
    feedback_due: list[tuple[float, int, Feedback]] | None = [] if scenario.feedback else None
    canary_times: list[float] = []  # completion time of each canary request, in order
    requests = 0
    weight_raised_at = 0.0
    weight = splitter.weight
    seconds = 0
    next_evaluation = EVALUATE_EVERY
    horizon = int(setup.horizon)
    while seconds < horizon and controller.state.phase is Phase.PROGRESSING:
        if splitter.weight > weight:
            weight_raised_at = float(seconds)
        weight = splitter.weight
        since_increase = seconds - weight_raised_at
        stable = scenario.stable(setup, seconds, since_increase)
        canary = scenario.canary(setup, seconds, since_increase)
        count = math.floor((seconds + 1) * setup.rate) - math.floor(seconds * setup.rate)
        users = rng.choices(population.ids, cum_weights=population.cumulative, k=count)
        _start_second(
            rng, population, users, start + seconds, wall_offset, weight, splitter.choose, stable,
            canary, in_flight, requests, feedback_due, scenario.schema,
        )
        requests += count
        seconds += 1
        _finish(in_flight, start + seconds, evidence.record, canary_times)
        while feedback_due and feedback_due[0][0] <= start + seconds + wall_offset:
            evidence.record_feedback(heappop(feedback_due)[2])
        if seconds >= next_evaluation:
            clock.advance(start + seconds - clock.monotonic())
            await controller.evaluate()
            next_evaluation += EVALUATE_EVERY
            if not isinstance(evidence.windows, _NoWindows) and judge is not None \
                    and not controller.rules.rules and judge.latency_thresholds is not None:
                # Nothing reads the windows any more (the rules would, the judge never does):
                # the benchmark stops paying for them. Results are the same either way.
                evidence.windows = _NoWindows(WINDOW)
    return _result(scenario, method, run, controller, canary_times, start, seconds, requests)


class _NoWindows(Windows):
    """Windows that keep nothing."""

    __slots__ = ()

    def record(self, outcome: Observed, t: float) -> None:
        return None

    def record_feedback(self, feedback: Feedback, t: float) -> None:
        return None


def _start_second(
    rng: random.Random,
    population: Population,
    users: Sequence[int],
    second_start: float,
    wall_offset: float,
    weight: float,
    choose: Callable[[int | None], Role],
    stable: Behaviour,
    canary: Behaviour,
    in_flight: list[tuple[float, int, Outcome]],
    sequence: int,
    feedback_due: list[tuple[float, int, Feedback]] | None = None,
    schema_checked: bool = False,
) -> None:
    """Start one second of requests, routed at the weight in force now: each becomes an outcome
    that waits in `in_flight` until its completion time; with `feedback_due`, a share of the
    successful ones are rated, the rating waiting there until it arrives (wall time); with
    `schema_checked`, every successful one is checked against a schema."""
    rand = rng.random
    bits = rng.getrandbits
    normals = _NORMALS
    exp = math.exp
    hashes = population.hashes
    prompt_offsets = population.prompt_offsets
    completion_offsets = population.completion_offsets
    spacing = 1.0 / len(users) if users else 0.0
    stable_profile, canary_profile = _profile(stable), _profile(canary)
    for index, user in enumerate(users):
        started = second_start + (index + 0.5) * spacing
        key = hashes[user]
        role = choose(key)
        error_rate, log_latency, tail_scale, log_tokens, guardrail_rate, hard_factor, negative_rate, schema_rate = (
            canary_profile if role is _CANARY else stable_profile
        )
        if hard_factor != 1.0 and key % HARD_USER_MODULUS == 0:
            error_rate *= hard_factor
        z = normals[bits(_NORMAL_BITS)]
        latency = exp(log_latency + LATENCY_SIGMA * z)
        if z > TAIL_QUANTILE_Z:
            latency *= tail_scale
        if rand() < error_rate:
            outcome = Outcome(role, started, weight, key, status=500, latency=latency,
                              routed_at=started + wall_offset)
        else:
            prompt = (
                log_tokens + _LOG_PROMPT + prompt_offsets[user] + PROMPT_SIGMA * normals[bits(_NORMAL_BITS)]
            )
            completion = round(exp(
                log_tokens + _LOG_COMPLETION + completion_offsets[user]
                + COMPLETION_SIGMA * normals[bits(_NORMAL_BITS)]
            )) or 1
            outcome = Outcome(
                role, started, weight, key, status=200, latency=latency, routed_at=started + wall_offset,
                prompt_tokens=round(exp(prompt)) or 1, completion_tokens=completion,
                output_chars=CHARS_PER_TOKEN * completion,
                guardrails=GUARDRAIL if rand() < guardrail_rate else (),
                # Drawn after the guardrail's, and only here: the other scenarios draw as before.
                schema_ok=rand() >= schema_rate if schema_checked else None,
            )
        heappush(in_flight, (started + latency, sequence + index, outcome))
        if feedback_due is not None and outcome.status == 200 and rand() < FEEDBACK_RATED:
            negative = rand() < negative_rate
            routed_at = started + wall_offset
            delay = FEEDBACK_DELAY_MEDIAN * exp(FEEDBACK_DELAY_SIGMA * normals[bits(_NORMAL_BITS)])
            arrives = routed_at + latency + delay
            record = Feedback(role, "", routed_at, weight, key, "thumbs", not negative, negative, arrives)
            heappush(feedback_due, (arrives, sequence + index, record))


def _finish(
    in_flight: list[tuple[float, int, Outcome]],
    until: float,
    record: Callable[[Outcome], None],
    canary_times: list[float],
) -> None:
    """Hand the requests that completed by `until` to the evidence, in completion order."""
    while in_flight and in_flight[0][0] <= until:
        t, _, outcome = heappop(in_flight)
        record(outcome)
        if outcome.role is _CANARY:
            canary_times.append(t)


_CANARY = Role.CANARY
_LOG_PROMPT = math.log(PROMPT_MEDIAN)
_LOG_COMPLETION = math.log(COMPLETION_MEDIAN)


def _profile(behaviour: Behaviour) -> tuple[float, float, float, float, float, float, float, float]:
    return (
        behaviour.error_rate,
        math.log(LATENCY_MEDIAN * behaviour.latency_scale),
        behaviour.tail_scale,
        math.log(behaviour.tokens_scale),
        behaviour.guardrail_rate,
        behaviour.hard_user_error_factor,
        behaviour.negative_feedback,
        behaviour.schema_failure_rate,
    )


def _result(
    scenario: Scenario, method: str, run: int, controller: Controller, canary_times: list[float],
    start: float, seconds: int, requests: int,
) -> RunResult:
    state = controller.state
    stopped = state.phase is not Phase.PROGRESSING
    failing = [v for v in controller.verdicts if v.status is Status.FAIL] if stopped else []
    detect_requests: int | None = None
    detect_seconds: float | None = None
    if failing:
        judge_counts = [v.details["observed"]["canary"] for v in failing if v.source.startswith("judge:")]
        if judge_counts:
            detect_requests = min(judge_counts)
            detect_seconds = canary_times[detect_requests - 1] - start if detect_requests else 0.0
        else:  # a rule fires at an evaluation: detection is that evaluation
            detect_requests = len(canary_times)
            detect_seconds = float(seconds)
    return RunResult(
        scenario=scenario.name,
        method=method,
        run=run,
        phase=state.phase.value,
        sources=tuple(v.source for v in failing),
        detect_requests=detect_requests,
        detect_seconds=detect_seconds,
        stop_seconds=float(seconds) if stopped else None,
        canary_requests=len(canary_times),
        requests=requests,
    )


# --- many runs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Task:
    scenario: str
    method: str
    run: int
    setup: Setup
    base_seed: int


def _run_task(task: Task) -> RunResult:
    if task.method == "shadow":
        import detection_shadow  # it imports this module: not at the top

        return detection_shadow.run_shadow_once(SCENARIOS[task.scenario], task.setup, task.run, task.base_seed)
    return run_once(SCENARIOS[task.scenario], task.method, task.setup, task.run, task.base_seed)


def _quiet_worker() -> None:
    # Alerts and decisions are logged at WARNING/INFO; thousands of rollbacks would flood stderr.
    logging.getLogger("canaryproxy").setLevel(logging.CRITICAL)


def run_all(tasks: Sequence[Task], jobs: int, progress: Callable[[int, int], None]) -> list[RunResult]:
    results: list[RunResult] = []
    if jobs <= 1:
        _quiet_worker()
        for task in tasks:
            results.append(_run_task(task))
            progress(len(results), len(tasks))
        return results
    with multiprocessing.get_context("fork").Pool(jobs, initializer=_quiet_worker) as pool:
        for result in pool.imap_unordered(_run_task, tasks, chunksize=4):
            results.append(result)
            progress(len(results), len(tasks))
    return results


# --- the report ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    scenario: str
    method: str
    regression: bool
    runs: int
    rolled_back: int
    paused: int
    promoted: int
    requests_median: float | None
    requests_p90: float | None
    seconds_median: float | None
    seconds_p90: float | None
    stop_seconds_median: float | None
    sources: dict[str, int]

    @property
    def rollback_rate(self) -> float:
        return self.rolled_back / self.runs


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (nearest rank), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(results: Iterable[RunResult]) -> list[Summary]:
    groups: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for result in results:
        groups[(result.scenario, result.method)].append(result)
    summaries = []
    for name in SCENARIOS:
        for method in METHODS:
            group = groups.get((name, method))
            if not group:
                continue
            detected = [r for r in group if r.phase == Phase.ROLLED_BACK.value]
            requests = [float(r.detect_requests) for r in detected if r.detect_requests is not None]
            seconds = [r.detect_seconds for r in detected if r.detect_seconds is not None]
            stops = [r.stop_seconds for r in detected if r.stop_seconds is not None]
            sources = Counter(source for r in detected for source in r.sources)
            summaries.append(Summary(
                scenario=name, method=method, regression=SCENARIOS[name].regression, runs=len(group),
                rolled_back=len(detected), paused=sum(r.phase == Phase.PAUSED.value for r in group),
                promoted=sum(r.phase == Phase.PROMOTED.value for r in group),
                requests_median=quantile(requests, 0.5), requests_p90=quantile(requests, 0.9),
                seconds_median=quantile(seconds, 0.5), seconds_p90=quantile(seconds, 0.9),
                stop_seconds_median=quantile(stops, 0.5), sources=dict(sources.most_common()),
            ))
    return summaries


def _number(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def table(summaries: Sequence[Summary]) -> str:
    lines = [
        "| scenario | method | runs | rolled back | canary requests to detection, median (p90) "
        "| seconds to detection, median (p90) | fired |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        rate = f"{s.rollback_rate:.1%}"
        others = [f"{count} {what}" for count, what in ((s.paused, "paused"), (s.promoted, "promoted")) if count]
        if others:
            rate += f" ({', '.join(others)})"
        fired = ", ".join(f"{name} {count}" for name, count in list(s.sources.items())[:3])
        lines.append(
            f"| {s.scenario} | {s.method} | {s.runs:,} | {rate} | "
            f"{_number(s.requests_median)} ({_number(s.requests_p90)}) | "
            f"{_number(s.seconds_median, 1)} ({_number(s.seconds_p90, 1)}) | {fired} |"
        )
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=1000, help="rollouts per scenario and method")
    parser.add_argument("--scenarios", default="",
                        help="comma-separated, default all: " + ", ".join(SCENARIOS).replace("%", "%%"))
    parser.add_argument("--methods", default=",".join(LIVE_METHODS),
                        help="comma-separated: judge, thresholds (the default: both), shadow")
    parser.add_argument("--plan", choices=("fixed", "staged"), default="fixed")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--seed", type=int, default=1, help="base seed; runs are reproducible")
    parser.add_argument("--json", help="write every run's result and the summary here")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second, both versions")
    parser.add_argument("--weight", type=float, default=5.0, help="canary percent (fixed plan)")
    parser.add_argument("--base-error", type=float, default=0.01, help="stable's failure rate")
    parser.add_argument("--horizon", type=float, default=1800.0, help="seconds (fixed plan)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="the judge's warm-up in seconds (default: the judge's own default)")
    parser.add_argument("--shadow", type=float, default=None,
                        help="shadow method: percent of the requests copied to the canary (default: --weight)")
    parser.add_argument("--shared-events", type=float, default=SHARED_EVENTS,
                        help="shadow method: share of the lower failure (schema, guardrail) rate that "
                             "happens on both answers of a pair")
    args = parser.parse_args(argv)
    problems = []
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()] or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        problems.append(
            f"--scenarios: unknown {', '.join(map(repr, unknown))}; known: {', '.join(SCENARIOS)}"
        )
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    if not methods or set(methods) - set(METHODS):
        problems.append(f"--methods: expected some of {', '.join(METHODS)}, got {args.methods!r}")
    if "shadow" in methods and args.plan == "staged":
        problems.append("--methods shadow runs the fixed plan only (a shadow stage held past the horizon)")
    args.shadow = args.weight if args.shadow is None else args.shadow
    if not 0 < args.shadow <= 100 or not 0 <= args.shared_events <= 1:
        problems.append(f"--shadow must be a percent in (0, 100] and --shared-events a share in [0, 1], "
                        f"got {args.shadow} and {args.shared_events}")
    if args.runs < 1 or args.jobs < 1:
        problems.append("--runs and --jobs must be at least 1")
    if not 0 < args.weight < 100:
        problems.append(f"--weight must be between 0 and 100 percent, got {args.weight}")
    if not 0 <= args.base_error < 1:
        problems.append(f"--base-error must be a rate in [0, 1), got {args.base_error}")
    if args.rate <= 0 or args.horizon < EVALUATE_EVERY:
        problems.append(f"--rate must be positive and --horizon at least {EVALUATE_EVERY:g} s")
    if problems:
        parser.error("; ".join(problems))
    args.scenario_names = names
    args.method_names = methods
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The staged plan's horizon leaves time for the evaluation that promotes after the last hold.
    staged_horizon = sum(stage.hold for stage in STAGED_PLAN) + 2 * EVALUATE_EVERY
    horizon = staged_horizon if args.plan == "staged" else args.horizon
    setup = Setup(rate=args.rate, weight=args.weight, base_error=args.base_error, horizon=horizon,
                  plan=args.plan, warmup=args.warmup, shadow=args.shadow, shared_events=args.shared_events)
    tasks = [
        Task(name, method, run, setup, args.seed)
        for name in args.scenario_names
        for method in args.method_names
        # No user sees a shadow answer, so nobody rates it: the feedback scenarios run live only.
        if not (method == "shadow" and SCENARIOS[name].feedback)
        for run in range(args.runs)
    ]
    began = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            print(f"\r{done:,}/{total:,} runs, {time.monotonic() - began:,.0f} s", end="", file=sys.stderr,
                  flush=True)

    results = run_all(tasks, args.jobs, progress)
    elapsed = time.monotonic() - began
    print(file=sys.stderr)
    summaries = summarize(results)
    print(table(summaries))
    print()
    if {"judge", "shadow"} <= set(args.method_names):
        import detection_shadow

        print(detection_shadow.side_by_side(summaries))
        print()
    for name in args.scenario_names:
        print(f"- {name}: {SCENARIOS[name].description}")
    print(f"\n{len(results):,} rollouts in {elapsed:,.0f} s with {args.jobs} jobs; "
          f"{args.plan} plan, {setup.rate:g} requests/s, weight {setup.weight:g}%, "
          f"base error {setup.base_error:g}, horizon {setup.horizon:g} s, seed {args.seed}"
          + (f"; shadow {setup.shadow:g}%, shared events {setup.shared_events:g}"
             if "shadow" in args.method_names else ""))
    if args.json:
        document = {
            "setup": dataclasses.asdict(setup),
            "seed": args.seed,
            "elapsed_seconds": elapsed,
            "summaries": [dataclasses.asdict(s) for s in summaries],
            "runs": [dataclasses.asdict(r) for r in results],
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=1)
    return 0


if __name__ == "__main__":
    # Run as the module `detection`, the one detection_shadow imports: one copy of the scenarios.
    import detection

    sys.exit(detection.main())
