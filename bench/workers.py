"""`run --workers 1` vs `--workers N`: JSON throughput through one port, one rollout on Redis.

    .venv/bin/python bench/workers.py [--workers 2] [--duration 5] [--connections 32]

The proxy's processes are pinned to cores 0..N-1 (the supervisor's affinity is inherited), wrk and
the upstream to the last core. A machine needs N + 1 cores for the load generator to stay off the
proxies' cores; with fewer, the run says so and the ratio understates the scaling. The goal
(≥ 0.8 × N) is for a many-core machine; this script runs there unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import payloads
from proxy_overhead import (
    BENCH_DIR, ROLLOUT_AT_10, Ports, _merged, canaryproxy_config, parse_load_result, redis_url, wrk_command,
)
from rig import free_port, run_pinned


def wait_for_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on {port} after {timeout:g}s")
            time.sleep(0.05)  # a port coming up, with a deadline


def measure(workers: int, ports: Ports, url: str, workdir: Path, body: Path, args: argparse.Namespace,
            load_core: int) -> float:
    config = workdir / f"workers{workers}.yaml"
    overrides = _merged(ROLLOUT_AT_10, {"coordination": {"backend": "redis", "url": url, "rollout": f"w{workers}"},
                                        "access_log": False})
    config.write_text(json.dumps(_merged(canaryproxy_config(ports), overrides)))
    cores = f"0-{workers - 1}" if workers > 1 else "0"
    command = ["taskset", "-c", cores, sys.executable, "-m", "canaryproxy", "run", "--config", str(config)]
    if workers > 1:
        command += ["--workers", str(workers)]
    proxy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(ports.listen)
        time.sleep(2)  # every worker bound and caught up: not a wait for a condition, a warm-up
        run_pinned(wrk_command(ports.listen, body, args.connections, 2), load_core, 30)
        output, _ = run_pinned(wrk_command(ports.listen, body, args.connections, args.duration), load_core,
                               args.duration + 30)
        result = parse_load_result(output)
        if result["errors_status"] or result["errors_connection"]:
            print(f"note: --workers {workers}: {result['errors_status']:.0f} error statuses, "
                  f"{result['errors_connection']:.0f} connection errors")
        return result["requests"] / result["duration_s"]
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    load_core = cpus - 1
    if cpus < args.workers + 1:
        print(f"note: {cpus} cores for {args.workers} workers plus the load generator: core {load_core} "
              "is shared, so the ratio understates the scaling")
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        stable, canary = free_port(), free_port()
        upstream = subprocess.Popen(["taskset", "-c", str(load_core), sys.executable, str(BENCH_DIR / "upstream.py"),
                                     "--port", str(stable), "--port", str(canary)])
        body = workdir / "body.json"
        body.write_bytes(payloads.JSON_REQUEST_BODY)
        try:
            wait_for_port(stable)
            url = redis_url()
            one = measure(1, Ports(stable, canary, free_port()), url, workdir, body, args, load_core)
            many = measure(args.workers, Ports(stable, canary, free_port()), url, workdir, body, args, load_core)
        finally:
            upstream.terminate()
            upstream.wait(10)
    print(f"JSON req/s: --workers 1 {one:,.0f}, --workers {args.workers} {many:,.0f}: "
          f"{many / one:.2f}x (goal >= {0.8 * args.workers:.1f}x on a machine with {args.workers + 1}+ cores)")


if __name__ == "__main__":
    main()
