"""Finished requests reach the sinks and the access log at the end of the loop step, in order."""

from __future__ import annotations

import asyncio
import os

from canaryproxy.core.types import Outcome, Role
from canaryproxy.proxy.accesslog import AccessLog
from canaryproxy.proxy.recording import StepRecorder


class Kept:
    def __init__(self, fail_on: str | None = None) -> None:
        self.outcomes: list[Outcome] = []
        self.fail_on = fail_on

    def record(self, outcome: Outcome) -> None:
        if outcome.request_id == self.fail_on:
            raise RuntimeError("a broken sink")
        self.outcomes.append(outcome)


def outcome(request_id: str) -> Outcome:
    return Outcome(Role.STABLE, 1.0, request_id=request_id, method="GET", status=200)


async def test_a_steps_outcomes_are_recorded_together_when_it_ends() -> None:
    sink = Kept()
    recorder = StepRecorder(sink, None)
    recorder.record(outcome("a"), "/x")
    recorder.record(outcome("b"), "/x")
    assert sink.outcomes == []  # still this step
    await asyncio.sleep(0)  # one turn of the loop: the queued flush has run
    assert [o.request_id for o in sink.outcomes] == ["a", "b"]
    recorder.record(outcome("c"), "/x")
    await asyncio.sleep(0)
    assert [o.request_id for o in sink.outcomes] == ["a", "b", "c"]


async def test_a_failing_sink_loses_neither_the_other_outcomes_nor_their_log_lines(tmp_path) -> None:
    sink = Kept(fail_on="b")
    path = tmp_path / "access.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        access_log = AccessLog(fd)
        recorder = StepRecorder(sink, access_log)
        for request_id in ("a", "b", "c"):
            recorder.record(outcome(request_id), "/v1/chat/completions")
        recorder.flush()  # as at shutdown: no turn of the loop needed
        access_log.flush()
    finally:
        os.close(fd)
    assert [o.request_id for o in sink.outcomes] == ["a", "c"]
    lines = path.read_text().splitlines()
    assert [line.rsplit("req=", 1)[1] for line in lines] == ["a", "b", "c"]
