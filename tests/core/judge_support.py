"""What the judge's tests share: configs with chosen tests, requests, streams, and readers.

Reference numbers in the tests were computed once with scipy/numpy (not a project dependency);
each carries the expression that produced it. Random streams use fixed seeds, so every test is
deterministic.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

from canaryproxy.core.judge import DEFAULT_TESTS, Judge, JudgeConfig, TestConfig
from canaryproxy.core.splitter import Splitter
from canaryproxy.core.types import Outcome, Role

# The defaults behind the reference numbers: alternatives r = geomspace(1.4, 40, 16) for r0 = 1
# with prior weights π ∝ 1/r; th = lambda q, r: q*r/(q*r + 1 - q). Requests form blocks of 100
# (closed early by a weight change or a verdict); a block with n_c canary and n_s stable requests,
# both > 0, and e_c, e_s events adds e_c*log(th(q, r)/q) + e_s*log((1 - th(q, r))/(1 - q)),
# q = n_c/(n_c + n_s), to each log L_r; log e = log(sum(π * exp(log L))).
ERRORS_THRESHOLD = 1 / 0.006


def only(*names: str, tests: dict[str, TestConfig] | None = None, **settings) -> JudgeConfig:
    """A config with just the named tests enabled: at their default settings unless in `tests`.

    No warm-up unless asked for: the statistics are checked on a warm canary; the warm-up has
    tests of its own.
    """
    chosen = {**DEFAULT_TESTS, **(tests or {})}
    enabled = {name: dataclasses.replace(test, enabled=name in names) for name, test in chosen.items()}
    settings.setdefault("warmup_seconds", 0.0)
    return JudgeConfig(tests=enabled, **settings)


def request(canary: bool, weight: float = 5.0, **fields) -> Outcome:
    fields.setdefault("status", 200)
    fields.setdefault("started", 0.0)
    return Outcome(role=Role.CANARY if canary else Role.STABLE, weight=weight, **fields)


def error(canary: bool, weight: float = 5.0, **fields) -> Outcome:
    return request(canary, weight, status=500, **fields)


def feed(judge: Judge, outcomes) -> None:
    for outcome in outcomes:
        judge.observe(outcome)


def verdict(judge: Judge, name: str):
    (found,) = [v for v in judge.verdicts() if v.source == f"judge:{name}"]
    return found


def now(judge: Judge, name: str) -> dict:
    return judge.summary()["tests"][name]["now"]


def traffic(seed: int, weight: float, ratio: float, requests: int, failure_rate: float = 0.1,
            canary_share: float | None = None):
    """Requests at `weight`, a share of them the canary's (the weight's unless given: sticky users
    make it differ); each fails with `failure_rate`, on the canary `ratio` times as often."""
    rng = random.Random(seed)
    share = weight / 100 if canary_share is None else canary_share
    for _ in range(requests):
        canary = rng.random() < share
        failed = rng.random() < failure_rate * (ratio if canary else 1.0)
        yield request(canary, weight, status=500 if failed else 200)


def rollout(seed: int, requests: int, error_factor: float = 1.0, users: int = 3_000,
            stages: tuple[float, ...] = (10.0, 30.0)) -> list[Outcome]:
    """A rollout's requests as the judge sees them: 100 per second (`routed_at`), the weight rising
    through `stages` (equal shares of the requests, each rise a warm-up), half of them from sticky
    Zipf users routed by the real splitter, half without a key; 1% failures on stable, `error_factor`
    times that on the canary; lognormal latency, tokens per user, guardrail interventions."""
    rng = random.Random(seed)
    splitter = Splitter(stages[0], rng)
    hashes = [rng.getrandbits(64) for _ in range(users)]
    offsets = [rng.gauss(0.0, 0.4) for _ in range(users)]
    cumulative = list(itertools.accumulate(1.0 / rank for rank in range(1, users + 1)))
    outcomes = []
    for i in range(requests):
        splitter.set_weight(stages[i * len(stages) // requests])
        user = rng.choices(range(users), cum_weights=cumulative)[0] if rng.random() < 0.5 else None
        key = None if user is None else hashes[user]
        role = splitter.choose(key)
        fields = {"routed_at": 1_800_000_000.0 + i / 100, "latency": rng.lognormvariate(0.7, 0.35)}
        if rng.random() < 0.01 * (error_factor if role is Role.CANARY else 1.0):
            fields["status"] = 500
        else:
            completion = round(250 * math.exp((offsets[user] if user is not None else 0.0) + rng.gauss(0, 0.5)))
            fields.update(prompt_tokens=400, completion_tokens=completion, output_chars=4 * completion,
                          guardrails=("moderation",) if rng.random() < 0.005 else ())
        outcomes.append(request(role is Role.CANARY, splitter.weight, key_hash=key, **fields))
    return outcomes
