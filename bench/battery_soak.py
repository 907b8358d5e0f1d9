"""Soak: canaryproxy under steady JSON + SSE load for longer than its longest window, RSS sampled.

The windows hold `windows.span` (15 minutes by default) of one-second buckets, so memory may grow
for that long as the ring fills; after that every structure the proxy keeps is bounded and RSS
must be flat. The verdict reads the slope over the last third of the samples (all past the
window when the run lasts at least 1.5 windows: 22.5 minutes for 15-minute windows).

A rollout runs throughout (one long stage at weight 10), so the controller, the rules and the
sequential judge work on every evaluation, as in production.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from battery_common import BENCH_DIR, Row, log, new_proxy, rss_mb, slope_mb_per_10min, start_upstream
from loadgen import RESULT_PREFIX
from rig import RIG_CORE, Processes, RigError, cpu_seconds

# Flat means: less than this growth per 10 minutes over the last third of the run.
FLAT_MB_PER_10MIN = 1.0
WINDOW_SPAN_S = 15 * 60  # windows.span in config/example.yaml and the default; the longest window


@dataclass(frozen=True)
class SoakSettings:
    duration_s: float
    rate: float  # requests/s, JSON and SSE together
    sse_share: float  # share of the rate that is SSE streams
    sample_every_s: float = 30.0
    connections: int = 16  # per workload


def soak_rollout() -> dict[str, object]:
    return {"rollout": {"start": "auto", "stages": [{"weight": 10, "hold": "3h"}, {"weight": 100, "hold": "1h"}],
                        "min_requests": 100, "max_hold": "4h", "evaluate_every": "10s"}}


def _loadgen(processes: Processes, name: str, port: int, body_file: Path, connections: int,
             seconds: float, rate: float) -> object:
    argv = [sys.executable, str(BENCH_DIR / "loadgen.py"), "--port", str(port), "--body-file", str(body_file),
            "--connections", str(connections), "--duration", str(seconds), "--rate", str(rate)]
    return processes.start(name, argv, RIG_CORE)


def _result(processes: Processes, name: str) -> dict[str, float]:
    for line in processes.log_path(name).read_text(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, float] = json.loads(line[len(RESULT_PREFIX):])
            return result
    raise RigError(f"{name} printed no result line:\n{processes.log_tail(name)}")


def run_soak(workdir: Path, settings: SoakSettings, samples_file: Path | None = None) -> list[Row]:
    import payloads

    bodies = {}
    for workload, body in payloads.WORKLOADS.items():
        bodies[workload] = workdir / f"{workload}-request.json"
        bodies[workload].write_bytes(body)
    with Processes(workdir) as processes:
        stable, canary, _ = start_upstream(processes)
        proxy = new_proxy(processes, workdir, stable, canary, "soak-proxy", soak_rollout())
        pid = proxy.process.pid
        sse_rate = settings.rate * settings.sse_share
        generators = {
            "soak-json": _loadgen(processes, "soak-json", proxy.port, bodies["json"], settings.connections,
                                  settings.duration_s, settings.rate - sse_rate),
            "soak-sse": _loadgen(processes, "soak-sse", proxy.port, bodies["sse"], settings.connections,
                                 settings.duration_s, sse_rate),
        }
        started = time.monotonic()
        samples: list[tuple[float, float]] = [(0.0, rss_mb(pid))]
        cpu_start, cpu_last, at_last = cpu_seconds(pid), cpu_seconds(pid), started
        log(f"soak: {settings.duration_s:.0f} s at {settings.rate:g} req/s ({sse_rate:g} SSE), "
            f"proxy pid {pid}, RSS {samples[0][1]:.1f} MB")
        next_sample = started + settings.sample_every_s
        while any(g.poll() is None for g in generators.values()):  # type: ignore[attr-defined]
            if proxy.process.poll() is not None:
                raise RigError(f"the proxy exited during the soak:\n{processes.log_tail(proxy.name)}")
            now = time.monotonic()
            if now >= next_sample:
                cpu_now = cpu_seconds(pid)
                samples.append((now - started, rss_mb(pid)))
                log(f"soak t={now - started:6.0f}s RSS {samples[-1][1]:6.1f} MB  proxy CPU "
                    f"{(cpu_now - cpu_last) / (now - at_last) * 100:3.0f}%")
                cpu_last, at_last = cpu_now, now
                next_sample += settings.sample_every_s
                if samples_file is not None:
                    samples_file.write_text(json.dumps(samples))
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu_share = (cpu_seconds(pid) - cpu_start) / elapsed * 100
        results = {name: _result(processes, name) for name in generators}
    return [soak_row(settings, samples, results, cpu_share)]


def soak_row(settings: SoakSettings, samples: list[tuple[float, float]],
             results: dict[str, dict[str, float]], cpu_percent: float) -> Row:
    requests = sum(int(r["requests"]) for r in results.values())
    seconds = max(r["duration_s"] for r in results.values())
    errors = sum(int(r["errors_status"] + r["errors_connection"]) for r in results.values())
    last_third = [s for s in samples if s[0] >= samples[-1][0] * 2 / 3]
    past_window = [s for s in samples if s[0] >= WINDOW_SPAN_S]
    slope = slope_mb_per_10min(last_third)
    first, peak, end = samples[0][1], max(v for _, v in samples), samples[-1][1]
    long_enough = samples[-1][0] >= 1.5 * WINDOW_SPAN_S
    figures = (
        f"{requests / seconds:.0f} req/s achieved (asked {settings.rate:g}); RSS {first:.1f} -> {end:.1f} MB "
        f"(peak {peak:.1f}); last third {slope:+.2f} MB/10 min"
        + (f"; past the window {slope_mb_per_10min(past_window):+.2f} MB/10 min" if len(past_window) > 1 else "")
        + f"; sse p99 {results['soak-sse']['p99_us'] / 1000:.1f} ms; proxy CPU {cpu_percent:.0f}%"
    )
    return Row(
        "soak", f"{settings.duration_s / 60:g} min, {settings.sse_share:.0%} SSE, RSS every {settings.sample_every_s:g} s",
        f"{requests:,} requests, {errors} errors, {len(samples)} samples",
        figures,
        (abs(slope) < FLAT_MB_PER_10MIN and errors == 0) if long_enough else None,
        {"samples": samples, "results": results, "slope_last_third": slope, "proxy_cpu_percent": cpu_percent},
    )
