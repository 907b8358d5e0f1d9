"""The shadow copy on the wire: the user's answer is stable's, byte for byte and on time, whatever the
copy does; every copy is bounded, never retried, and counted; pairs reach the evidence."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from canaryproxy.core.types import DiscardSink, Role
from canaryproxy.proxy.shadow import SHADOW_HEADER
from tests.shadow.conftest import CHAT, chat, held_handler, shadow_rollout, words_handler
from tests.support import eventually


@pytest.fixture
def make_proxy(make_proxy):
    """These tests count pairs exactly: the overload guard is off here (a GC pause in the test
    process could drop one, and the process runs the upstreams and clients too) and on in its own
    tests below."""
    async def factory(**sections):
        shadow = {"max_loop_lag": 0, "max_cpu": None, **sections.pop("shadow", {})}
        return await make_proxy(shadow=shadow, **sections)
    return factory


def pairs_of(proxy) -> int:
    return proxy.control.evidence.pairs.pairs


def dropped(proxy, reason: str) -> int:
    return proxy.data.shadow.counters.dropped[reason]


@pytest.mark.parametrize("stream", [False, True])
async def test_the_users_answer_is_byte_identical_with_shadowing_on(stable_and_canary, make_proxy, stream):
    stable, canary = stable_and_canary
    plain = await make_proxy()
    shadowing = await make_proxy(rollout=shadow_rollout())
    assert shadowing.data.splitter.shadow == 100 and shadowing.weight == 0
    without = await chat(plain.data_port, stream=stream, user="u1")
    with_ = await chat(shadowing.data_port, stream=stream, user="u1")
    assert with_[0] == without[0] == 200
    assert with_[2] == without[2]  # the body, byte for byte
    assert with_[1]["x-canary-version"] == "stable"
    drop = {"date", "x-request-id"}
    assert ({k.lower(): v for k, v in with_[1].items() if k.lower() not in drop}
            == {k.lower(): v for k, v in without[1].items() if k.lower() not in drop})
    await eventually(lambda: pairs_of(shadowing) == 1)
    copies = [seen for seen in canary.seen if seen.header(SHADOW_HEADER) == "1"]
    assert len(copies) == 1 and len(canary.seen) == 1  # the plain proxy's weight 0 sent the canary nothing
    assert copies[0].body == stable.seen[-1].body  # the same bytes stable got, read once from the client
    pair_outcomes = [o for o in shadowing.test_sink.outcomes if o.role is Role.SHADOW]
    assert len(pair_outcomes) == 1 and pair_outcomes[0].status == 200
    assert shadowing.control.evidence.pairs.same_text == 1


async def test_a_slow_shadow_delays_the_user_not_at_all(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    canary.on("POST", CHAT, words_handler(["slow"], delay=1.5))
    proxy = await make_proxy(rollout=shadow_rollout())
    started = time.monotonic()
    status, headers, body = await chat(proxy.data_port, stream=True, user="u1")
    assert status == 200 and b"[DONE]" in body
    assert time.monotonic() - started < 0.75  # the copy takes 1.5 s; the user waits for stable only
    assert pairs_of(proxy) == 0 and proxy.data.shadow.in_flight == 1
    await eventually(lambda: pairs_of(proxy) == 1, timeout=5)
    pairs = proxy.control.evidence.pairs
    assert pairs.texts_compared == 1 and pairs.same_text == 0


async def test_failing_shadows_leave_the_user_untouched_and_count_as_the_canarys(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    canary.on("POST", CHAT, words_handler([], status=500))
    proxy = await make_proxy(rollout=shadow_rollout())
    for i in range(5):
        status, headers, body = await chat(proxy.data_port, user=f"u{i}")
        assert status == 200 and b"42" in body
    await eventually(lambda: pairs_of(proxy) == 5)
    assert proxy.control.evidence.pairs.canary_failed_only == 5
    metrics = await metrics_text(proxy)
    assert 'canaryproxy_requests_total{status_class="5xx",version="shadow"} 5.0' in metrics
    assert 'canaryproxy_requests_total{status_class="5xx",version="canary"}' not in metrics
    assert "canaryproxy_shadow_pairs_total 5.0" in metrics


async def test_a_shadow_reset_mid_stream_or_never_answering_is_a_failed_pair(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary

    async def reset_mid_stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"par"}}]}\n\n')
        request.transport.abort()
        return response

    async def never(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    canary.on("POST", CHAT, reset_mid_stream)
    proxy = await make_proxy(rollout=shadow_rollout(), timeouts={"first_byte": "400ms"})
    status, _, body = await chat(proxy.data_port, stream=True, user="u1")
    assert status == 200 and b"[DONE]" in body
    await eventually(lambda: pairs_of(proxy) == 1)
    canary.on("POST", CHAT, never)
    status, _, body = await chat(proxy.data_port, user="u2")
    assert status == 200 and b"42" in body
    await eventually(lambda: pairs_of(proxy) == 2, timeout=5)
    assert proxy.control.evidence.pairs.canary_failed_only == 2
    kinds = sorted(str(o.error) for o in proxy.test_sink.outcomes if o.role is Role.SHADOW)
    assert kinds == ["first_byte_timeout", "reset"]


async def test_copies_beyond_the_cap_are_dropped_and_counted(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    release = asyncio.Event()
    canary.on("POST", CHAT, held_handler(release))
    proxy = await make_proxy(rollout=shadow_rollout(), shadow={"max_in_flight": 2})
    answers = await asyncio.gather(*(chat(proxy.data_port, user=f"u{i}") for i in range(10)))
    assert all(status == 200 for status, _, _ in answers)
    sender = proxy.data.shadow
    assert sender.in_flight == 2 and sender.counters.sent == 2
    assert dropped(proxy, "busy") == 8
    release.set()
    await eventually(lambda: sender.in_flight == 0)
    assert "canaryproxy_shadow_dropped_total{reason=\"busy\"} 8.0" in await metrics_text(proxy)


async def test_an_oversized_shadow_answer_drops_its_pair(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    canary.on("POST", CHAT, words_handler(["x" * 4000] * 4))
    proxy = await make_proxy(rollout=shadow_rollout(), shadow={"max_response_bytes": 4096})
    status, _, _ = await chat(proxy.data_port, user="u1")
    assert status == 200
    await eventually(lambda: dropped(proxy, "too_large") == 1)
    assert pairs_of(proxy) == 0


async def test_a_client_that_leaves_cancels_the_copy_and_is_not_the_canarys_failure(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"index":0,"delta":{"content":"one"}}]}\n\n')
        await asyncio.sleep(5)
        return response

    stable.on("POST", CHAT, slow_stream)
    canary.on("POST", CHAT, slow_stream)
    proxy = await make_proxy(rollout=shadow_rollout())
    with pytest.raises(asyncio.TimeoutError):
        await chat(proxy.data_port, stream=True, user="u1", timeout=0.5)
    await eventually(lambda: dropped(proxy, "client_gone") == 1)
    await eventually(lambda: len(canary.cancelled_at) == 1)  # the canary stopped generating
    assert pairs_of(proxy) == 0 and proxy.data.shadow.in_flight == 0
    assert proxy.data.shadow.counters.sent == 1


async def test_a_request_that_must_not_be_sent_twice_is_not_copied(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    proxy = await make_proxy(rollout=shadow_rollout())
    import aiohttp

    async with aiohttp.ClientSession() as client:
        for method in ("POST", "PUT", "DELETE"):
            async with client.request(method, f"http://127.0.0.1:{proxy.data_port}/orders/7", data=b"{}") as r:
                assert r.status == 200
        async with client.get(f"http://127.0.0.1:{proxy.data_port}/v1/models") as r:
            assert r.status == 200
    await eventually(lambda: len(canary.seen) == 1)  # the GET only
    assert canary.seen[0].method == "GET" and dropped(proxy, "unsafe") == 3


async def test_a_streamed_request_body_is_not_copied(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    stable.on("POST", "/v1/chat/completions", lambda request: _drain(request))
    proxy = await make_proxy(rollout=shadow_rollout(), limits={"max_request_body": "8MiB"})
    import aiohttp

    async def body():
        for _ in range(32):
            yield b"x" * 65536  # 2 MiB, chunked: past the 1 MiB the proxy buffers

    async with aiohttp.ClientSession() as client:
        async with client.post(f"http://127.0.0.1:{proxy.data_port}/v1/chat/completions", data=body()) as r:
            assert r.status == 200
    assert dropped(proxy, "streamed_body") == 1 and not canary.seen


async def _drain(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"ok": True})


async def test_the_copy_is_never_retried(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    proxy = await make_proxy(rollout=shadow_rollout(), upstreams={"canary": "http://127.0.0.1:9"})
    status, _, _ = await chat(proxy.data_port, user="u1")
    assert status == 200
    await eventually(lambda: pairs_of(proxy) == 1)
    assert proxy.data.shadow.exchange.retries == {"connect_refused": 0, "stale_connection": 0}
    assert proxy.forwarder.exchanges[Role.STABLE].retries["connect_refused"] == 0


async def metrics_text(proxy) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as r:
            return await r.text()


async def test_a_canary_that_falls_behind_costs_no_memory_growth(stable_and_canary, make_proxy):
    import gc
    import tracemalloc

    stable, canary = stable_and_canary
    release = asyncio.Event()
    canary.on("POST", CHAT, held_handler(release))
    proxy = await make_proxy(rollout=shadow_rollout(), shadow={"max_in_flight": 4}, sink=DiscardSink())

    async def burst() -> None:
        for _ in range(4):
            await asyncio.gather(*(chat(proxy.data_port, user=f"u{i}") for i in range(25)))

    await burst()  # warm: pools, caches, the copies in flight
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    await burst()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = [stat for stat in after.compare_to(before, "lineno")
              if "canaryproxy" in stat.traceback[0].filename and stat.size_diff > 0]
    grown = sum(stat.size_diff for stat in growth)
    assert proxy.data.shadow.in_flight == 4 and dropped(proxy, "busy") == 196
    assert grown < 32 * 1024, f"grew {grown} bytes over 100 dropped copies: {growth[:5]}"
    release.set()


async def test_shadow_spend_is_reported_apart(stable_and_canary, make_proxy):
    proxy = await make_proxy(rollout=shadow_rollout(),
                             pricing={"versions": {"stable": {"input": 1, "output": 2},
                                                   "canary": {"input": 1, "output": 2}}})
    for i in range(3):
        await chat(proxy.data_port, user=f"u{i}")
    await eventually(lambda: pairs_of(proxy) == 3)
    metrics = await metrics_text(proxy)
    cost = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines() if line.startswith("canaryproxy_cost_usd_total{")}
    assert cost['version="shadow"'] == cost['version="stable"'] > 0  # same answers, same price
    assert cost['version="canary"'] == 0.0  # the canary served no user


async def test_the_status_shows_the_shadow_apart(stable_and_canary, make_proxy):
    import aiohttp

    proxy = await make_proxy(rollout=shadow_rollout(),
                             pricing={"versions": {"canary": {"input": 1, "output": 2}}})
    for i in range(4):
        await chat(proxy.data_port, user=f"u{i}")
    await eventually(lambda: pairs_of(proxy) == 4)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/admin/status") as r:
            status = await r.json()
    shadow = status["shadow"]
    assert shadow["in_stage"] and shadow["share"] == 100 and status["stage"]["shadow"] == 100
    assert shadow["pairs"]["pairs"] == 4 and shadow["pairs"]["same_text_rate"] == 1.0
    assert shadow["window"]["requests"] == 4 and shadow["window"]["cost_usd"] > 0
    assert status["versions"]["canary"]["requests"] == 0  # the canary served no user
    assert shadow["this_process"]["paired"] == 4 and shadow["this_process"]["differing_samples"] == []


def _blocking(handler, seconds: float):
    """`handler`, after holding the event loop for `seconds`: CPU work a proxy cannot keep up with
    (the test's upstreams share the proxy's loop)."""
    async def blocked(request: web.Request) -> web.StreamResponse:
        time.sleep(seconds)  # holds the loop on purpose: this is the overload, not a wait
        return await handler(request)
    return blocked


async def test_while_the_loop_lags_no_copy_starts_and_no_overlapping_pair_is_compared(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    proxy = await make_proxy(rollout=shadow_rollout(), shadow={"max_loop_lag": "20ms"})
    for user in range(3):  # a loop that keeps up: compared
        assert (await chat(proxy.data_port, user=f"calm-{user}"))[0] == 200
    await eventually(lambda: pairs_of(proxy) == 3)
    stable.on("POST", CHAT, _blocking(words_handler(["the", "answer", "is", "42"]), 0.1))
    for user in range(5):
        status, headers, _ = await chat(proxy.data_port, user=f"busy-{user}")
        assert status == 200 and headers["x-canary-version"] == "stable"  # the user is served as ever
    await eventually(lambda: proxy.data.shadow.in_flight == 0)
    assert pairs_of(proxy) == 3 and dropped(proxy, "overloaded") == 5
    stable.on("POST", CHAT, words_handler(["the", "answer", "is", "42"]))
    await eventually(lambda: not proxy.data.shadow.overload.overloaded())
    assert (await chat(proxy.data_port, user="calm-again"))[0] == 200
    await eventually(lambda: pairs_of(proxy) == 4)  # back once the loop keeps up


async def test_both_sides_of_a_pair_are_timed_from_their_send(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    for upstream in stable_and_canary:  # both versions answer in 50 ms
        upstream.on("POST", CHAT, words_handler(["the", "answer", "is", "42"], delay=0.05))
    proxy = await make_proxy(rollout=shadow_rollout())
    body = b'{"model": "m-1", "messages": [{"role": "user", "content": "hi"}]}'
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.data_port)
    writer.write((f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nx-user-id: slow\r\n\r\n").encode() + body[:10])
    await writer.drain()
    await asyncio.sleep(0.3)  # a client slow to send its body: the user's time, not the version's
    writer.write(body[10:])
    assert b" 200 " in await reader.readline()
    writer.close()
    await eventually(lambda: pairs_of(proxy) == 1)
    user = next(o for o in proxy.test_sink.outcomes if o.role is Role.STABLE)
    assert user.latency >= 0.3  # the user's latency counts the body's arrival
    ratios = proxy.control.evidence.pairs.summary()["ratios"]
    # Timed from the request's arrival, stable would look 7x slower than the canary (0.35 s / 0.05 s).
    assert 0.5 < ratios["latency"]["canary_over_stable"] < 2.0, ratios


def _burning(handler, seconds: float):
    """`handler`, after `seconds` of CPU work for the users whose id starts with "burn"."""
    async def burn(request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-user-id", "").startswith("burn"):
            deadline = time.process_time() + seconds
            while time.process_time() < deadline:
                pass  # CPU the process spends: the core is full
        return await handler(request)
    return burn


async def test_while_the_core_is_full_no_copy_starts(stable_and_canary, make_proxy):
    stable, canary = stable_and_canary
    proxy = await make_proxy(rollout=shadow_rollout(), shadow={"max_cpu": 0.5})  # the loop's lateness not watched
    overload = proxy.data.shadow.overload
    stable.on("POST", CHAT, _burning(words_handler(["the", "answer", "is", "42"]), 0.4))
    for user in range(4):
        assert (await chat(proxy.data_port, user=f"burn-{user}"))[0] == 200
        if overload.cpu_share > 0.5:
            break
    assert overload.cpu_share > 0.5, overload.cpu_share
    assert (await chat(proxy.data_port, user="calm-1"))[0] == 200  # while the share says busy
    assert dropped(proxy, "overloaded") >= 1
    await eventually(lambda: not overload.overloaded())  # the next span is idle
    before = pairs_of(proxy)
    assert (await chat(proxy.data_port, user="calm-2"))[0] == 200
    await eventually(lambda: pairs_of(proxy) == before + 1)
