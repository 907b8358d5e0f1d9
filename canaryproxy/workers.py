"""`canaryproxy run --workers N`: N processes on one port, each a replica of the same rollout.

The parent only supervises: it starts N workers (`python -m canaryproxy run --worker I`), which
bind the data port with SO_REUSEPORT so the kernel spreads connections over them, forwards
SIGTERM/SIGINT to every worker (each drains on its own), and starts a worker again if one dies
(at most once per second). Each worker is a full replica — its own admin listener on the admin
port + I, its own /metrics counting only its own requests, so Prometheus sums them honestly —
and they agree on the rollout through the shared backend, which is why N > 1 requires it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from canaryproxy.config import Config

log = logging.getLogger("canaryproxy.workers")

RESTART_AT_MOST_EVERY = 1.0  # seconds between starts of one worker slot


def refusal(config: Config, workers: int) -> str | None:
    """Why `workers` processes cannot run this config, or None."""
    if workers > 1 and not config.coordination.shared:
        return (f"--workers {workers} runs {workers} replicas of one rollout, which must agree through "
                "a shared backend: set coordination.backend: redis and coordination.url (see the "
                "README, 'Running several replicas')")
    if workers > 1 and config.listen[1] == 0:
        return f"--workers {workers} share one data port: give listen a port number, not 0"
    return None


def worker_config(config: Config, index: int) -> Config:
    """Worker `index`'s view: the admin port + index, its own replica name."""
    host, port = config.admin.listen
    admin = config.admin.model_copy(update={"listen": (host, port + index if port else 0)})
    name = f"{config.coordination.replica_name}/w{index}"
    coordination = config.coordination.model_copy(update={"replica": name})
    return config.model_copy(update={"admin": admin, "coordination": coordination})


def supervise(config_path: str | None, workers: int) -> int:
    """Run `workers` worker processes until SIGTERM/SIGINT; returns the exit status."""
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    processes = {i: _spawn(config_path, i) for i in range(workers)}
    started = {i: time.monotonic() for i in range(workers)}
    log.info("supervising %d workers (pids %s)", workers, ", ".join(str(p.pid) for p in processes.values()))
    while not stopping:
        time.sleep(0.2)  # the supervisor's poll of its children; signals interrupt it
        for i, process in list(processes.items()):
            if process.poll() is not None and not stopping:
                log.error("worker %d (pid %d) exited with %s; starting it again", i, process.pid,
                          process.returncode)
                time.sleep(max(0.0, started[i] + RESTART_AT_MOST_EVERY - time.monotonic()))
                processes[i], started[i] = _spawn(config_path, i), time.monotonic()
    codes = [process.wait() for process in processes.values()]
    return max(codes, default=0)


def _spawn(config_path: str | None, index: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "canaryproxy", "run", "--worker", str(index)]
    if config_path:
        command += ["--config", config_path]
    return subprocess.Popen(command, env=os.environ.copy())


async def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """A worker whose supervisor died (kill -9) drains and exits instead of living on unsupervised."""
    import asyncio

    while os.getppid() == parent:
        await asyncio.sleep(every)
    log.error("the supervisor (pid %d) is gone: draining and exiting", parent)
    os.kill(os.getpid(), signal.SIGTERM)
