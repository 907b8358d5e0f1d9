"""The processes of a benchmark run: started pinned to a core, awaited until they listen, measured
by the CPU time the kernel charged them, and always stopped, on an error and on Ctrl-C too.

Linux only: it reads /proc and pins with `taskset`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

PROXY_CORE = 0  # the proxy under test, alone
RIG_CORE = 1  # the load generator and the upstream (and this script, idle while a run lasts)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


class RigError(Exception):
    """A process of the rig did not start or did not behave; the message says which and why."""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx's workers, for instance)."""
    tree, index = [pid], 0
    while index < len(tree):
        task_dir = Path(f"/proc/{tree[index]}/task")
        index += 1
        try:
            tasks = list(task_dir.iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            with contextlib.suppress(FileNotFoundError):  # the thread ended in between
                tree += [int(child) for child in (task / "children").read_text().split()]
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants, all threads, from /proc/PID/stat."""
    ticks = 0
    for member in _process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except FileNotFoundError:
            continue  # exited in between
        # Fields after the command name, which is in parentheses and may contain spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / _CLOCK_TICKS


def core_task_seconds(core: int) -> float:
    """CPU time a core spent running processes (user, nice, system) or lost to the hypervisor
    (steal), from /proc/stat. Interrupt and softirq time is left out: on loopback it is mostly the
    network stack carrying the proxy's own traffic. Compared with the proxy's own time it shows how
    much of the proxy's core other processes of the machine took."""
    prefix = f"cpu{core} "
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(prefix):
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(v) for v in line.split()[1:9])
            return (user + nice + system + steal) / _CLOCK_TICKS
    raise RigError(f"/proc/stat has no line for CPU {core}")


def _die_with_this_script() -> None:
    # Runs in the child before exec: if this script dies without cleaning up (SIGKILL), the
    # kernel sends the child SIGTERM, so no server outlives the benchmark.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Processes:
    """Long-running servers of one run. Use as a context manager: leaving it stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        while self._running:
            self.stop(self._running[-1][1])

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{name}.log"

    def start(self, name: str, argv: Sequence[str], core: int) -> subprocess.Popen[bytes]:
        """Start argv pinned to `core`, its stdout and stderr to NAME.log in the log directory."""
        with self.log_path(name).open("ab") as log:
            process = subprocess.Popen(
                ["taskset", "-c", str(core), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: Ctrl-C reaches only this script, which stops the servers
                # in order, and killpg reaches a server's workers too.
                start_new_session=True,
                preexec_fn=_die_with_this_script,
            )
        self._running.append((name, process))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group, SIGKILL it after 5 s."""
        self._running = [(n, p) for n, p in self._running if p is not process]
        for signum, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(process.pid, signum)
            try:
                process.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def wait_listening(
        self, name: str, process: subprocess.Popen[bytes], port: int, timeout: float = 20.0
    ) -> None:
        """Return once 127.0.0.1:port accepts connections; fail if the process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RigError(
                    f"{name} exited with status {process.returncode} before listening on 127.0.0.1:{port}:\n"
                    + self.log_tail(name)
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RigError(
                        f"{name} did not listen on 127.0.0.1:{port} within {timeout:g}s:\n"
                        + self.log_tail(name)
                    ) from None
                time.sleep(0.05)

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_path(name)
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"  ({path} was not written)"
        return "\n".join(f"  | {line}" for line in tail) or f"  ({path} is empty)"


def run_pinned(argv: Sequence[str], core: int, timeout: float) -> tuple[str, float]:
    """Run a command to its end pinned to `core`; return its stdout and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            ["taskset", "-c", str(core), *argv],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
            preexec_fn=_die_with_this_script,
        )
    except subprocess.TimeoutExpired:
        raise RigError(f"{argv[0]} did not finish within {timeout:g}s: {' '.join(argv)}") from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RigError(
            f"{' '.join(argv)} exited with status {done.returncode}:\n"
            + done.stderr.decode(errors="replace")[-2000:]
        )
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.stdout.decode(errors="replace"), used
