"""`canaryproxy status` and the demo's screen (`render_status`) on a real proxy's /admin/status: the
shadow section of a plan with a shadow stage, and none for a plan without one."""

from __future__ import annotations

import asyncio

import aiohttp

from canaryproxy.sim.status_view import render_status
from tests.shadow.conftest import CHAT, chat, shadow_rollout, words_handler
from tests.support import eventually

STABLE_WORDS = ["the", "answer", "is", "42"]
CANARY_WORDS = ["the", "answer", "is", "42", "and", "more"]  # 1.5x the tokens


async def admin_status(proxy) -> dict:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/admin/status") as response:
            assert response.status == 200
            return await response.json()


async def test_a_shadow_stage_shows_what_was_copied_compared_and_judged(upstreams, make_proxy):
    stable, canary = upstreams
    stable.on("POST", CHAT, words_handler(STABLE_WORDS))
    canary.on("POST", CHAT, words_handler(CANARY_WORDS, delay=0.3))
    # One copy at a time: users arriving together while it runs have theirs dropped (busy).
    proxy = await make_proxy(rollout=shadow_rollout(min_requests=30), shadow={"max_in_flight": 1},
                             pricing={"versions": {"canary": {"input": 1.0, "output": 2.0}}})
    together = await asyncio.gather(*(chat(proxy.data_port, user=f"u{i}") for i in range(4)))
    assert [status for status, _, _ in together] == [200] * 4
    await eventually(lambda: proxy.data.shadow.in_flight == 0, timeout=5)
    for i in range(3):
        await chat(proxy.data_port, user=f"v{i}")
        await eventually(lambda: proxy.data.shadow.in_flight == 0, timeout=5)

    text = render_status(await admin_status(proxy))
    lines = text.splitlines()
    assert lines[0] == "phase progressing   shadow 100% (weight 0%)   stage 1/2"
    assert "pairs compared 4/30" in lines[1]
    shadow = lines.index("shadow: copying 100% of the requests to the canary; users get stable's answers")
    section = lines[shadow:]
    assert section[1] == "  pairs compared 4; this process: copying 100%, 4 sent, 0 in flight (max 1), dropped busy 3"
    assert section[2] == "  same text 0.0% of 4 compared, mean word overlap 66.7%"
    assert section[3].startswith("  canary/stable: tokens 1.50x, output length 1.56x, latency ")  # latency: 0.3 s more
    # The shadow's own spend: 4 answers of 12 prompt and 6 completion tokens at $1 and $2 per million.
    assert section[4].startswith("  shadow answers in the last 1m0s: 4, latency p95 3")
    assert section[4].endswith(", 6 output tokens each, cost $0.00010 in all")
    assert section[5].startswith("  failed only: canary 0, stable 0")
    assert section[6].split() == ["paired", "test", "canary", "worse", "stable", "worse", "compared", "status",
                                  "odds", "bound"]
    rows = {line.split()[0]: line.split()[1:] for line in section[7:15]}
    assert rows["completion_tokens"][:4] == ["4", "0", "4", "pass"]
    assert rows["failed"][:4] == ["0", "0", "4", "pass"] and set(rows) >= {"schema", "ttft", "latency"}
    assert section[15].startswith("  no worse: no   (each test: odds bound ≤ 1.5x, or canary worse in ≤ 1% more")
    assert max(len(line) for line in section) <= 100


async def test_a_plan_without_a_shadow_stage_has_no_shadow_section(upstreams, make_proxy):
    stable, canary = upstreams
    for upstream in upstreams:
        upstream.on("POST", CHAT, words_handler(STABLE_WORDS))
    proxy = await make_proxy(rollout={"stages": [{"weight": 5, "hold": "1h"}], "evaluate_every": "1h"})
    await chat(proxy.data_port, user="u1")
    status = await admin_status(proxy)
    assert status["shadow"] is None
    text = render_status(status)
    assert text.startswith("phase progressing   weight 5%   stage 1/1") and "canary requests " in text
    assert "shadow" not in text
