"""Client-caused errors in the log: one line each, and a burst of the same kind folded into a count.

A slow-body client, a client that hangs up, a scanner sending junk: each is routine at a proxy's
front door, and each used to be logged by aiohttp as an ERROR with a traceback (500 slow-body
connections wrote 10,001 lines). Anyone can send them, so anyone could flood the log. Here every
such error is one WARNING line, and per kind at most one line is written per `interval` seconds;
the next line written for that kind says how many were left out since the last one (like the
kernel's printk rate limit: "N callbacks suppressed").

`now` and `emit` are passed in, so the policy is tested with a fake clock and a list.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from canaryproxy.proxy.body import ClientBodyTimeout, MalformedBody

class RateLimitedLog:
    """At most one line per kind per `interval` seconds, the next one carrying the count left out."""

    __slots__ = ("_emit", "_now", "_interval", "_kinds")

    def __init__(
        self,
        emit: Callable[[str], None],
        now: Callable[[], float] = time.monotonic,
        interval: float = 10.0,
    ) -> None:
        self._emit = emit
        self._now = now
        self._interval = interval
        # kind -> [when the last line was written, how many were left out since]
        self._kinds: dict[str, list[float]] = {}

    def note(self, kind: str, detail: str) -> None:
        now = self._now()
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self._interval:
            state[1] += 1
            return
        left_out = int(state[1]) if state is not None else 0
        suffix = f" (… repeated {left_out} more times in the last {now - state[0]:.0f}s)" if (
            state is not None and left_out) else ""
        self._kinds[kind] = [now, 0]
        self._emit(f"client error [{kind}]: {detail}{suffix}")

    def flush(self) -> None:
        """Write the counts still held back (at shutdown)."""
        now = self._now()
        for kind, (since, left_out) in self._kinds.items():
            if left_out:
                self._emit(f"client error [{kind}]: … repeated {int(left_out)} more times "
                           f"in the last {now - since:.0f}s")
        self._kinds.clear()


def client_error_kind(error: BaseException | None) -> str | None:
    """The kind of a client-caused failure, or None for anything else (a real bug keeps its
    traceback)."""
    if isinstance(error, ClientBodyTimeout):
        return "client_body_timeout"
    if isinstance(error, (HttpProcessingError, RequestPayloadError, MalformedBody)):
        # aiohttp's parser errors, and the payload errors it raises for a broken body.
        return "malformed_request"
    if isinstance(error, (ConnectionError, EOFError)):
        return "client_disconnect"
    return None


def describe(error: BaseException) -> str:
    """One short line: the exception's first line, without the repr of a whole buffer."""
    text = str(getattr(error, "message", None) or error or type(error).__name__)
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first[:200]

