"""The detection benchmark's shadow stage: `detection.py --methods shadow`.

The plan's first stage is a shadow stage (`Stage(0, hold, shadow=--shadow)`, held past the
horizon, then the live stage the config validation asks for): no user is served by the canary;
`--shadow` percent of the requests (by the real `Splitter`'s sticky key buckets, the same buckets
that put users on the canary at that live weight) are also answered by the canary, and each such
request yields a `ShadowPair` that reaches `Evidence.record_pair` (the paired tests of the
`Judge`) when both answers have ended; every 10 s `Controller.evaluate()` judges the stage by the
paired tests alone (its `_shadow_inputs`), and a FAIL rolls back. Users, seeds and the per-version
rates are detection.py's: with `--shadow` equal to `--weight` the canary answers, per run, the
requests of exactly the users it would serve live, so it sees as many requests in both.

**A pair.** Both answers are to the same request: same user, same prompt (tokens, scaled on the
canary side by the scenario), same moment. What the two share and what each adds, chosen so that
each side alone has detection.py's distribution exactly:
* latency: log-normal, σ 0.35 as live, split into the request's part (the load of the moment and
  the prompt; σ 0.287, common to both) and each answer's own jitter (σ 0.2); the tail scale
  applies to an answer whose own total is in the slowest 5%;
* completion tokens: the user's offset and the request's part (σ 0.52) common, each answer's own
  sampling σ 0.3 (two answers to one prompt differ by ×1.5 about one time in three);
* failures, schema failures and guardrail interventions: a share `--shared-events` (default 0.3)
  of the lower of the two versions' rates happens on both answers (the prompt's doing), the rest
  on each answer independently, so that each side's rate is the scenario's.

**Cost.** After stable's latency baseline is fixed (the first evaluation), nothing a shadow stage
reads depends on the stable requests that were not copied (the live tests' verdicts are not read
there, the windows by nothing), so the run stops simulating them: 5 pairs a second instead of
100 requests. The user's side of each pair still reaches `Evidence.record`, as in the proxy.

**Detection** is the pair at which a paired test crossed 1/α. The paired verdicts count the pairs
their own test compared, not the pairs taken in, so the run keeps its pairs and, after a
rollback, replays them into a fresh `Judge` (deterministic: it reads only the pairs) between the
last two evaluations, pair by pair, for the first FAIL: "pairs to detection" are the canary's
shadow answers up to and including that pair; its seconds, when that pair was complete.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush

import detection as live
from canaryproxy.alerts import Alerter
from canaryproxy.backends.memory import MemoryRolloutStore, SoleLeadership
from canaryproxy.clock import ManualClock
from canaryproxy.control.controller import Controller
from canaryproxy.control.decisions import DecisionRecord
from canaryproxy.control.evidence import Evidence
from canaryproxy.control.follower import Follower
from canaryproxy.core.judge import Judge, JudgeConfig
from canaryproxy.core.rules import RuleEngine
from canaryproxy.core.splitter import Splitter
from canaryproxy.core.stages import Phase, Plan, RolloutState, Stage, shadow_share
from canaryproxy.core.types import Outcome, Role, ShadowPair, Status
from canaryproxy.core.window import Windows

# Each answer's own part of the log-normal spread; the request's part is what remains of live's.
LATENCY_OWN_SIGMA = 0.2
COMPLETION_OWN_SIGMA = 0.3
LATENCY_SHARED_SIGMA = math.sqrt(live.LATENCY_SIGMA**2 - LATENCY_OWN_SIGMA**2)
COMPLETION_SHARED_SIGMA = math.sqrt(live.COMPLETION_SIGMA**2 - COMPLETION_OWN_SIGMA**2)

_BITS = live._NORMAL_BITS
_NORMALS = live._NORMALS
_STABLE, _SHADOW = Role.STABLE, Role.SHADOW


def shadow_plan(setup: live.Setup) -> Plan:
    """One shadow stage held past the horizon (the pairs never run out of time to show a
    regression), then the live stage a plan must end with (never reached in a run)."""
    hold = setup.horizon + live.EVALUATE_EVERY
    stages = (Stage(0.0, hold, shadow=setup.shadow), Stage(setup.weight, hold))
    return Plan(stages, min_requests=100, max_hold=hold)


# --- one second of requests ------------------------------------------------------------------------

# A version's draws during one second: detection.py's `_profile` tuple.
Profile = tuple[float, float, float, float, float, float, float, float]
_ERROR, _LOG_LATENCY, _TAIL, _LOG_TOKENS, _GUARDRAIL, _HARD, _NEGATIVE, _SCHEMA = range(8)


def _events(rand: Callable[[], float], on_stable: float, on_canary: float, shared_share: float) -> tuple[bool, bool]:
    """(stable's, the canary's) event on one request: `shared_share` of the lower rate happens on
    both answers (the prompt's doing), the rest on each answer alone, so each side's rate is its own."""
    shared = shared_share * min(on_stable, on_canary)
    both = rand() < shared
    own_stable = (on_stable - shared) / (1.0 - shared)
    own_canary = (on_canary - shared) / (1.0 - shared)
    return both or rand() < own_stable, both or rand() < own_canary


@dataclass(frozen=True, slots=True)
class _Request:
    """What both answers to one request share."""

    key: int
    started: float
    routed_at: float
    z_latency: float  # the request's part of the latency (load of the moment, prompt), standard normal
    log_prompt: float  # before the version's token scale
    log_completion: float  # before the version's token scale and the answer's own sampling


def _answer(rng: random.Random, role: Role, profile: Profile, request: _Request, failed: bool, guardrail: bool,
            schema_bad: bool | None) -> Outcome:
    """One version's answer to `request`; `schema_bad` None when no schema is checked."""
    bits = rng.getrandbits
    z = (LATENCY_SHARED_SIGMA * request.z_latency + LATENCY_OWN_SIGMA * _NORMALS[bits(_BITS)]) / live.LATENCY_SIGMA
    latency = math.exp(profile[_LOG_LATENCY] + live.LATENCY_SIGMA * z)
    if z > live.TAIL_QUANTILE_Z:
        latency *= profile[_TAIL]
    if failed:
        return Outcome(role, request.started, 0.0, request.key, status=500, latency=latency,
                       routed_at=request.routed_at)
    log_tokens = profile[_LOG_TOKENS]
    completion = round(math.exp(log_tokens + request.log_completion
                                + COMPLETION_OWN_SIGMA * _NORMALS[bits(_BITS)])) or 1
    return Outcome(
        role, request.started, 0.0, request.key, status=200, latency=latency, routed_at=request.routed_at,
        prompt_tokens=round(math.exp(log_tokens + request.log_prompt)) or 1, completion_tokens=completion,
        output_chars=live.CHARS_PER_TOKEN * completion, guardrails=live.GUARDRAIL if guardrail else (),
        schema_ok=None if schema_bad is None else not schema_bad,
    )


@dataclass(slots=True)
class _Traffic:
    """Where one run's requests wait: the users' answers until they complete, pairs until both have."""

    in_flight: list[tuple[float, int, Outcome]]
    pairs_due: list[tuple[float, int, ShadowPair]]
    schema_checked: bool
    shared_events: float


def _start_second(rng: random.Random, population: live.Population, users: Sequence[int], second_start: float,
                  wall_offset: float, shadowed: Callable[[int | None], bool], stable: Profile, canary: Profile,
                  traffic: _Traffic, sequence: int, every_request: bool) -> None:
    """Start one second of requests, all served by stable (weight 0); those the splitter copies to
    the canary become pairs. Without `every_request`, only those are simulated (module docstring)."""
    rand, bits = rng.random, rng.getrandbits
    hashes = population.hashes
    spacing = 1.0 / len(users) if users else 0.0
    shared_share = traffic.shared_events
    for index, user in enumerate(users):
        key = hashes[user]
        copied = shadowed(key)
        if not (copied or every_request):
            continue
        started = second_start + (index + 0.5) * spacing
        request = _Request(
            key, started, started + wall_offset, _NORMALS[bits(_BITS)],
            live._LOG_PROMPT + population.prompt_offsets[user] + live.PROMPT_SIGMA * _NORMALS[bits(_BITS)],
            live._LOG_COMPLETION + population.completion_offsets[user]
            + COMPLETION_SHARED_SIGMA * _NORMALS[bits(_BITS)],
        )
        hard = key % live.HARD_USER_MODULUS == 0
        failed = _events(rand, stable[_ERROR] * (stable[_HARD] if hard else 1.0),
                         canary[_ERROR] * (canary[_HARD] if hard else 1.0), shared_share)
        guardrail = _events(rand, stable[_GUARDRAIL], canary[_GUARDRAIL], shared_share)
        schema: tuple[bool | None, bool | None] = (
            _events(rand, stable[_SCHEMA], canary[_SCHEMA], shared_share) if traffic.schema_checked else (None, None))
        answer = _answer(rng, _STABLE, stable, request, failed[0], guardrail[0], schema[0])
        heappush(traffic.in_flight, (started + answer.latency, sequence + index, answer))
        if copied:
            copy = _answer(rng, _SHADOW, canary, request, failed[1], guardrail[1], schema[1])
            done = started + max(answer.latency, copy.latency)
            heappush(traffic.pairs_due, (done, sequence + index, ShadowPair(answer, copy, key_hash=key)))


# --- one run -----------------------------------------------------------------------------------------


def run_shadow_once(scenario: live.Scenario, setup: live.Setup, run: int, base_seed: int) -> live.RunResult:
    return asyncio.run(_run_once(scenario, setup, run, base_seed))


def _controller(setup: live.Setup, splitter: Splitter, clock: ManualClock, config: JudgeConfig) -> Controller:
    """The product's control plane for one run, with the follower putting the shadow share in force."""
    plan = shadow_plan(setup)

    def apply_shadow(state: RolloutState | None) -> None:  # as server.py's _shadow_share_of
        splitter.set_shadow(0.0 if state is None else shadow_share(state, plan))

    store = MemoryRolloutStore()
    follower = Follower(store, splitter.set_weight, clock.monotonic, apply_shadow=apply_shadow)
    evidence = Evidence(Windows(live.WINDOW), Judge(config))
    return Controller(plan, RuleEngine(()), evidence, store, SoleLeadership(), follower, Alerter([]),
                      DecisionRecord(), clock, live.EVALUATE_EVERY)


async def _run_once(scenario: live.Scenario, setup: live.Setup, run: int, base_seed: int) -> live.RunResult:
    rng = random.Random(live.seed_for(base_seed, scenario.name, run))
    population = live.Population(rng)
    clock = ManualClock()
    start = clock.monotonic()
    wall_offset = clock.wall() - start
    splitter = Splitter(0.0, rng)
    config = live.judge_config(setup)
    controller = _controller(setup, splitter, clock, config)
    evidence, judge = controller.evidence, controller.judge
    assert judge is not None
    await controller.boot()  # start: auto, so the shadow stage's share is in force now

    traffic = _Traffic([], [], scenario.schema, setup.shared_events)
    pairs: list[ShadowPair] = []  # in the order the evidence took them
    pair_times: list[float] = []  # when each was complete
    at_evaluation = [0]  # pairs taken in by each evaluation
    requests = seconds = 0
    next_evaluation = live.EVALUATE_EVERY
    while seconds < int(setup.horizon) and controller.state.phase is Phase.PROGRESSING:
        # The canary has answered since second 0 (a cold start counts from there).
        stable = live._profile(scenario.stable(setup, seconds, seconds))
        canary = live._profile(scenario.canary(setup, seconds, seconds))
        count = math.floor((seconds + 1) * setup.rate) - math.floor(seconds * setup.rate)
        users = rng.choices(population.ids, cum_weights=population.cumulative, k=count)
        _start_second(rng, population, users, start + seconds, wall_offset, splitter.shadowed, stable, canary,
                      traffic, requests, every_request=judge.latency_thresholds is None)
        requests += count
        seconds += 1
        live._finish(traffic.in_flight, start + seconds, evidence.record, [])
        due = traffic.pairs_due
        while due and due[0][0] <= start + seconds:
            t, _, pair = heappop(due)
            evidence.record_pair(pair)
            pairs.append(pair)
            pair_times.append(t)
        if seconds >= next_evaluation:
            clock.advance(start + seconds - clock.monotonic())
            await controller.evaluate()
            at_evaluation.append(len(pairs))
            next_evaluation += live.EVALUATE_EVERY
            if judge.latency_thresholds is not None and not isinstance(evidence.windows, live._NoWindows):
                evidence.windows = live._NoWindows(live.WINDOW)  # nothing reads them in a shadow stage
    return _result(scenario, run, controller, config, pairs, pair_times, at_evaluation, start, seconds, requests)


def _result(scenario: live.Scenario, run: int, controller: Controller, config: JudgeConfig, pairs: Sequence[ShadowPair],
            pair_times: Sequence[float], at_evaluation: Sequence[int], start: float, seconds: int,
            requests: int) -> live.RunResult:
    phase = controller.state.phase
    stopped = phase is not Phase.PROGRESSING
    failing = tuple(v.source for v in controller.verdicts if v.status is Status.FAIL) if stopped else ()
    detect_requests: int | None = None
    detect_seconds: float | None = None
    if failing:
        detect_requests, replayed = first_crossing(config, pairs, at_evaluation[-2], at_evaluation[-1])
        if not replayed <= set(failing):  # others may cross later within the same 10 s
            raise AssertionError(f"the replay failed {sorted(replayed)}, the controller {sorted(failing)}")
        detect_seconds = pair_times[detect_requests - 1] - start
    return live.RunResult(
        scenario=scenario.name, method="shadow", run=run, phase=phase.value,
        sources=failing, detect_requests=detect_requests, detect_seconds=detect_seconds,
        stop_seconds=float(seconds) if stopped else None, canary_requests=len(pairs), requests=requests,
    )


def first_crossing(config: JudgeConfig, pairs: Sequence[ShadowPair], after: int, upto: int) -> tuple[int, set[str]]:
    """The pair (1-based) at which a paired test first failed, found by replaying `pairs` into a
    fresh judge and looking after each of pairs `after` + 1 .. `upto`; and which tests had failed then."""
    judge = Judge(config)
    for pair in pairs[:after]:
        judge.observe_pair(pair)
    for index in range(after, upto):
        judge.observe_pair(pairs[index])
        failed = {v.source for v in judge.shadow_verdicts() if v.status is Status.FAIL}
        if failed:
            return index + 1, failed
    raise AssertionError(f"no paired test failed in the replay of pairs {after + 1}..{upto}: "
                         "the paired tests should depend on the pairs alone")


# --- the report ---------------------------------------------------------------------------------------


def side_by_side(summaries: Sequence[live.Summary]) -> str:
    """The live judge and the shadow stage on each scenario both ran, in one table."""
    found = {(s.scenario, s.method): s for s in summaries}
    lines = [
        "| scenario | live judge: runs, rolled back | canary requests to detection, median (p90) "
        "| seconds, median (p90) | shadow stage: runs, rolled back | pairs to detection, median (p90) "
        "| seconds, median (p90) | live ÷ shadow, median requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    number = live._number
    for name in live.SCENARIOS:
        live_run, shadow_run = found.get((name, "judge")), found.get((name, "shadow"))
        if live_run is None or shadow_run is None:
            continue
        pair = live_run, shadow_run
        cells = []
        for s in pair:
            cells += [f"{s.runs:,}, {s.rollback_rate:.1%}", f"{number(s.requests_median)} ({number(s.requests_p90)})",
                      f"{number(s.seconds_median, 1)} ({number(s.seconds_p90, 1)})"]
        both = pair[0].requests_median, pair[1].requests_median
        ratio = f"{both[0] / both[1]:.2f}" if pair[0].regression and both[0] and both[1] else "–"
        lines.append(f"| {name} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines)
