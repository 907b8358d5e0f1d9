"""Several canaryproxy variants side by side: what each part costs where it runs.

    .venv/bin/python bench/ablate.py full 'noinsp={"inspection": {"enabled": false}}' \
        'nolog={"access_log": false}' nosink@/tmp/copy-without-sinks [--rounds 8] [--workload json]

A variant is NAME (this checkout, the default config of proxy_overhead.py), NAME=JSON (that
config with JSON merged in), NAME@TREE (the canaryproxy package of another checkout, or of a copy
of this one with one part cut out: a sink that returns at once, a `finish` that reads nothing) or
NAME@TREE=JSON (the first `=` starts the JSON: a TREE path must not hold one). The first variant
is the base the others are compared with.

Why not a profile: on this VM py-spy's blocking sampler lands at system calls far more often than
elsewhere, and a function's microbenchmark understates it two to three times (cold code and data
between requests; bench/README.md, "The features' price, measured in place"). Taking a part out
and measuring the difference is what says what it costs. Every variant runs at once, pinned to
core 0 in front of one upstream; one is under load at a time, in an order reversed every round,
so a drift of the machine's speed falls on all alike. Reported per variant: the median CPU per
request, and the median (quartiles) of its ratio to the base over the rounds, each ratio between
runs seconds apart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ab
import payloads
import proxy_overhead as po
from rig import RIG_CORE, Processes, RigError


_NAME = re.compile(r"[\w.-]+")  # also the name of its config file


def parse_variant(text: str) -> ab.Side:
    """NAME, NAME=JSON, NAME@TREE or NAME@TREE=JSON as a side of the comparison."""
    head, _, config = text.partition("=")
    name, _, tree = head.partition("@")
    if not _NAME.fullmatch(name):
        raise ValueError(f"variant {text!r}: a name of letters, digits, '.', '_' or '-' first")
    try:
        overrides = json.loads(config) if config else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"variant {name}: its config is not JSON ({exc.msg})") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"variant {name}: its config must be a JSON object")
    path = Path(tree).resolve() if tree else ab.REPO
    if not (path / "canaryproxy" / "__init__.py").is_file():
        raise ValueError(f"variant {name}: {path} holds no canaryproxy package")
    return ab.Side(name, path, overrides)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(lower, median, upper), the outer two as many places from each end."""
    ordered = sorted(values)
    return ordered[len(ordered) // 4], statistics.median(ordered), ordered[-1 - len(ordered) // 4]


def report(sides: Sequence[ab.Side], workload: str) -> None:
    base = sides[0].cpu_us[workload]
    for side in sides:
        cpu = side.cpu_us[workload]
        low, middle, high = quartiles([mine / theirs for mine, theirs in zip(cpu, base)])
        print(f"{side.name:24s} CPU {statistics.median(cpu):6.1f} µs/req (rounds {min(cpu):.0f}-{max(cpu):.0f})  "
              f"x{middle:.3f} of {sides[0].name} ({low:.3f}-{high:.3f})  "
              f"req/s {statistics.median(side.rates[workload]):,.0f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="canaryproxy variants side by side (see the docstring).")
    parser.add_argument("variants", nargs="+", help="NAME[@TREE][=JSON]; the first is the base")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3, help="measured seconds per round and variant")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workload", default="json", choices=sorted(payloads.WORKLOADS))
    args = parser.parse_args(argv)
    try:
        sides = [parse_variant(text) for text in args.variants]
    except ValueError as exc:
        parser.error(str(exc))
    if len({side.name for side in sides}) != len(sides) or args.rounds < 2:
        parser.error("variant names must differ, and --rounds be at least 2")
    signal.signal(signal.SIGTERM, po._interrupt)
    os.sched_setaffinity(0, {RIG_CORE})
    workdir = Path(tempfile.mkdtemp(prefix="canaryproxy-ablate-"))
    body = workdir / "body.json"
    body.write_bytes(payloads.WORKLOADS[args.workload])
    with Processes(workdir) as processes:
        stable, canary = ab.start_upstream(processes)
        try:
            for side in sides:
                ab.start(side, processes, stable, canary, workdir)
            for round_number in range(args.rounds):
                for side in sides if round_number % 2 == 0 else sides[::-1]:
                    ab.one_round(side, args.workload, body, args)
        except (RigError, KeyboardInterrupt) as exc:
            print(f"ablate: {exc}\nlogs in {workdir}", file=sys.stderr)
            return 1
    print(f"{args.workload}: {args.rounds} rounds x {args.seconds} s per variant, order reversed every round")
    report(sides, args.workload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
