"""Finished requests handed to the outcome sink and the access log at the end of the loop step.

Recording one outcome means the windows, the totals, the outcome feed and an access-log line: a
few dozen small calls through code the request itself never ran. Done for each request as it
ends, that code and its data are cold every time; done for all the requests that ended in one
event-loop step, one after the other, they stay warm, and the same work costs a fraction
(bench/README.md, "Recording at the end of the step").

The flush is queued (`call_soon`) in the step where the first of the batch ended and runs before
the loop polls for I/O again, so whatever arrives after a response was sent (a scrape of /metrics,
an admin call, a feedback post, the next request of the same client) sees that response counted,
as before. A timer or task wake-up already queued for the same turn of the loop may run before
the flush and miss an outcome that ended microseconds earlier: the controller's evaluations are
such timers, and nothing they decide depends on a request that was not causally before them.
`flush()` also runs at shutdown.
"""

from __future__ import annotations

import asyncio
import logging

from canaryproxy.core.types import Outcome, OutcomeSink
from canaryproxy.proxy.accesslog import AccessLog

log = logging.getLogger("canaryproxy.proxy")


class StepRecorder:
    __slots__ = ("_sink", "_access_log", "_pending", "_loop")

    def __init__(self, sink: OutcomeSink, access_log: AccessLog | None) -> None:
        self._sink = sink
        self._access_log = access_log
        self._pending: list[tuple[Outcome, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def record(self, outcome: Outcome, path: str) -> None:
        """Record `outcome` (of a request for `path`) at the end of this loop step."""
        pending = self._pending
        if not pending:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)
        pending.append((outcome, path))

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        record = self._sink.record
        access_log = self._access_log
        for outcome, path in pending:
            try:
                record(outcome)
            except Exception:  # a sink must never take the data plane down with it
                log.exception("outcome sink failed")
            if access_log is not None:
                try:
                    access_log.record(outcome, path)
                except Exception:  # nor may a log line, or the rest of the batch would be lost
                    log.exception("access log failed")
