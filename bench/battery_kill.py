"""kill -9 x N during a rollout: after every restart the rollout is exactly where it was.

The rollout has long holds (nothing moves by itself) and each round changes it through the admin
API, cycling promote -> pause -> resume, so every round has a fresh acknowledged change to lose.
A round: the change (answered 200), a random 0-300 ms, the status, `kill -9`, a restart with the
same config and state file, the status once it listens. Resumed exactly means the same phase,
stage number and weight, and a hold that continues (elapsed not back at zero). A trickle of
requests runs throughout; the requests that fail while the proxy is down are counted.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from battery_common import Proxy, Row, admin_get, log, proxy_config, request_bytes, start_proxy, start_upstream
from loadgen import ProtocolError, fetch
from rig import Processes, RigError, free_port

CYCLE = ("promote", "pause", "resume")

def kill_rollout(rounds: int) -> dict[str, Any]:
    """Enough stages that every promote of the run has one to go to."""
    count = rounds // len(CYCLE) + 2
    weights = [round(1 + i * 98 / count, 2) for i in range(count)] + [100]
    return {"rollout": {
        "start": "auto", "stages": [{"weight": w, "hold": "1h"} for w in weights],
        "min_requests": 1, "max_hold": "2h", "evaluate_every": "100ms", "judge": {"enabled": False},
    }, "access_log": False}

def _post(admin_port: int, action: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/admin/{action}", data=json.dumps({"reason": "battery"}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code

def _essentials(status: dict[str, Any]) -> dict[str, Any]:
    stage = status.get("stage") or {}
    return {"phase": status.get("phase"), "stage": stage.get("number"), "weight": status.get("weight")}

class Trickle(threading.Thread):
    """~20 JSON requests/s through the proxy on fresh connections, counting what fails
    (refused: the proxy was down; cut: it was killed with the request in flight)."""

    def __init__(self, port: int, request: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.request = port, request
        self.ok = self.refused = self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                status, _ = fetch(self.port, self.request, timeout=5.0)
                self.ok += status == 200
                self.failed += status != 200
            except ConnectionRefusedError:
                self.refused += 1  # the proxy is down between the kill and the restart
            except (OSError, ProtocolError):
                self.failed += 1  # in flight when the proxy was killed

def _one_round(processes: Processes, workdir: Path, config: dict[str, Any], proxy: Proxy, action: str,
               rng: random.Random) -> tuple[Proxy, dict[str, Any] | None, float]:
    """Returns the restarted proxy, the mismatch (None when it resumed exactly) and the restart time."""
    time.sleep(rng.uniform(0.3, 1.0))  # serve a while
    answer = _post(proxy.admin_port, action)
    if answer != 200:
        raise RigError(f"POST /admin/{action} answered {answer}")
    time.sleep(rng.uniform(0.0, 0.3))
    before = admin_get(proxy.admin_port, "/admin/status")
    proxy.process.send_signal(signal.SIGKILL)
    if proxy.process.wait(20) != -signal.SIGKILL:
        raise RigError(f"the proxy exited with {proxy.process.returncode}, not by SIGKILL")
    processes.stop(proxy.process)  # forget it (already dead)
    killed = time.monotonic()
    restarted = start_proxy(processes, workdir, proxy.name, config)
    took = time.monotonic() - killed
    after = admin_get(restarted.admin_port, "/admin/status")
    mismatch = None
    if _essentials(before) != _essentials(after):
        mismatch = {"action": action, "before": _essentials(before), "after": _essentials(after)}
    elif before["phase"] == "progressing":
        elapsed_before, elapsed_after = before["stage"]["elapsed"], after["stage"]["elapsed"]
        if elapsed_after < elapsed_before - 0.25:  # one evaluation interval and a margin
            mismatch = {"action": action, "elapsed_before": elapsed_before, "elapsed_after": elapsed_after}
    return restarted, mismatch, took

def run_kill9(workdir: Path, rounds: int) -> list[Row]:
    rng = random.Random(10)
    with Processes(workdir) as processes:
        stable, canary, _ = start_upstream(processes)
        config = proxy_config(free_port(), free_port(), stable, canary, workdir, kill_rollout(rounds))
        proxy = start_proxy(processes, workdir, "kill9-proxy", config)

        trickle = Trickle(proxy.port, request_bytes(proxy.port, "json"))
        trickle.start()
        mismatches, restarts = [], []
        started = time.monotonic()
        try:
            for number in range(rounds):
                proxy, mismatch, took = _one_round(processes, workdir, config, proxy, CYCLE[number % len(CYCLE)], rng)
                restarts.append(took)
                if mismatch:
                    mismatches.append(mismatch)
                    log(f"kill9 round {number + 1}: NOT resumed exactly: {mismatch}")
                if (number + 1) % 10 == 0:
                    log(f"kill9: {number + 1}/{rounds} rounds, {len(mismatches)} mismatches")
            final = _essentials(admin_get(proxy.admin_port, "/admin/status"))
        finally:
            trickle.stop.set()
            trickle.join(10)
        elapsed = time.monotonic() - started
    restarts.sort()
    return [Row(
        "kill9", f"kill -9 x {rounds} during a rollout (promote/pause/resume between kills)",
        f"{rounds - len(mismatches)}/{rounds} resumed exactly; trickle {trickle.ok} ok, "
        f"{trickle.refused} refused while down, "
        f"{trickle.failed} cut or non-200",
        f"restart to listening p50 {restarts[len(restarts) // 2]:.2f} s, max {restarts[-1]:.2f} s; "
        f"{elapsed:.0f} s in all; ended at stage {final['stage']} weight {final['weight']} ({final['phase']})",
        not mismatches, {"mismatches": mismatches, "restart_s": restarts, "final": final},
    )]
