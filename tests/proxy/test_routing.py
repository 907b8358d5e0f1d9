"""Routing gives a Route (role, key hash, weight in force); the forwarder builds the Outcome from it
and stamps it with the injected wall clock."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from canaryproxy.clock import ManualClock
from canaryproxy.core.splitter import Splitter, key_hash
from canaryproxy.core.types import Role
from canaryproxy.proxy.headers import TrustedProxies
from canaryproxy.proxy.routing import Route, Router
from canaryproxy.server import CanaryProxy
from tests.support import ListSink, proxy_config


def router(weight: float) -> Router:
    return Router(Splitter(weight), ["header:x-user-id"], TrustedProxies(), override_header="x-canary")


def test_a_route_names_the_role_the_key_hash_and_the_weight() -> None:
    request = make_mocked_request("GET", "/", headers={"x-user-id": "u1"})
    assert router(100).route(request) == Route(Role.CANARY, key_hash("u1"), 100.0)
    assert router(0).route(request) == Route(Role.STABLE, key_hash("u1"), 0.0)
    assert router(25).route(make_mocked_request("GET", "/")).key_hash is None


def test_kept_key_hashes_are_the_hashes_and_stay_bounded(monkeypatch) -> None:
    from canaryproxy.proxy import routing as routing_module

    monkeypatch.setattr(routing_module, "_HASHES_KEPT", 64)
    routing = router(50)
    first = make_mocked_request("GET", "/", headers={"x-user-id": "u1"})
    assert routing.route(first).key_hash == routing.route(first).key_hash == key_hash("u1")
    for number in range(200):  # a flood of new users
        request = make_mocked_request("GET", "/", headers={"x-user-id": f"flood-{number}"})
        assert routing.route(request).key_hash == key_hash(f"flood-{number}")
        assert len(routing._hashes) <= 64
    assert routing.route(first) == Route(routing.splitter.choose(key_hash("u1")), key_hash("u1"), 50.0)


def test_the_override_header_forces_the_role_and_keeps_the_weight() -> None:
    request = make_mocked_request("GET", "/", headers={"x-user-id": "u1", "x-canary": " Canary "})
    assert router(0).route(request) == Route(Role.CANARY, key_hash("u1"), 0.0)


def test_a_route_is_a_value() -> None:
    route = router(10).route(make_mocked_request("GET", "/"))
    with pytest.raises(AttributeError):  # frozen: no field can be set
        route.weight = 50.0  # type: ignore[misc]


async def test_the_outcome_is_built_from_the_route_and_the_wall_clock(upstreams):
    stable, canary = upstreams
    clock = ManualClock(monotonic=500.0, wall=1_800_000_123.5)
    sink = ListSink()
    proxy = CanaryProxy(proxy_config(stable.url, canary.url, routing={"weight": 30, "sticky": ["header:x-user-id"]}),
                        clock=clock, sink=sink)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{proxy.data_port}/", headers={"x-user-id": "u7"}) as r:
                assert r.status == 200
    finally:
        await proxy.shutdown()
    [outcome] = sink.outcomes
    assert (outcome.routed_at, outcome.started) == (1_800_000_123.5, 500.0)
    assert (outcome.weight, outcome.key_hash) == (30.0, key_hash("u7"))
    assert outcome.role is Router(Splitter(30), ["header:x-user-id"], TrustedProxies()).route(
        make_mocked_request("GET", "/", headers={"x-user-id": "u7"})).role
