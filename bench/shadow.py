"""What a shadow stage costs the user: stable's latency with every request copied to the canary,
against the same proxy without a shadow stage, in one run.

    .venv/bin/python bench/shadow.py [--rate 200] [--duration 10] [--rounds 2] [--json FILE]

`canaryproxy run` pinned to core 0 in front of bench/upstream.py (stable and canary, core 1), the
client on core 1 too. Two setups, alternated `--rounds` times so that the machine's drift falls
on both alike:

* `off`: weight 0, no rollout: every request to stable, nothing copied;
* `shadow-100`: a plan whose first stage is `{shadow: 100}`: every request is served by stable
  and also copied to the canary (whose answer is read, inspected and paired, never sent).

Each round paces JSON requests at `--rate` per second (latency: request sent -> last byte), then
SSE streams at half that rate (time to the first event, and to the end), 16 keep-alive connections,
each a distinct sticky user. Reported per setup: p50 and p99 of each, and the proxy's CPU per
request (its CPU seconds over the paced run / requests). Then the two setups at saturation
(bench/proxy_overhead.py's machinery, wrk): req/s and CPU per request, whose difference is what
one shadow copy costs the proxy when it is busy. Numbers: bench/README.md, "Shadow".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

import payloads  # noqa: E402
import proxy_overhead as po  # noqa: E402
from rig import PROXY_CORE, RIG_CORE, Processes, RigError, cpu_seconds, free_port  # noqa: E402

CONNECTIONS = 16
SHADOW_PLAN = {"rollout": {"start": "auto", "stages": [{"shadow": 100, "hold": "1h"}, {"weight": 5, "hold": "1h"}],
                           "min_requests": 1_000_000_000, "max_hold": "2h", "evaluate_every": "1s",
                           "judge": {"enabled": True}}}


def config(listen: int, stable: int, canary: int, shadow: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "listen": f"127.0.0.1:{listen}", "admin": {"listen": "127.0.0.1:0"}, "access_log": True,
        "upstreams": {"stable": f"http://127.0.0.1:{stable}", "canary": f"http://127.0.0.1:{canary}"},
        "routing": {"weight": 0},
    }
    return {**document, **SHADOW_PLAN} if shadow else document


async def paced(port: int, body: bytes, rate: float, duration: float, stream: bool) -> dict[str, list[float]]:
    """Requests on a fixed schedule over CONNECTIONS connections; seconds to the first body byte
    and to the end of each."""
    first, whole = [], []
    interval = CONNECTIONS / rate
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as client:
        async def connection(i: int) -> None:
            start = time.perf_counter() + interval * i / CONNECTIONS
            deadline = time.perf_counter() + duration
            user = i
            while start < deadline:
                await asyncio.sleep(max(0.0, start - time.perf_counter()))
                sent = time.perf_counter()
                async with client.post(url, data=body, headers={"Content-Type": "application/json",
                                                                "x-user-id": f"user-{user}"}) as response:
                    await response.content.readany()
                    first.append(time.perf_counter() - sent)
                    await response.read()
                    whole.append(time.perf_counter() - sent)
                    if response.status != 200:
                        raise RigError(f"status {response.status}")
                user += CONNECTIONS
                start += interval

        await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    return {"first": first, "whole": whole}


def quantiles_ms(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return (statistics.median(ordered) * 1000, ordered[round(0.99 * (len(ordered) - 1))] * 1000)


def one_setup(name: str, shadow: bool, args: argparse.Namespace, processes: Processes, workdir: Path,
              stable: int, canary: int) -> dict[str, Any]:
    listen = free_port()
    path = workdir / f"{name}.yaml"
    path.write_text(json.dumps(config(listen, stable, canary, shadow)))
    proxy = processes.start(name, [sys.executable, "-m", "canaryproxy", "run", "--config", str(path)], PROXY_CORE)
    try:
        processes.wait_listening(name, proxy, listen)
        result: dict[str, Any] = {}
        for workload, body, rate in (("json", payloads.JSON_REQUEST_BODY, args.rate), ("sse", payloads.SSE_REQUEST_BODY, args.rate / 2)):
            asyncio.run(paced(listen, body, rate, 2.0, workload == "sse"))  # warm-up
            before = cpu_seconds(proxy.pid)
            times = asyncio.run(paced(listen, body, rate, args.duration, workload == "sse"))
            cpu = cpu_seconds(proxy.pid) - before
            result[workload] = {"requests": len(times["whole"]), "first_ms": quantiles_ms(times["first"]),
                                "whole_ms": quantiles_ms(times["whole"]),
                                "cpu_us_per_request": cpu / len(times["whole"]) * 1e6}
        return result
    finally:
        processes.stop(proxy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="JSON requests/s (SSE at half); default 200")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per paced run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="off/on alternations (default 2)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="canaryproxy-shadow-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        with Processes(workdir) as processes:
            stable, canary = free_port(), free_port()
            upstream = processes.start("upstream", [sys.executable, str(BENCH_DIR / "upstream.py"), "--port",
                                                    str(stable), "--port", str(canary)], RIG_CORE)
            processes.wait_listening("upstream", upstream, canary)
            for round_ in range(1, args.rounds + 1):
                for name, shadow in (("off", False), ("shadow-100", True)):
                    rows.append({"round": round_, "setup": name, **one_setup(name, shadow, args, processes,
                                                                            workdir, stable, canary)})
                    print_row(rows[-1])
    except RigError as exc:
        print(f"shadow: {exc}; logs in {workdir}", file=sys.stderr)
        return 1
    print_summary(rows)
    try:
        saturated = at_saturation(args, workdir)
    except RigError as exc:
        print(f"shadow: {exc}; logs in {workdir}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps({"paced": rows, "saturated": [m.__dict__ for m in saturated]}, indent=2))
    return 0


def at_saturation(args: argparse.Namespace, workdir: Path) -> list[po.Measurement]:
    """JSON and SSE closed-loop through both setups (wrk, proxy on core 0): the CPU a copy costs."""
    off = {"routing": {"weight": 0}}
    setups = [po.canaryproxy_setup("off", "weight 0, no rollout", off),
              po.canaryproxy_setup("shadow-100", "a shadow stage copying every request", {**off, **SHADOW_PLAN})]
    settings = po.RunSettings(CONNECTIONS, int(args.duration), 1, po.wrk_command, "wrk", paced_rate=1000.0)
    report = po.Report(started=time.strftime("%Y-%m-%d %H:%M %Z"), machine=po.machine_facts(),
                       settings={"connections": CONNECTIONS, "duration": args.duration, "warmup": 1,
                                 "load_generator": "wrk", "setups": [s.name for s in setups]})
    if not po.run(setups, settings, workdir, report):
        raise RigError(f"a setup failed: {report.skipped}")
    print(report.text([]))
    return report.measurements


def print_row(row: dict[str, Any]) -> None:
    j, s = row["json"], row["sse"]
    print(f"round {row['round']} {row['setup']:<11} JSON p50/p99 {j['whole_ms'][0]:.2f}/{j['whole_ms'][1]:.2f} ms "
          f"{j['cpu_us_per_request']:.0f} µs CPU/req | SSE first event p50/p99 {s['first_ms'][0]:.2f}/"
          f"{s['first_ms'][1]:.2f} ms, end {s['whole_ms'][0]:.2f}/{s['whole_ms'][1]:.2f} ms "
          f"{s['cpu_us_per_request']:.0f} µs CPU/stream ({j['requests']} + {s['requests']} requests)", flush=True)


def print_summary(rows: list[dict[str, Any]]) -> None:
    def mean(setup: str, workload: str, key: str, index: int | None = None) -> float:
        values = [r[workload][key] if index is None else r[workload][key][index] for r in rows if r["setup"] == setup]
        return statistics.fmean(values)

    for workload, key in (("json", "whole_ms"), ("sse", "first_ms")):
        added = mean("shadow-100", workload, key, 0) - mean("off", workload, key, 0)
        cpu = mean("shadow-100", workload, "cpu_us_per_request") - mean("off", workload, "cpu_us_per_request")
        what = "JSON latency" if workload == "json" else "SSE time to first event"
        print(f"{what}: p50 added by shadowing every request {added:+.3f} ms (goal <= +0.1 ms); "
              f"p99 {mean('off', workload, key, 1):.2f} -> {mean('shadow-100', workload, key, 1):.2f} ms; "
              f"proxy CPU per shadowed request +{cpu:.0f} µs")


if __name__ == "__main__":
    sys.exit(main())
