"""The rig on real processes: start, wait, measure CPU, stop; and the servers answering through it."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from proxy_overhead import BENCH_DIR, check_answers
from rig import RIG_CORE, Processes, RigError, cpu_seconds, free_port, run_pinned

BURN_CPU = "import time\nstart = time.process_time()\nwhile time.process_time() - start < {seconds}: pass\n"


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_upstream_and_floor_answer_byte_for_byte_and_are_stopped_on_exit(tmp_path: Path) -> None:
    stable, canary, floor = free_port(), free_port(), free_port()
    with Processes(tmp_path) as processes:
        upstream_argv = [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(stable), "--port", str(canary)]
        upstream = processes.start("upstream", upstream_argv, RIG_CORE)
        proxy = processes.start(
            "floor", [sys.executable, str(BENCH_DIR / "floor_proxy.py"), "--port", str(floor),
                      f"http://127.0.0.1:{stable}", f"http://127.0.0.1:{canary}"], RIG_CORE,
        )
        for name, process, port in (("upstream", upstream, stable), ("upstream", upstream, canary),
                                    ("floor", proxy, floor)):
            processes.wait_listening(name, process, port)
        for port in (stable, canary, floor):
            check_answers(f"port {port}", port)
    assert upstream.poll() is not None and proxy.poll() is not None
    assert all(refuses_connections(port) for port in (stable, canary, floor))


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    with Processes(tmp_path) as processes:
        argv = [sys.executable, "-c", "print('no config here'); raise SystemExit(3)"]
        process = processes.start("broken", argv, RIG_CORE)
        with pytest.raises(RigError, match=r"broken exited with status 3 before listening(.|\n)*no config here"):
            processes.wait_listening("broken", process, free_port())


def test_cpu_seconds_counts_descendants(tmp_path: Path) -> None:
    # The parent only waits; its child burns CPU: the parent's tree must be charged for it.
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {BURN_CPU.format(seconds=5)!r}])"
    with Processes(tmp_path) as processes:
        parent = processes.start("parent", [sys.executable, "-c", child], RIG_CORE)
        deadline = time.monotonic() + 20
        while cpu_seconds(parent.pid) < 0.3:
            assert time.monotonic() < deadline, "the child's CPU time never showed up in the parent's tree"
            time.sleep(0.02)


def test_run_pinned_returns_output_and_the_cpu_it_used() -> None:
    argv = [sys.executable, "-c", BURN_CPU.format(seconds=0.2) + "print('done')"]
    output, used = run_pinned(argv, RIG_CORE, timeout=30)
    assert output == "done\n"
    assert used >= 0.2


def test_run_pinned_reports_a_failing_command() -> None:
    with pytest.raises(RigError, match=r"exited with status 4:\n.*disk on fire"):
        argv = [sys.executable, "-c", "import sys; sys.stderr.write('disk on fire'); sys.exit(4)"]
        run_pinned(argv, RIG_CORE, timeout=30)
