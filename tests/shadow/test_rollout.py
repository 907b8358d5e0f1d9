"""A shadow stage decides: a worse canary is rolled back with no user request served by it, a
healthy one moves on to the live stages. Real proxy, real upstreams, the real controller."""

from __future__ import annotations

import asyncio
import itertools

from canaryproxy.core.stages import Phase
from canaryproxy.proxy.shadow import SHADOW_HEADER
from tests.shadow.conftest import CHAT, chat, shadow_rollout, words_handler
from tests.support import eventually

FAST = {"evaluate_every": "50ms", "min_requests": 30, "max_hold": "1h"}
# This process runs the clients and the upstreams beside the proxy, and keeps its core busy: the
# CPU guard (tests/shadow/test_dataplane.py tests it) would pause the copies the stage needs.
SHARED_CORE = {"max_cpu": None}


async def drive(proxy, until, *, concurrency: int = 8, limit: int = 3000) -> list[str]:
    """Send requests from distinct users until `until()` or `limit`; the served-by header of each."""
    served: list[str] = []
    users = itertools.count()

    async def one_user() -> None:
        while not until() and len(served) < limit:
            status, headers, _ = await chat(proxy.data_port, user=f"user-{next(users)}")
            assert status == 200
            served.append(headers["x-canary-version"])

    await asyncio.gather(*(one_user() for _ in range(concurrency)))
    return served


async def test_a_worse_canary_is_rolled_back_in_the_shadow_stage_with_no_user_served(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    canary.on("POST", CHAT, words_handler(["the", "answer", "is", "42", "and", "some", "more", "words"]))
    proxy = await make_proxy(rollout=shadow_rollout(hold="100ms", **FAST), shadow=SHARED_CORE)
    controller = proxy.controller
    served = await drive(proxy, lambda: controller.state.phase is not Phase.PROGRESSING)
    assert controller.state.phase is Phase.ROLLED_BACK, controller.state
    assert set(served) == {"stable"}  # x-canary-version never said canary
    assert all(seen.header(SHADOW_HEADER) == "1" for seen in canary.seen)  # the canary only saw copies
    assert proxy.data.splitter.shadow == 0 and proxy.weight == 0
    decision = next(d for d in controller.decisions if d["after"] and d["after"]["phase"] == "rolled_back")
    assert "judge:shadow_" in decision["summary"] and "no user was served by the canary" in decision["summary"]
    assert "(shadow 100%)" in decision["summary"]
    pairs = proxy.control.evidence.pairs.summary()
    assert pairs["ratios"]["completion_tokens"]["canary_over_stable"] == 2.0


async def test_a_healthy_canary_moves_on_from_the_shadow_to_the_live_stage(stable_and_canary, make_proxy):
    proxy = await make_proxy(rollout=shadow_rollout(hold="100ms", **FAST), shadow=SHARED_CORE)
    controller = proxy.controller
    await drive(proxy, lambda: controller.state.stage >= 1 or controller.state.phase is not Phase.PROGRESSING)
    assert controller.state.phase is Phase.PROGRESSING and controller.state.stage == 1, controller.state
    assert proxy.weight == 5 and proxy.data.splitter.shadow == 0
    decision = next(d for d in controller.decisions if d["after"] and d["after"]["stage"] == 2)
    assert "the paired tests show the canary no worse" in decision["summary"]
    await eventually(lambda: proxy.data.shadow.in_flight == 0)
    served = await drive(proxy, lambda: False, limit=400)
    assert "canary" in served  # live at 5%


async def test_the_paired_tests_are_configured_from_rollout_judge_shadow_tests(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary  # a canary answering twice as long, as in the first test
    canary.on("POST", CHAT, words_handler(["the", "answer", "is", "42", "and", "some", "more", "words"]))
    off = {"enabled": False}
    judge = {"enabled": True, "shadow_tests": {"completion_tokens": off, "output_length": off}}
    proxy = await make_proxy(rollout=shadow_rollout(hold="100ms", **FAST, judge=judge), shadow=SHARED_CORE)
    controller = proxy.controller
    await drive(proxy, lambda: controller.state.stage >= 1 or controller.state.phase is not Phase.PROGRESSING)
    # The two tests that roll it back above are off: the rest show it no worse, so it moves on.
    assert controller.state.phase is Phase.PROGRESSING and controller.state.stage == 1, controller.state
    assert proxy.control.evidence.pairs.summary()["ratios"]["completion_tokens"]["canary_over_stable"] == 2.0
