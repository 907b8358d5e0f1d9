"""The cost of `Judge.observe` per request, on a stream like the detection benchmark's.

    nice -n 10 .venv/bin/python bench/judge_observe.py [--keyless] [--repeat 40]

5,000 Zipf users (or no sticky keys with --keyless: every request is then an amount sample), 5%
canary, 1% failures, lognormal latency and tokens, the latency thresholds set. The judge first
takes 40,000 requests (past the warm-up, most keys seen: the steady state), then the next 20,000
are timed `--repeat` times with the process's CPU time; the best run is reported, in ns per
request. On a shared machine compare runs interleaved, or count instructions
(`valgrind --tool=callgrind`, the difference between --repeat 3 and --repeat 0).
"""

from __future__ import annotations

import argparse
import math
import random
import time

from canaryproxy.core.judge import Judge
from canaryproxy.core.types import Outcome, Role

USERS = 5_000


def stream(requests: int, keyed: bool, seed: int = 1) -> list[Outcome]:
    rng = random.Random(seed)
    cumulative, total = [], 0.0
    for rank in range(1, USERS + 1):
        total += 1 / rank
        cumulative.append(total)
    hashes = [rng.getrandbits(64) for _ in range(USERS)]
    on_canary = {key for key in hashes if rng.random() < 0.05}
    outcomes = []
    for i in range(requests):
        started = 1000.0 + i / 100.0
        if keyed:
            key: int | None = hashes[rng.choices(range(USERS), cum_weights=cumulative)[0]]
            canary = key in on_canary
        else:
            key, canary = None, rng.random() < 0.05
        role = Role.CANARY if canary else Role.STABLE
        latency = 2.0 * math.exp(0.35 * rng.gauss(0, 1))
        if rng.random() < 0.01:
            outcome = Outcome(role, started, 5.0, key, status=500, latency=latency, routed_at=started)
        else:
            completion = round(250 * math.exp(0.6 * rng.gauss(0, 1))) or 1
            outcome = Outcome(
                role, started, 5.0, key, status=200, latency=latency, routed_at=started,
                prompt_tokens=round(400 * math.exp(0.5 * rng.gauss(0, 1))) or 1, completion_tokens=completion,
                output_chars=4 * completion, guardrails=("moderation",) if rng.random() < 0.005 else (),
            )
        outcomes.append(outcome)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keyless", action="store_true", help="no sticky keys: every request is sampled")
    parser.add_argument("--repeat", type=int, default=40, help="timed passes over 20,000 requests")
    args = parser.parse_args()
    outcomes = stream(60_000, keyed=not args.keyless)
    judge = Judge()
    judge.set_latency_thresholds(3.56, 4.5)
    for outcome in outcomes[:40_000]:
        judge.observe(outcome)
    timed, observe, best = outcomes[40_000:], judge.observe, math.inf
    for _ in range(args.repeat):
        began = time.process_time()
        for outcome in timed:
            observe(outcome)
        best = min(best, time.process_time() - began)
    if args.repeat:
        kind = "keyless" if args.keyless else "keyed"
        print(f"{kind}: {best / len(timed) * 1e9:,.0f} ns per observe (best of {args.repeat})")


if __name__ == "__main__":
    main()
