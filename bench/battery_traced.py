"""`python -m canaryproxy run` with a memory probe, for the slow-reader mode (bench only).

    BATTERY_PROBE_DIR=DIR [BATTERY_TRACEMALLOC=10] python bench/battery_traced.py run --config FILE

Starts tracemalloc (with that many frames; 0 or unset: off) and a thread that watches DIR: for
each file `probe-N` that appears it writes `probe-N.json` with RSS, the traced memory and the
heap as glibc's mallinfo2 sees it, after a full gc.collect(); with tracemalloc on, also the
snapshot `probe-N.snapshot`; a file `trim-N` makes it call malloc_trim(0) first. A thread, not a
signal handler: the probe must answer while the event loop sleeps in epoll. Nothing of it is in
the product.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _probe(directory: Path, name: str, trim: bool) -> None:
    gc.collect()
    if trim:
        _LIBC.malloc_trim(0)
    info = _LIBC.mallinfo2()
    facts = {
        "rss_mb": _rss_mb(),
        # Bytes malloc has from the kernel (sbrk arena + mmapped blocks), in use, and free inside it.
        "malloc_heap_mb": (info.arena + info.hblkhd) / 2**20,
        "malloc_used_mb": (info.uordblks + info.hblkhd) / 2**20,
        "malloc_free_mb": info.fordblks / 2**20,
        "gc_objects": len(gc.get_objects()),
        "trimmed": trim,
    }
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        facts.update(traced_mb=current / 2**20, traced_peak_mb=peak / 2**20)
        tracemalloc.take_snapshot().dump(str(directory / f"{name}.snapshot"))
    (directory / f"{name}.json.tmp").write_text(json.dumps(facts))
    os.replace(directory / f"{name}.json.tmp", directory / f"{name}.json")


def _watch(directory: Path) -> None:
    done: set[str] = set()
    while True:
        for request in sorted(directory.glob("probe-*")) + sorted(directory.glob("trim-*")):
            if request.suffix or request.name in done:
                continue
            done.add(request.name)
            _probe(directory, request.name, trim=request.name.startswith("trim-"))
        time.sleep(0.1)


def main() -> None:
    frames = int(os.environ.get("BATTERY_TRACEMALLOC", "0") or 0)
    if frames:
        tracemalloc.start(frames)
    directory = Path(os.environ["BATTERY_PROBE_DIR"])
    threading.Thread(target=_watch, args=(directory,), daemon=True, name="battery-probe").start()
    sys.argv = ["canaryproxy", *sys.argv[1:]]
    runpy.run_module("canaryproxy", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
