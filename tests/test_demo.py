"""`canaryproxy demo`: every scenario ends as it should, for the right reason, and stops cleanly."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import subprocess
import sys

import aiohttp
import pytest

from canaryproxy.config import parse
from canaryproxy.sim.demo import SCENARIOS, demo_config_yaml, run_demo
from canaryproxy.errors import ConfigError
from tests.support import eventually

# Short holds keep the file around a minute; the rate gives the 5% stage its 60 canary requests in
# about 6 s. Each scenario must end well within DEADLINE. At 300 requests/s the demo's one event
# loop (simulators, proxy and users together) fell behind on a slow or busy machine: queueing then
# added the same delay to both versions and a canary twice as slow was promoted (2 of 3 runs).
RATE, HOLD, DEADLINE = 200.0, 3.0, 40.0
# The shadow copies add half the traffic again to the demo's one event loop. When it cannot keep
# up, the copies' answers carry the wait and the paired latency and TTFT tests count it against a
# healthy canary (at RATE, or on a machine whose cores are busy with more than the demo). At this
# rate, with a core of its own, the loop keeps up.
SHADOW_RATE = 150.0

# What must have fired (at least one of) for each regression: the rule or judge test on its metric.
# A guardrail also cuts structured outputs short, so schema checks may fire beside it.
EXPECTED = {
    "healthy": ("promoted", set()),
    "errors": ("rolled_back", {"errors", "judge:errors"}),
    "latency": ("rolled_back", {"latency", "judge:latency", "judge:latency_tail", "judge:log_latency"}),
    "tokens": ("rolled_back", {"tokens", "judge:tokens", "judge:estimated_tokens", "judge:output_length",
                          "judge:cost"}),
    "guardrail": ("rolled_back", {"guardrails", "judge:guardrail"}),
    "schema": ("rolled_back", {"schema", "judge:schema"}),
    "feedback": ("rolled_back", {"judge:negative_feedback"}),
    "shadow": ("rolled_back", {"judge:shadow_completion_tokens", "judge:shadow_output_length",
                               "judge:shadow_schema"}),
    "shadow-healthy": ("promoted", set()),
}
ALSO_ALLOWED = {"guardrail": {"schema", "judge:schema"}}


def test_every_scenario_has_an_expectation():
    assert set(EXPECTED) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", ["errors", "latency", "tokens", "guardrail", "schema", "feedback"])
async def test_a_regression_is_rolled_back_by_the_check_on_its_metric(scenario):
    out = io.StringIO()
    result = await asyncio.wait_for(run_demo(scenario, rate=RATE, hold=HOLD, out=out, seed=1), DEADLINE)
    outcome, expected = EXPECTED[scenario]
    assert result.outcome == outcome, result.reason
    assert set(result.fired) & expected, f"{scenario}: {result.fired} fired: {result.reason}"
    assert set(result.fired) <= expected | ALSO_ALLOWED.get(scenario, set()), result.reason
    assert result.regression_at is not None and result.decision["before"]["stage"] >= 2
    assert result.elapsed - result.regression_at < 20
    text = out.getvalue()
    assert "ROLLED BACK after" in text and result.reason in text and result.admin_url in text


async def test_a_healthy_canary_is_promoted_and_keep_running_goes_on_until_stopped():
    out, stop = io.StringIO(), asyncio.Event()
    demo = asyncio.create_task(run_demo("healthy", rate=RATE, hold=HOLD, out=out, keep_running=True,
                                        stop=stop, seed=1))
    await eventually(lambda: _status_lines_after_the_outcome(out.getvalue()), timeout=DEADLINE)
    stop.set()
    result = await asyncio.wait_for(demo, 10)
    assert result.outcome == "promoted" and result.fired == (), result.reason
    assert result.decision["trigger"] == "hold_passed" and result.regression_at is None
    assert "still running: traffic through http://127.0.0.1:" in out.getvalue()
    assert "promoted stage 3/3 weight 100%" in out.getvalue().splitlines()[-1]
    await _assert_closed(result.admin_url)


async def test_a_shadow_stage_rolls_back_a_worse_canary_before_any_user_is_served_by_it():
    out = io.StringIO()
    result = await asyncio.wait_for(run_demo("shadow", rate=SHADOW_RATE, hold=HOLD, out=out, seed=1), DEADLINE)
    outcome, expected = EXPECTED["shadow"]
    assert result.outcome == outcome, result.reason
    assert set(result.fired) & expected and set(result.fired) <= expected, result.reason
    assert result.regression_at is not None and result.regression_at < 0.5  # from the start
    assert result.decision["before"]["stage"] == 1 and "no user was served by the canary" in result.reason
    assert result.served_by_canary == 0 and result.answers > 100  # x-canary-version never said canary
    text = out.getvalue()
    assert "progressing stage 1/3 weight 0% shadow 50% | stable" in text and "| shadow pairs " in text
    assert "ROLLED BACK after" in text and "in the shadow stage" in text
    assert f"answers served by the canary: 0 of {result.answers}" in text


async def test_a_healthy_canary_passes_the_shadow_stage_and_is_promoted():
    out = io.StringIO()
    result = await asyncio.wait_for(run_demo("shadow-healthy", rate=SHADOW_RATE, hold=HOLD, out=out, seed=1),
                                    DEADLINE)
    assert result.outcome == "promoted" and result.fired == (), result.reason
    assert 0 < result.served_by_canary < result.answers  # live at 25% and 50% after the shadow
    lines = out.getvalue().splitlines()
    shadowed = [line for line in lines if "stage 1/3 weight 0% shadow 50%" in line]
    live = [line for line in lines if line.startswith("[") and " stage 2/3 weight 25%" in line]
    assert shadowed and live and lines.index(shadowed[-1]) < lines.index(live[0])


def _status_lines_after_the_outcome(text: str) -> list[str]:
    found = re.search(r"^(PROMOTED|ROLLED BACK|PAUSED) after", text, re.MULTILINE)
    return text[found.start():].splitlines()[4:] if found else []  # past the 4-line outcome block


async def test_the_live_view_redraws_in_place_and_shows_the_outcome():
    out, stop = io.StringIO(), asyncio.Event()
    # The screen, not a verdict: the rate and hold it was written for (its rows at 1-2 s).
    demo = asyncio.create_task(run_demo("errors", rate=300.0, hold=2.5, out=out, plain=False, color=True,
                                        stop=stop, seed=2))
    await eventually(lambda: out.getvalue().count("\x1b[H") >= 3, timeout=10)
    stop.set()
    result = await asyncio.wait_for(demo, 10)
    assert result.outcome == "interrupted"
    frames = out.getvalue().split("\x1b[H")
    assert frames[0] == "\x1b[?25l\x1b[2J" and out.getvalue().endswith("\x1b[?25h")
    last = frames[-1]
    assert "\x1b[36mprogressing\x1b[0m" in last and "\x1b[1;33mSTOPPED\x1b[0m after" in last
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last)
    assert "stages  5% [" in text and "error rate" in text and "ttft p95" in text
    assert "\n  errors " in text and "judge: 13 of 13 tests pass" in text
    assert result.reason.startswith("stopped at stage 1 of 3 at 5%") and result.reason in text.replace("\n       ", " ")
    await _assert_closed(result.admin_url)


async def _assert_closed(url: str) -> None:
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.get(url + "admin/status")


@pytest.mark.parametrize("rate, hold", [(200.0, 15.0), (50.0, 0.5), (1000.0, 60.0)])
def test_the_demo_config_is_valid_and_its_windows_fit_the_first_stage(rate, hold):
    config = parse(demo_config_yaml("http://127.0.0.1:1", "http://127.0.0.1:2", rate, hold), {})
    rollout = config.rollout
    assert [s.weight for s in rollout.stages] == [5, 25, 50] and {s.hold for s in rollout.stages} == {hold}
    _assert_the_rules_can_pass(rollout, rate * 0.05)  # the 5% stage can pass at all


@pytest.mark.parametrize("rate, hold", [(200.0, 15.0), (50.0, 0.5)])
def test_a_shadow_scenarios_plan_starts_with_a_shadow_stage_in_place_of_the_5_percent_one(rate, hold):
    config = parse(demo_config_yaml("http://127.0.0.1:1", "http://127.0.0.1:2", rate, hold, shadow=50), {})
    rollout = config.rollout
    assert [(s.shadow, s.weight) for s in rollout.stages] == [(50, None), (None, 25), (None, 50)]
    assert rollout.judge.enabled and config.shadow.keep_outputs and config.shadow.negligible == 0.3
    _assert_the_rules_can_pass(rollout, rate * 0.25)


def _assert_the_rules_can_pass(rollout, first_live_stage_rate: float) -> None:
    for rule in rollout.rules:
        share = 0.4 if rule.metric == "schema_failure_rate" else 1.0  # structured requests only
        assert rule.window * first_live_stage_rate * share >= rule.min_samples


async def test_an_unknown_scenario_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown scenario 'flaky'; choose one of healthy, errors"):
        await run_demo("flaky")


def test_ctrl_c_stops_the_demo_command_cleanly():
    command = [sys.executable, "-m", "canaryproxy", "demo", "--rate", "50", "--hold", "1s"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            first = process.stdout.readline()  # not a terminal: a plain line per second
            assert first.startswith("[") and "progressing stage 1/3" in first, first
            process.send_signal(signal.SIGINT)
            rest, errors = process.communicate(timeout=20)
        finally:
            process.kill()
    assert process.returncode == 0
    assert "STOPPED after" in rest and "Traceback" not in errors, errors
