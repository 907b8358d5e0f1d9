"""Slow readers (issue 10, item 8): clients that stop reading large streams, and what memory the
proxy keeps afterwards.

Each round opens `readers` connections with a 4 KiB receive buffer, asks for a 16 MB SSE stream
(battery_bigstream.py), reads the first bytes and then nothing more. The proxy's buffers fill, its
write guard aborts each client after `timeouts.client_write` (5 s here), and the round ends when
the proxy has finished every request. The proxy runs under battery_traced.py, which reports RSS,
glibc's heap (mallinfo2) and, in the second run, tracemalloc snapshots on request.

A leak grows with every round and shows in tracemalloc as live objects left behind; allocator
high-water shows as RSS that stays up while the traced Python memory is back at the baseline,
does not grow in later rounds, and is given back by malloc_trim(0).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from battery_common import (BENCH_DIR, Row, log, new_proxy, poll, request_bytes, requests_finished)
from rig import RIG_CORE, Processes, RigError, free_port

# 16 MB per stream: more than the kernel's largest send buffer (tcp_wmem max, 4 MiB by default), so a
# client that stops reading does block the proxy's writes.
EVENTS, EVENT_BYTES = 16_000, 1000
WRITE_TIMEOUT = "5s"


def start_big_upstream(processes: Processes) -> tuple[int, int]:
    stable, canary = free_port(), free_port()
    argv = [sys.executable, str(BENCH_DIR / "battery_bigstream.py"), "--port", str(stable), "--port", str(canary),
            "--events", str(EVENTS), "--event-bytes", str(EVENT_BYTES)]
    upstream = processes.start("bigstream", argv, RIG_CORE)
    processes.wait_listening("bigstream", upstream, stable)
    processes.wait_listening("bigstream", upstream, canary)
    return stable, canary


async def _read_whole(port: int, user: int) -> int:
    """One stream read to its end; the bytes received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes(port, "sse", user).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
    total = 0
    while chunk := await reader.read(65536):
        total += len(chunk)
    writer.close()
    return total


async def _stall(port: int, user: int) -> socket.socket:
    """Ask for a stream, read its first bytes, then stop reading (the socket is returned open)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request_bytes(port, "sse", user))
    first = await loop.sock_recv(sock, 1024)
    if not first.startswith(b"HTTP/1.1 200"):
        raise RigError(f"a slow reader got {first[:60]!r}")
    return sock


def _how_it_ended(sock: socket.socket) -> str:
    """Drain what the socket still holds: 'reset' if the proxy aborted it, 'eof' for a FIN."""
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return "eof"
    except ConnectionResetError:
        return "reset"
    except BlockingIOError:
        return "open"
    finally:
        sock.close()


class Probe:
    """Asks battery_traced.py inside the proxy for a memory report and waits for it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def __call__(self, label: str, trim: bool = False) -> dict[str, Any]:
        self.count += 1
        name = f"{'trim' if trim else 'probe'}-{self.count:02d}"
        (self.directory / name).touch()
        answer = self.directory / f"{name}.json"
        if not poll(answer.exists, 120.0):
            raise RigError(f"the proxy's memory probe did not answer {name}")
        facts: dict[str, Any] = json.loads(answer.read_text())
        facts["label"], facts["name"] = label, name
        log(f"slow-reader probe {label}: " + ", ".join(
            f"{k} {v:.1f}" for k, v in facts.items() if isinstance(v, float)))
        return facts


async def _round(port: int, admin_port: int, readers: int, first_user: int, probe: Probe,
                 label: str, stall_s: float = 2.0) -> tuple[dict[str, Any], list[str]]:
    before = requests_finished(admin_port)
    socks = await asyncio.gather(*(_stall(port, first_user + i) for i in range(readers)))
    await asyncio.sleep(stall_s)  # buffers full, the guards not yet fired: the peak (measured, not waited for)
    peak = probe(f"{label} stalled")
    done = await asyncio.to_thread(poll, lambda: requests_finished(admin_port) >= before + readers, 120.0, 0.5)
    if not done:
        raise RigError(f"{label}: the proxy did not finish {readers} stalled streams within 120 s")
    return peak, [_how_it_ended(s) for s in socks]


async def _scenario(port: int, admin_port: int, readers: int, rounds: int, probe: Probe,
                    warmup_batches: int) -> dict[str, Any]:
    for batch in range(warmup_batches):  # warm-up: full reads fill pools, caches and buffers once
        await asyncio.gather(*(_read_whole(port, 10_000 + batch * 10 + i) for i in range(5)))
    facts: dict[str, Any] = {"baseline": probe("baseline"), "rounds": []}
    for number in range(1, rounds + 1):
        peak, ends = await _round(port, admin_port, readers, number * 1000, probe, f"round {number}")
        after = probe(f"round {number} after")
        facts["rounds"].append({"peak": peak, "after": after, "ends": {e: ends.count(e) for e in set(ends)}})
    facts["trimmed"] = probe("after malloc_trim", trim=True)
    return facts


