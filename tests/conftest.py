from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import HealthCheck, settings

from canaryproxy.server import CanaryProxy
from tests.support import ListSink, Upstream, proxy_config

# On a fresh machine Hypothesis builds its Unicode tables the first time a test draws text (about a
# second, once), and CI machines are shared: time limits on example generation and on each example
# would fail tests for the machine's sake, not the code's. What a test checks is unchanged.
settings.register_profile("canaryproxy", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("canaryproxy")


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    stable, canary = Upstream("stable"), Upstream("canary")
    await stable.start()
    await canary.start()
    yield stable, canary
    await stable.stop()
    await canary.stop()


ProxyFactory = Callable[..., Awaitable[CanaryProxy]]


@pytest.fixture
async def make_proxy(upstreams) -> AsyncIterator[ProxyFactory]:
    """Start a CanaryProxy in this event loop in front of the two test upstreams (or given URLs)."""
    started: list[CanaryProxy] = []

    async def factory(stable_url: str | None = None, canary_url: str | None = None,
                      sink=None, **sections) -> CanaryProxy:
        stable, canary = upstreams
        config = proxy_config(stable_url or stable.url, canary_url or canary.url, **sections)
        sink = sink if sink is not None else ListSink()
        proxy = CanaryProxy(config, sink=sink)
        proxy.test_sink = sink  # every outcome the proxy produced, for assertions
        await proxy.start()
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        await proxy.shutdown()
