"""How fast could any test catch an error-rate regression? The oracle behind the detection goals.

    .venv/bin/python bench/detection_oracle.py [--runs 1000] [--weight 5] [--base-error 0.01]
        [--alphas 0.006,0.01]

For the feedback tests, the events are negative ratings: `--base-error 0.00495` (5% of the 99%
successful answers rated, 10% of those negative) `--alphas 0.001` (the feedback test's share).

A sequential probability ratio test (SPRT) that is *told* the true ratio r is the fastest test of
"canary no worse" against "canary r× worse" at a given α (Wald–Wolfowitz): no real judge, which
must cover every r at once, can beat it. Two oracles, per canary request at weight w, with stable
serving (1 − w)/w requests alongside:

* label SPRT — the judge's own statistic (which version served each failure) with r known;
* known-stable SPRT — stable's failure rate known exactly, so only the canary's requests count.

It prints the median and p90 canary requests to reject, at the judge's share of α for errors and
at the whole family α. bench/README.md compares them with the judge (section Detection).
No sockets, no product code: a few seconds of one core.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics


def canary_share(w: float, ratio: float) -> float:
    return w * ratio / (w * ratio + 1.0 - w)


def requests_to_reject(rng: random.Random, w: float, base: float, ratio: float, alpha: float,
                       known_stable: bool, limit: int) -> int:
    stable_per_canary = round((1.0 - w) / w)
    threshold = math.log(1.0 / alpha)
    theta0, theta1 = canary_share(w, 1.0), canary_share(w, ratio)
    canary_step = math.log(ratio) if known_stable else math.log(theta1 / theta0)
    if known_stable:
        quiet_step, stable_step = math.log((1.0 - base * ratio) / (1.0 - base)), 0.0
    else:
        quiet_step, stable_step = 0.0, math.log1p(-theta1) - math.log1p(-theta0)
    llr = 0.0
    for n in range(1, limit + 1):
        llr += canary_step if rng.random() < base * ratio else quiet_step
        if stable_step:
            for _ in range(stable_per_canary):
                if rng.random() < base:
                    llr += stable_step
        if llr >= threshold:
            return n
    return limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--weight", type=float, default=5.0, help="canary percent")
    parser.add_argument("--base-error", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alphas", default="0.006,0.01",
                        help="comma-separated: the judge's share for errors and the family α by default")
    args = parser.parse_args()
    alphas = [float(alpha) for alpha in args.alphas.split(",") if alpha.strip()]
    rng = random.Random(args.seed)
    w = args.weight / 100.0
    print(f"oracle SPRTs, weight {args.weight:g}%, stable failure rate {args.base_error:g}, {args.runs:,} runs each")
    print("| errors | α | label SPRT median (p90) | known-stable SPRT median (p90) |")
    print("|---|---:|---:|---:|")
    for ratio in (2.0, 3.0):
        for alpha in alphas:
            row = []
            for known_stable in (False, True):
                counts = sorted(
                    requests_to_reject(rng, w, args.base_error, ratio, alpha, known_stable, 200_000)
                    for _ in range(args.runs)
                )
                p90 = counts[int(0.9 * len(counts)) - 1]
                row.append(f"{statistics.median(counts):,.0f} ({p90:,})")
            print(f"| x{ratio:g} | {alpha:g} | {row[0]} | {row[1]} |")


if __name__ == "__main__":
    main()