def _run_once(workdir: Path, readers: int, rounds: int, frames: int) -> dict[str, Any]:
    probe_dir = workdir / f"probe-{frames}"
    probe_dir.mkdir()
    launcher = ["env", f"BATTERY_PROBE_DIR={probe_dir}", f"BATTERY_TRACEMALLOC={frames}",
                sys.executable, str(BENCH_DIR / "battery_traced.py")]
    timeouts = {"client_write": WRITE_TIMEOUT}
    if frames:  # tracemalloc makes the proxy several times slower: its event loop stalls for seconds
        timeouts.update(connect="60s", first_byte="120s")
    extra = {"timeouts": timeouts, "access_log": False, "limits": {"upstream_connections": 1000}}
    with Processes(workdir) as processes:
        stable, canary = start_big_upstream(processes)
        proxy = new_proxy(processes, workdir, stable, canary, f"slowreader-proxy-{frames}", extra, launcher,
                          listen_timeout=120.0)  # tracemalloc slows the start-up several times
        facts = asyncio.run(_scenario(proxy.port, proxy.admin_port, readers, rounds, Probe(probe_dir),
                                      warmup_batches=1 if frames else 4))
    facts["probe_dir"] = str(probe_dir)
    return facts


def leftovers(probe_dir: Path, baseline: str, after: str, top: int = 6) -> tuple[float, list[str]]:
    """Traced bytes still live after the rounds that were not at the baseline, and the biggest lines."""
    old = tracemalloc.Snapshot.load(str(probe_dir / f"{baseline}.snapshot"))
    new = tracemalloc.Snapshot.load(str(probe_dir / f"{after}.snapshot"))
    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    stats = new.filter_traces(filters).compare_to(old.filter_traces(filters), "lineno")
    growth = sum(s.size_diff for s in stats) / 2**20
    lines = [f"{s.size_diff / 1024:+.0f} KiB {s.count_diff:+d} blocks {s.traceback[0].filename.rsplit('/', 2)[-1]}"
             f":{s.traceback[0].lineno}" for s in stats[:top]]
    return growth, lines


def run_slow_reader(workdir: Path, readers: int = 200, rounds: int = 3) -> list[Row]:
    started = time.monotonic()
    plain = _run_once(workdir, readers, rounds, frames=0)
    traced_readers = min(readers, 50)  # under tracemalloc the proxy is several times slower
    traced = _run_once(workdir, traced_readers, rounds, frames=10)
    rows = [_row("slow-reader", "RSS and glibc heap (no tracemalloc)", plain, readers, rounds)]
    last = traced["rounds"][-1]["after"]["name"]
    growth, lines = leftovers(Path(traced["probe_dir"]), traced["baseline"]["name"], last)
    row = _row("slow-reader", "the same under tracemalloc (10 frames)", traced, traced_readers, rounds)
    base, peak = traced["baseline"]["traced_mb"], max(r["peak"]["traced_mb"] for r in traced["rounds"])
    after = traced["rounds"][-1]["after"]["traced_mb"]
    row.figures += (f"; traced Python memory {base:.1f} -> peak {peak:.1f} -> {after:.1f} MB"
                    f" ({growth:+.2f} MB left after {rounds} rounds)")
    row.details["top_leftovers"] = lines
    _, held_while_stalled = leftovers(Path(traced["probe_dir"]), traced["baseline"]["name"],
                                      traced["rounds"][-1]["peak"]["name"], top=10)
    row.details["top_while_stalled"] = held_while_stalled
    log("slow-reader: held while stalled (vs baseline): " + "; ".join(held_while_stalled))
    # Under tracemalloc, malloc's own count includes the traces: the traced growth is the criterion.
    row.held = growth < 1.0
    rows.append(row)
    log(f"slow-reader: both runs in {time.monotonic() - started:.0f} s; leftovers: " + "; ".join(lines))
    return rows


def _row(mode: str, what: str, facts: dict[str, Any], readers: int, rounds: int) -> Row:
    base = facts["baseline"]
    rss_after = [r["after"]["rss_mb"] for r in facts["rounds"]]
    peak = max(r["peak"]["rss_mb"] for r in facts["rounds"])
    ends: dict[str, int] = {}
    for r in facts["rounds"]:
        for end, count in r["ends"].items():
            ends[end] = ends.get(end, 0) + count
    used_after = facts["rounds"][-1]["after"]["malloc_used_mb"]
    figures = (
        f"RSS {base['rss_mb']:.1f} -> peak {peak:.1f} -> after each round "
        + "/".join(f"{v:.1f}" for v in rss_after)
        + f" -> after malloc_trim {facts['trimmed']['rss_mb']:.1f} MB; malloc in use {base['malloc_used_mb']:.1f}"
        f" -> {used_after:.1f} MB (heap {facts['rounds'][-1]['after']['malloc_heap_mb']:.1f})"
    )
    # Held: what malloc has handed out is back at the baseline after every round (a leak would keep
    # some per round), and no client was left open. RSS is not the criterion: it keeps the highest
    # peak (glibc's free heap), which depends on how many streams stalled at once.
    used_growth = max(r["after"]["malloc_used_mb"] for r in facts["rounds"]) - base["malloc_used_mb"]
    held = used_growth < 2.0 and not ends.get("open")
    counts = (f"{rounds} rounds x {readers} readers x 16 MB streams; ends "
              + ", ".join(f"{k} {v}" for k, v in sorted(ends.items())))
    return Row(mode, what, counts, figures, held, facts)
