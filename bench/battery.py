"""The long black-box battery: real `python -m canaryproxy run` processes against real upstreams
on 127.0.0.1, printing one table of counts and figures.

    .venv/bin/python bench/battery.py --all [--quick] [--json FILE]
    .venv/bin/python bench/battery.py --soak --soak-minutes 30 --rate 300
    .venv/bin/python bench/battery.py --streams --slowloris --sigterm --kill9 --kill9-count 100
    .venv/bin/python bench/battery.py --slow-reader

Modes (each by its flag; `--quick` shrinks every one to seconds, for a smoke run):
  --soak         steady JSON + SSE load past the longest window, RSS every 30 s (battery_soak.py)
  --streams      500+ concurrent SSE streams through one proxy (battery_streams.py)
  --slowloris    500 connections trickling headers while real traffic is measured (battery_slowloris.py)
  --sigterm      SIGTERM with 200 streams in flight: each finishes or is cut detectably; exit code
  --kill9        kill -9 x N during a rollout: the state resumes exactly after each (battery_kill.py)
  --slow-reader  clients that stop reading large streams; RSS and tracemalloc before and after
                 (battery_slowreader.py; issue 10 item 8)

Not part of the test suite: it runs for minutes (the soak for half an hour). Linux only (taskset,
/proc). The proxy runs on core 0, the upstream and the clients on core 1, as in proxy_overhead.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from battery_common import Row
from rig import RIG_CORE, RigError

MODES = ("soak", "streams", "slowloris", "sigterm", "kill9", "slow_reader")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="canaryproxy's long black-box battery (one table)")
    for mode in MODES:
        flag = "--" + mode.replace("_", "-")
        parser.add_argument(flag, action="store_true", dest=mode, help=f"run the {mode} mode")
    parser.add_argument("--all", action="store_true", help="every mode")
    parser.add_argument("--quick", action="store_true", help="seconds per mode instead of minutes (smoke run)")
    parser.add_argument("--soak-minutes", type=float, default=None, help="soak length (default 30; --quick 1)")
    parser.add_argument("--rate", type=float, default=300.0, help="soak requests/s, JSON + SSE (default 300)")
    parser.add_argument("--sse-share", type=float, default=0.2, help="share of the soak rate that is SSE (0.2)")
    parser.add_argument("--streams-count", type=int, default=None, help="concurrent streams (default 600)")
    parser.add_argument("--slowloris-connections", type=int, default=None, help="trickling connections (500)")
    parser.add_argument("--sigterm-streams", type=int, default=None, help="streams in flight at SIGTERM (200)")
    parser.add_argument("--kill9-count", type=int, default=None, help="kill -9 rounds (default 100; --quick 5)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON to FILE")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory after a clean run")
    args = parser.parse_args(argv)
    selected = [mode for mode in MODES if getattr(args, mode) or args.all]
    if not selected:
        parser.error("choose at least one mode (--soak, --streams, ...) or --all")
    if args.rate <= 0 or not 0 <= args.sse_share <= 1:
        parser.error("--rate must be positive and --sse-share within 0..1")
    for name in ("soak_minutes", "streams_count", "slowloris_connections", "sigterm_streams", "kill9_count"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    args.selected = selected
    return args


def _default(value: float | None, full: float, quick: float, is_quick: bool) -> float:
    return value if value is not None else (quick if is_quick else full)


def runners(args: argparse.Namespace) -> dict[str, Callable[[Path], list[Row]]]:
    """The run function of each mode, its sizes taken from the arguments (full or --quick)."""
    q = args.quick

    def soak(workdir: Path) -> list[Row]:
        from battery_soak import SoakSettings, run_soak

        minutes = _default(args.soak_minutes, 30, 1, q)
        settings = SoakSettings(minutes * 60, args.rate, args.sse_share, sample_every_s=5 if q else 30)
        return run_soak(workdir, settings, workdir / "soak-samples.json")

    def streams(workdir: Path) -> list[Row]:
        from battery_streams import run_concurrent_streams

        return run_concurrent_streams(workdir, int(_default(args.streams_count, 600, 100, q)))

    def slowloris(workdir: Path) -> list[Row]:
        from battery_slowloris import run_slowloris

        return run_slowloris(workdir, int(_default(args.slowloris_connections, 500, 100, q)),
                             seconds=10 if q else 60)

    def sigterm(workdir: Path) -> list[Row]:
        from battery_streams import run_sigterm

        return run_sigterm(workdir, int(_default(args.sigterm_streams, 200, 50, q)))

    def kill9(workdir: Path) -> list[Row]:
        from battery_kill import run_kill9

        return run_kill9(workdir, int(_default(args.kill9_count, 100, 5, q)))

    def slow_reader(workdir: Path) -> list[Row]:
        from battery_slowreader import run_slow_reader

        return run_slow_reader(workdir, readers=50 if q else 200)

    return {"soak": soak, "streams": streams, "slowloris": slowloris, "sigterm": sigterm,
            "kill9": kill9, "slow_reader": slow_reader}


def format_table(rows: Sequence[Row]) -> str:
    verdict = {True: "held", False: "FAILED", None: "-"}
    widths = (11, max((len(r.what) for r in rows), default=4), max((len(r.counts) for r in rows), default=6), 6)
    head = ("mode", "what", "counts", "result")
    lines = ["  ".join(f"{h:<{w}}" for h, w in zip(head, widths)) + "  figures"]
    for r in rows:
        cells = (r.mode, r.what, r.counts, verdict[r.held])
        lines.append("  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)) + "  " + r.figures)
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("taskset") is None:
        print("battery: taskset is missing (util-linux)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    os.sched_setaffinity(0, {RIG_CORE})  # keep the clients of this script off the proxy's core
    workdir = Path(tempfile.mkdtemp(prefix="canaryproxy-battery-"))
    print(f"battery: logs and configs in {workdir}", file=sys.stderr)
    rows: list[Row] = []
    failed = False
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    run = runners(args)
    try:
        for mode in args.selected:
            mode_dir = workdir / mode
            mode_dir.mkdir()
            try:
                rows += run[mode](mode_dir)
            except RigError as exc:
                failed = True
                rows.append(Row(mode, "did not complete", "-", str(exc).splitlines()[0][:160], False))
                print(f"battery: {mode} failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"battery: interrupted; every started process was stopped; logs in {workdir}", file=sys.stderr)
        return 130
    print(f"canaryproxy battery, {started}{' (--quick)' if args.quick else ''}")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    failed = failed or any(r.held is False for r in rows)
    if failed or args.keep_logs:
        print(f"battery: logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
