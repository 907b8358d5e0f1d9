"""Many streams at once, and SIGTERM with streams in flight.

The upstreams are canaryproxy's own simulator (`python -m canaryproxy simulate-upstream`): a
stream sends its headers at once, the first token after ~`ttft` and the rest over ~`latency`, so
hundreds of streams are open together. Every client reads its stream to the end and sorts it:

* complete: the chunked terminator arrived after `data: [DONE]`;
* cut: the connection ended without the terminator (a client can tell it was cut);
* silent: a terminator without `data: [DONE]`, a truncation that looks clean: must never happen;
* refused / error: the connection was refused or a non-200 status came back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from battery_common import Proxy, Row, log, new_proxy, percentile, poll, request_bytes, rss_mb
from rig import RIG_CORE, Processes, cpu_seconds, free_port

_TERMINATOR = b"\r\n0\r\n\r\n"


@dataclass
class StreamTally:
    ends: dict[str, int] = field(default_factory=dict)
    durations_s: list[float] = field(default_factory=list)  # request sent -> connection ended
    open_now: int = 0
    open_max: int = 0
    all_open: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, how: str) -> None:
        self.ends[how] = self.ends.get(how, 0) + 1


def start_simulators(processes: Processes, latency: str, ttft: str = "300ms") -> tuple[int, int]:
    ports = []
    for name in ("sim-stable", "sim-canary"):
        port = free_port()
        argv = [sys.executable, "-m", "canaryproxy", "simulate-upstream", "--port", str(port), "--latency", latency,
                "--ttft", ttft, "--tokens-mean", "200", "--seed", "1", "--error-rate", "0", "--guardrail-rate", "0",
                "--schema-break-rate", "0", "--truncate-rate", "0"]  # a healthy model: every stream should complete
        process = processes.start(name, argv, RIG_CORE)
        processes.wait_listening(name, process, port)
        ports.append(port)
    return ports[0], ports[1]


async def one_stream(port: int, user: int, tally: StreamTally, expected: int) -> None:
    """One SSE stream read to its end, sorted into tally.ends."""
    sent = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        tally.end("refused")
        return
    request = request_bytes(port, "sse", user).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1)
    writer.write(request)
    received = bytearray()
    counted = False
    try:
        while chunk := await reader.read(65536):
            received += chunk
            if not counted and b"\r\n\r\n" in received:
                counted = True
                tally.open_now += 1
                tally.open_max = max(tally.open_max, tally.open_now)
                if tally.open_now >= expected:
                    tally.all_open.set()
    except ConnectionError:
        pass
    finally:
        writer.close()
        if counted:
            tally.open_now -= 1
    tally.end(_sort(bytes(received)))
    tally.durations_s.append(time.monotonic() - sent)


def _sort(received: bytes) -> str:
    if not received:
        return "error"
    if not received.startswith(b"HTTP/1.1 200"):
        return f"status {received[9:12].decode(errors='replace')}"
    if received.endswith(_TERMINATOR):
        return "complete" if b"data: [DONE]" in received else "silent"
    return "cut"


async def _open_streams(port: int, count: int, tally: StreamTally) -> list[asyncio.Task[None]]:
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(one_stream(port, 50_000 + i, tally, count)))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let the connections made so far send
    return tasks


def _ends_text(tally: StreamTally) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(tally.ends.items()))


def run_concurrent_streams(workdir: Path, count: int) -> list[Row]:
    """`count` streams of ~10 s each, all open at once through one proxy."""
    with Processes(workdir) as processes:
        stable, canary = start_simulators(processes, latency="10s")
        proxy = new_proxy(processes, workdir, stable, canary, "streams-proxy", {"access_log": False})
        rss_before, cpu_before = rss_mb(proxy.process.pid), cpu_seconds(proxy.process.pid)

        async def scenario() -> tuple[StreamTally, float, float]:
            tally = StreamTally()
            started = time.monotonic()
            tasks = await _open_streams(proxy.port, count, tally)
            try:
                await asyncio.wait_for(tally.all_open.wait(), 60.0)
            except TimeoutError:
                pass  # counted below: open_max < count
            peak_rss = rss_mb(proxy.process.pid)
            await asyncio.gather(*tasks)
            return tally, time.monotonic() - started, peak_rss

        tally, elapsed, peak_rss = asyncio.run(scenario())
        cpu = cpu_seconds(proxy.process.pid) - cpu_before
    durations = sorted(tally.durations_s)
    complete = tally.ends.get("complete", 0)
    return [Row(
        "streams", f"{count} SSE streams of ~10 s at once (simulator)",
        f"{_ends_text(tally)}; {tally.open_max} open at once",
        f"stream p50 {percentile(durations, 50):.1f} s, p99 {percentile(durations, 99):.1f} s; all done in "
        f"{elapsed:.1f} s; proxy RSS {rss_before:.1f} -> {peak_rss:.1f} MB; CPU {cpu:.1f} s "
        f"({cpu / max(complete, 1) * 1000:.1f} ms/stream)",
        complete == count and tally.open_max >= count,
        {"ends": tally.ends, "open_max": tally.open_max, "elapsed_s": elapsed},
    )]


def _sigterm_case(workdir: Path, streams: int, latency: str, drain: str, name: str) -> Row:
    with Processes(workdir) as processes:
        stable, canary = start_simulators(processes, latency=latency)
        proxy = new_proxy(processes, workdir, stable, canary, name,
                          {"access_log": False, "timeouts": {"drain": drain}})

        async def scenario() -> tuple[StreamTally, float, int | None, str]:
            tally = StreamTally()
            tasks = await _open_streams(proxy.port, streams, tally)
            await asyncio.wait_for(tally.all_open.wait(), 60.0)
            signalled = time.monotonic()
            os.kill(proxy.process.pid, signal.SIGTERM)
            late = await _late_connection(proxy)
            await asyncio.gather(*tasks)
            exited = await asyncio.to_thread(poll, lambda: proxy.process.poll() is not None, 60.0)
            return tally, time.monotonic() - signalled, proxy.process.returncode if exited else None, late

        tally, took, code, late = asyncio.run(scenario())
    complete, cut = tally.ends.get("complete", 0), tally.ends.get("cut", 0)
    held = code == 0 and complete + cut == streams and not tally.ends.get("silent") and late == "refused"
    return Row(
        "sigterm", f"SIGTERM, {streams} streams of ~{latency} in flight, drain {drain}",
        f"{_ends_text(tally)}; exit code {code}",
        f"exit {took:.1f} s after SIGTERM; a new connection after SIGTERM: {late}",
        held, {"ends": tally.ends, "exit_code": code, "seconds_to_exit": took},
    )


async def _late_connection(proxy: Proxy) -> str:
    """A client arriving once the proxy drains: the listener must be closed (refused)."""
    await asyncio.sleep(0.5)
    tally = StreamTally()
    await one_stream(proxy.port, 99_999, tally, 1)
    return next(iter(tally.ends))


def run_sigterm(workdir: Path, streams: int) -> list[Row]:
    """Streams shorter than the drain window all finish; longer ones are cut detectably."""
    rows = []
    for case, latency, drain in (("finish", "5s", "30s"), ("cut", "20s", "3s")):
        (workdir / case).mkdir()
        log(f"sigterm: {streams} streams of ~{latency}, drain {drain}")
        rows.append(_sigterm_case(workdir / case, streams, latency, drain, f"sigterm-{case}-proxy"))
    return rows
