"""Two canaryproxy builds (or two configs) compared in interleaved rounds, for small differences.

    .venv/bin/python bench/ab.py --a COMMIT --b COMMIT [--rounds 12] [--seconds 3] [--workloads json,sse]
    .venv/bin/python bench/ab.py --b-config '{"feedback": {...}}'      # one build, two configs

On a shared VM the same build measured twice, minutes apart, can differ by a quarter
(bench/README.md), so two separate runs of bench/proxy_overhead.py cannot show a 3% difference.
Here both proxies run at once, pinned to core 0, in front of the same upstream; only one is under
load at a time, in the order A B B A A B B A …, so a drift of the machine's speed during the run
falls on both alike. Each round is one wrk run of `--seconds` after a short warm-up; the number per
round is the proxy's CPU time per request (all its threads, from /proc). The report gives B/A of
the medians and, to say how far that can be trusted, the spread of B/A over the pairs of adjacent
rounds (each pair ran within a few seconds of each other).

A commit is checked out in a temporary worktree (`git worktree add --detach`) and run with
PYTHONPATH pointing at it, with this checkout's venv; removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import payloads
import proxy_overhead as po
from rig import PROXY_CORE, RIG_CORE, Processes, RigError, cpu_seconds, free_port, run_pinned

REPO = po.BENCH_DIR.parent


@dataclass
class Side:
    name: str
    tree: Path  # the checkout whose canaryproxy package runs
    overrides: dict[str, Any]
    port: int = 0
    pid: int = 0
    cpu_us: dict[str, list[float]] = field(default_factory=dict)  # workload -> one number per round
    rates: dict[str, list[float]] = field(default_factory=dict)


@contextlib.contextmanager
def checkout(commit: str | None) -> Iterator[Path]:
    """This checkout for None; otherwise a temporary detached worktree of `commit`."""
    if commit is None:
        yield REPO
        return
    tree = Path(tempfile.mkdtemp(prefix="canaryproxy-ab-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tree), commit],
                   check=True, capture_output=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


def start(side: Side, processes: Processes, stable: int, canary: int, workdir: Path) -> None:
    side.port = free_port()
    config = po._merged(po.canaryproxy_config(po.Ports(stable, canary, side.port)), side.overrides)
    path = workdir / f"{side.name}.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    # -P: `python -m` would otherwise put the current directory first on sys.path, and run from a
    # checkout's root that checkout's canaryproxy on both sides, whatever PYTHONPATH says.
    python = [sys.executable, "-P"]
    imported = subprocess.run([*python, "-c", "import canaryproxy; print(canaryproxy.__file__)"], check=True,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(side.tree)})
    if not Path(imported.stdout.strip()).is_relative_to(side.tree):
        raise RigError(f"{side.name}: canaryproxy imports from {imported.stdout.strip()}, not from {side.tree}")
    os.environ["PYTHONPATH"] = str(side.tree)  # inherited by the one child started next
    try:
        proxy = processes.start(side.name, [*python, "-m", "canaryproxy", "run", "--config", str(path)],
                                PROXY_CORE)
    finally:
        del os.environ["PYTHONPATH"]
    processes.wait_listening(side.name, proxy, side.port)
    po.check_answers(side.name, side.port)
    side.pid = proxy.pid


def start_upstream(processes: Processes) -> tuple[int, int]:
    """The benchmark's upstream (bench/upstream.py) on two free ports, on the rig's core: (stable, canary)."""
    stable, canary = free_port(), free_port()
    upstream = processes.start("upstream", [sys.executable, str(po.BENCH_DIR / "upstream.py"), "--port",
                                            str(stable), "--port", str(canary)], RIG_CORE)
    processes.wait_listening("upstream", upstream, stable)
    processes.wait_listening("upstream", upstream, canary)
    return stable, canary


def one_round(side: Side, workload: str, body_file: Path, args: argparse.Namespace) -> None:
    timeout = args.seconds + 30.0
    run_pinned(po.wrk_command(side.port, body_file, args.connections, 1), RIG_CORE, timeout)  # warm-up
    before = cpu_seconds(side.pid)
    output, _ = run_pinned(po.wrk_command(side.port, body_file, args.connections, args.seconds), RIG_CORE, timeout)
    used = cpu_seconds(side.pid) - before
    result = po.parse_load_result(output)
    if result["errors_status"] or result["errors_connection"]:
        raise RigError(f"{side.name}: errors during a {workload} round: {result}")
    side.cpu_us.setdefault(workload, []).append(used / result["requests"] * 1e6)
    side.rates.setdefault(workload, []).append(result["requests"] / result["duration_s"])


def abba(rounds: int) -> list[int]:
    """0 1 1 0 0 1 1 0 …: every adjacent pair has one of each, and a linear drift cancels."""
    return [(i + 1) // 2 % 2 for i in range(rounds * 2)]


def report(a: Side, b: Side, workloads: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for workload in workloads:
        xa, xb = a.cpu_us[workload], b.cpu_us[workload]
        pair_ratios = sorted(y / x for x, y in zip(xa, xb))
        out[workload] = {
            "a_cpu_us": statistics.median(xa), "b_cpu_us": statistics.median(xb),
            "b_over_a": statistics.median(xb) / statistics.median(xa),
            "pair_ratio_median": statistics.median(pair_ratios),
            "pair_ratio_quartiles": [pair_ratios[len(pair_ratios) // 4], pair_ratios[-1 - len(pair_ratios) // 4]],
            "a_spread": [min(xa), max(xa)], "b_spread": [min(xb), max(xb)],
            "a_req_s": statistics.median(a.rates[workload]), "b_req_s": statistics.median(b.rates[workload]),
        }
        r = out[workload]
        print(f"{workload}: CPU µs/req A {r['a_cpu_us']:.1f} (rounds {min(xa):.0f}-{max(xa):.0f}), "
              f"B {r['b_cpu_us']:.1f} (rounds {min(xb):.0f}-{max(xb):.0f}); B/A {r['b_over_a']:.3f}, "
              f"pairs: median {r['pair_ratio_median']:.3f}, quartiles {r['pair_ratio_quartiles'][0]:.3f}-"
              f"{r['pair_ratio_quartiles'][1]:.3f}; req/s A {r['a_req_s']:,.0f} B {r['b_req_s']:,.0f}")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Interleaved A/B of two canaryproxy builds or configs.")
    parser.add_argument("--a", help="commit for A (default: this checkout)")
    parser.add_argument("--b", help="commit for B (default: this checkout)")
    parser.add_argument("--b-config", default="{}", help="JSON merged into B's config (A runs the default)")
    parser.add_argument("--a-config", default="{}", help="JSON merged into A's config")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per side and workload (default 12)")
    parser.add_argument("--seconds", type=int, default=3, help="measured seconds per round (default 3)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workloads", default="json,sse", help="of: " + ",".join(payloads.WORKLOADS))
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in args.workloads if w not in payloads.WORKLOADS]
    if unknown or args.rounds < 2 or args.seconds < 1:
        parser.error(f"unknown workload {unknown}, or --rounds < 2, or --seconds < 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, po._interrupt)
    os.sched_setaffinity(0, {RIG_CORE})
    workdir = Path(tempfile.mkdtemp(prefix="canaryproxy-ab-run-"))
    with checkout(args.a) as tree_a, checkout(args.b) as tree_b, Processes(workdir) as processes:
        a = Side("A", tree_a, json.loads(args.a_config))
        b = Side("B", tree_b, json.loads(args.b_config))
        body_files = {}
        for workload in args.workloads:
            body_files[workload] = workdir / f"{workload}.json"
            body_files[workload].write_bytes(payloads.WORKLOADS[workload])
        stable, canary = start_upstream(processes)
        try:
            for side in (a, b):
                start(side, processes, stable, canary, workdir)
            for workload in args.workloads:
                for index in abba(args.rounds):
                    one_round((a, b)[index], workload, body_files[workload], args)
        except (RigError, KeyboardInterrupt) as exc:
            print(f"ab: {exc}\nlogs in {workdir}", file=sys.stderr)
            return 1
    print(f"A: {args.a or 'this checkout'} {args.a_config}; B: {args.b or 'this checkout'} {args.b_config}; "
          f"{args.rounds} rounds x {args.seconds} s per side and workload, order ABBA")
    results = report(a, b, args.workloads)
    if args.json:
        args.json.write_text(json.dumps({"a": args.a, "b": args.b, "a_config": args.a_config,
                                         "b_config": args.b_config, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
