"""The access log: one line per request, written in batches (like nginx's `access_log ... buffer=`).

Going through `logging` would build a LogRecord, call getpid, write and flush to stderr for every
request: a large share of the proxy's whole budget per request. Here a line is one f-string
appended to a list; the list is written to the file descriptor at most every `flush_interval`
seconds or when it holds `max_buffer` characters, and at shutdown.

    2026-11-26T14:59:28.123Z stable POST /v1/chat/completions 200 12.3ms in=182 out=579 req=9f3c...
"""

from __future__ import annotations

import asyncio
import os
import time

from canaryproxy.core.types import Outcome


class AccessLog:
    __slots__ = ("_fd", "_flush_interval", "_max_buffer", "_parts", "_size", "_timer",
                 "_second", "_second_text")

    def __init__(self, fd: int = 2, flush_interval: float = 0.1, max_buffer: int = 64 * 1024) -> None:
        self._fd = fd
        self._flush_interval = flush_interval
        self._max_buffer = max_buffer
        self._parts: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""

    def _timestamp(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:  # formatting the date once a second, not once a request
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((wall - second) * 1000):03d}Z"

    def record(self, outcome: Outcome, path: str) -> None:
        """One line for a finished request, stamped with the wall-clock time of its last byte (the
        wall time it was routed plus its duration: no clock read here)."""
        error = f" error={outcome.error.value}" if outcome.error is not None else ""
        line = (
            f"{self._timestamp(outcome.routed_at + outcome.latency)} {outcome.role.value} "
            f"{outcome.method} {path} "
            f"{outcome.status} {outcome.latency * 1000:.1f}ms in={outcome.bytes_in} "
            f"out={outcome.bytes_out}{error} req={outcome.request_id}\n"
        )
        self._parts.append(line)
        self._size += len(line)
        if self._size >= self._max_buffer:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._parts:
            return
        data = "".join(self._parts).encode("utf-8", "backslashreplace")
        self._parts.clear()
        self._size = 0
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            pass  # a closed stderr must not take the data plane down
