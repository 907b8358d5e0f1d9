"""A real Prometheus scrapes /metrics and answers PromQL; promtool accepts the exposition."""

import asyncio
import os
import shutil
import time

import aiohttp
import pytest

from tests.test_cli import free_port

# CI installs Prometheus (.ci/run) and sets this, so there a missing binary fails instead of skipping.
REQUIRED = os.environ.get("CANARYPROXY_REQUIRE_SERVICES") == "1"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if REQUIRED:
            pytest.fail(f"{name} is not installed (apt-get install prometheus)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return path


async def metrics_text(proxy) -> str:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            return await r.text()


async def drive(proxy, n: int) -> None:
    async with aiohttp.ClientSession() as client:
        for i in range(n):
            async with client.get(f"http://127.0.0.1:{proxy.data_port}/v1/models",
                                  headers={"x-user-id": f"u{i}"}) as r:
                await r.read()


async def test_promtool_accepts_the_metrics(upstreams, make_proxy):
    promtool = binary("promtool")
    proxy = await make_proxy(routing={"weight": 50})
    await drive(proxy, 20)
    process = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate((await metrics_text(proxy)).encode())
    assert process.returncode == 0, out.decode()


async def test_prometheus_scrapes_the_proxy_and_answers_the_canary_request_rate(upstreams, make_proxy, tmp_path):
    prometheus = binary("prometheus")
    proxy = await make_proxy(routing={"weight": 50})
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: canaryproxy
    static_configs: [{{targets: ["127.0.0.1:{proxy.admin_port}"]}}]
""")
    process = await asyncio.create_subprocess_exec(
        prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    traffic = asyncio.create_task(_steady_traffic(proxy))
    try:
        query = 'sum(rate(canaryproxy_requests_total{version="canary"}[5s]))'
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as client:
            while True:
                try:
                    async with client.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}) as r:
                        result = (await r.json())["data"]["result"]
                        if result and float(result[0]["value"][1]) > 0:
                            break
                except aiohttp.ClientConnectorError:
                    pass
                assert time.monotonic() < deadline, "Prometheus never reported a canary request rate"
                await asyncio.sleep(0.2)
            async with client.get(f"http://127.0.0.1:{port}/api/v1/targets") as r:
                target = (await r.json())["data"]["activeTargets"][0]
                assert target["health"] == "up", target
    finally:
        traffic.cancel()
        process.terminate()
        await process.wait()


async def _steady_traffic(proxy) -> None:
    while True:
        await drive(proxy, 10)
        await asyncio.sleep(0.05)
