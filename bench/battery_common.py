"""What every mode of the battery shares: the upstream and canaryproxy processes, their config,
RSS from /proc, and the result rows the battery prints as one table.

Everything listens on 127.0.0.1; every process is started through rig.Processes, so it is stopped
on the way out, on an error and on Ctrl-C too.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import payloads
from rig import PROXY_CORE, RIG_CORE, Processes, RigError, free_port

BENCH_DIR = Path(__file__).resolve().parent
MIB = 1024 * 1024


@dataclass
class Row:
    """One line of the battery's table: what ran, what was counted, and whether it held."""

    mode: str
    what: str
    counts: str
    figures: str
    held: bool | None  # None: measured, no pass/fail criterion
    details: dict[str, Any] = field(default_factory=dict)  # for --json


@dataclass(frozen=True)
class Proxy:
    process: Any  # subprocess.Popen[bytes]
    port: int
    admin_port: int
    name: str
    config_path: Path


def rss_mb(pid: int) -> float:
    """Resident set size of one process, from /proc/PID/status (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RigError(f"/proc/{pid}/status has no VmRSS line")


def slope_mb_per_10min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per 10 minutes."""
    if len(samples) < 2:
        return 0.0
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    return statistics.linear_regression(times, values).slope * 600


def start_upstream(processes: Processes) -> tuple[int, int, Any]:
    """bench/upstream.py on two ports (stable, canary), on the rig's core."""
    stable, canary = free_port(), free_port()
    argv = [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(stable), "--port", str(canary)]
    upstream = processes.start("upstream", argv, RIG_CORE)
    processes.wait_listening("upstream", upstream, stable)
    processes.wait_listening("upstream", upstream, canary)
    return stable, canary, upstream


def proxy_config(port: int, admin_port: int, stable: int, canary: int, workdir: Path,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """canaryproxy with weight 10 and access log on (the benchmark's default), plus `extra`."""
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "upstreams": {"stable": f"http://127.0.0.1:{stable}", "canary": f"http://127.0.0.1:{canary}"},
        "routing": {"weight": 10},
        "access_log": True,
        "log_level": "info",
        "state": {"path": str(workdir / "state.json")},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(workdir: Path, name: str, config: dict[str, Any]) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def start_proxy(processes: Processes, workdir: Path, name: str, config: dict[str, Any],
                launcher: list[str] | None = None, listen_timeout: float = 20.0) -> Proxy:
    """`python -m canaryproxy run` (or `launcher` + `run`) pinned to the proxy's core; returns once
    both listeners accept."""
    path = write_config(workdir, name, config)
    port = int(config["listen"].rsplit(":", 1)[1])
    admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
    argv = [*(launcher or [sys.executable, "-m", "canaryproxy"]), "run", "--config", str(path)]
    process = processes.start(name, argv, PROXY_CORE)
    processes.wait_listening(name, process, port, listen_timeout)
    processes.wait_listening(name, process, admin_port, listen_timeout)
    return Proxy(process, port, admin_port, name, path)


def new_proxy(processes: Processes, workdir: Path, stable: int, canary: int, name: str = "canaryproxy",
              extra: dict[str, Any] | None = None, launcher: list[str] | None = None,
              listen_timeout: float = 20.0) -> Proxy:
    config = proxy_config(free_port(), free_port(), stable, canary, workdir, extra)
    return start_proxy(processes, workdir, name, config, launcher, listen_timeout)


def requests_finished(admin_port: int) -> int:
    """Requests the proxy has finished (every version and status), from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5.0) as answer:
        text = answer.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("canaryproxy_requests_total{")))


def admin_get(admin_port: int, path: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}{path}", timeout=timeout) as answer:
        return json.loads(answer.read())


def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """True once `condition()` holds, False if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def request_bytes(port: int, workload: str, user: int = 1) -> bytes:
    return payloads.chat_request(payloads.WORKLOADS[workload], f"127.0.0.1:{port}", user)


def percentile(sorted_values: list[float], percent: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[round((len(sorted_values) - 1) * percent / 100)]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
