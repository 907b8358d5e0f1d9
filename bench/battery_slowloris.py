"""Slowloris while serving: `connections` clients trickle a request head, one header line a second,
never ending it, while paced real traffic goes through the same proxy. The real traffic must keep
its latency (compared with the same load just before, without the attack) and see no errors. How
many of the trickling connections the proxy closed, and after how long, is counted too.

A Python client rather than slowhttptest: it runs in this process, so the battery knows exactly
when each connection opened and was closed, and nothing needs installing.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from battery_common import BENCH_DIR, Row, log, new_proxy, rss_mb, start_upstream
from loadgen import RESULT_PREFIX
from rig import RIG_CORE, Processes, RigError, cpu_seconds

PACED_RATE, PACED_CONNECTIONS = 200.0, 8


@dataclass
class Trickling:
    connected: int = 0
    closed_after_s: list[float] = field(default_factory=list)  # closed by the proxy, seconds after opening
    answers: dict[str, int] = field(default_factory=dict)  # what the proxy sent before closing


async def _trickle(port: int, stop: asyncio.Event, tally: Trickling) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    opened = time.monotonic()
    tally.connected += 1
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    line = 0
    read = asyncio.ensure_future(reader.read(200))
    try:
        while not stop.is_set():
            done, _ = await asyncio.wait({read}, timeout=1.0)
            if done:  # the proxy answered or closed
                data = read.result()
                tally.answers[data[:12].decode(errors="replace") or "closed"] = (
                    tally.answers.get(data[:12].decode(errors="replace") or "closed", 0) + 1)
                tally.closed_after_s.append(time.monotonic() - opened)
                return
            line += 1
            writer.write(b"X-Trickle-%d: %d\r\n" % (line, line))
    except ConnectionError:
        tally.closed_after_s.append(time.monotonic() - opened)
    finally:
        read.cancel()
        writer.close()


async def _paced_load(port: int, body_file: Path, seconds: float, log_file: Path) -> dict[str, float]:
    argv = ["taskset", "-c", str(RIG_CORE), sys.executable, str(BENCH_DIR / "loadgen.py"), "--port", str(port),
            "--body-file", str(body_file), "--connections", str(PACED_CONNECTIONS), "--duration", str(seconds),
            "--rate", str(PACED_RATE)]
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), seconds + 60)
    log_file.write_bytes(output)
    for line in output.decode(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, float] = json.loads(line[len(RESULT_PREFIX):])
            return result
    raise RigError(f"the paced load printed no result line:\n{output[-1000:]!r}")


@dataclass
class Facts:
    baseline: dict[str, float]
    during: dict[str, float]
    tally: Trickling
    still_open: int
    rss_before: float
    rss_during: float
    cpu_s: float


async def _scenario(port: int, pid: int, connections: int, seconds: float, workdir: Path) -> Facts:
    import payloads

    body_file = workdir / "json-request.json"
    body_file.write_bytes(payloads.JSON_REQUEST_BODY)
    baseline = await _paced_load(port, body_file, seconds, workdir / "paced-baseline.log")
    stop, tally = asyncio.Event(), Trickling()
    rss_before, cpu_before = rss_mb(pid), cpu_seconds(pid)
    attackers = []
    for _ in range(connections):  # opened at ~250/s, as a client would, not in one burst
        attackers.append(asyncio.create_task(_trickle(port, stop, tally)))
        await asyncio.sleep(0.004)
    log(f"slowloris: {tally.connected} of {connections} trickling connections open")
    during = await _paced_load(port, body_file, seconds, workdir / "paced-during.log")
    still_open = tally.connected - len(tally.closed_after_s)
    rss_during, cpu = rss_mb(pid), cpu_seconds(pid) - cpu_before
    stop.set()
    await asyncio.gather(*attackers)
    return Facts(baseline, during, tally, still_open, rss_before, rss_during, cpu)


def run_slowloris(workdir: Path, connections: int, seconds: float) -> list[Row]:
    with Processes(workdir) as processes:
        stable, canary, _ = start_upstream(processes)
        proxy = new_proxy(processes, workdir, stable, canary, "slowloris-proxy")
        facts = asyncio.run(_scenario(proxy.port, proxy.process.pid, connections, seconds, workdir))
        if proxy.process.poll() is not None:
            raise RigError("the proxy exited during the slowloris run")
    base, during, tally = facts.baseline, facts.during, facts.tally
    errors = int(during["errors_status"] + during["errors_connection"])
    closed = tally.closed_after_s
    p99_ok = during["p99_us"] <= max(3 * base["p99_us"], base["p99_us"] + 10_000)
    return [Row(
        "slowloris", f"{connections} conns trickling 1 header line/s, {PACED_RATE:g} req/s real JSON for {seconds:g} s",
        f"{tally.connected} connected, {len(closed)} closed by the proxy"
        + (f" (median after {statistics.median(closed):.0f} s: {tally.answers})" if closed else "")
        + f", {facts.still_open} still open; real traffic {int(during['requests'])} requests, {errors} errors",
        f"real p50/p99 {base['p50_us'] / 1000:.2f}/{base['p99_us'] / 1000:.2f} ms without -> "
        f"{during['p50_us'] / 1000:.2f}/{during['p99_us'] / 1000:.2f} ms during; proxy RSS {facts.rss_before:.1f} -> "
        f"{facts.rss_during:.1f} MB, CPU {facts.cpu_s:.1f} s",
        errors == 0 and p99_ok,
        {"baseline": base, "during": during, "closed_after_s": closed, "answers": tally.answers},
    )]
