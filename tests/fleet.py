"""Several real `canaryproxy run` processes sharing one rollout through a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp

from tests.redis_server import RedisServer
from tests.test_cli import free_port
from tests.test_restart_and_cli import ProxyProcess

TOKEN = "t0ken"


def free_ports_in_a_row(n: int) -> int:
    """The first of `n` consecutive free loopback ports (`run --workers N` uses admin port + i)."""
    import socket

    while True:
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


class Replica(ProxyProcess):
    """One `canaryproxy run` of a fleet, with its data port and name."""

    def __init__(self, name: str, config: Path, port: int, admin_port: int) -> None:
        super().__init__(config, admin_port)
        self.name, self.port = name, port
        self.stopped = False  # SIGSTOPped: takes no traffic and answers nothing

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{self.admin_port}{path}",
                                  timeout=aiohttp.ClientTimeout(total=5)) as r:
                return await r.json() if r.content_type == "application/json" else await r.text()

    async def command(self, op: str, **body: Any) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as client:
            async with client.post(f"http://127.0.0.1:{self.admin_port}/admin/{op}", json=body,
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                return r.status, await r.json()

    async def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            self.stopped = sig == signal.SIGSTOP

    async def stop(self) -> None:
        if self.stopped:
            await self.signal(signal.SIGCONT)
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


class Fleet:
    """`n` replicas of one rollout; `rollout_yaml` is the rollout section, indented two spaces."""

    def __init__(self, directory: Path, redis: RedisServer, stable: str, canary: str, rollout_yaml: str,
                 n: int = 3, lease: str = "1s", grace: str = "2s", extra: str = "") -> None:
        self.redis = redis
        self.replicas: list[Replica] = []
        for i in range(n):
            port, admin_port = free_port(), free_ports_in_a_row(2)
            config = directory / f"replica{i}.yaml"
            config.write_text(f"""
listen: 127.0.0.1:{port}
admin: {{listen: "127.0.0.1:{admin_port}", token: "${{CANARYPROXY_ADMIN_TOKEN}}"}}
upstreams: {{stable: "{stable}", canary: "{canary}"}}
access_log: false
coordination:
  backend: redis
  url: {redis.url}
  rollout: test
  replica: r{i}
  lease: {lease}
  grace: {grace}
rollout:
{rollout_yaml}
state:
  path: {directory / f"state{i}" / "unused.json"}
{extra}
""")
            self.replicas.append(Replica(f"r{i}", config, port, admin_port))

    async def start(self) -> None:
        await asyncio.gather(*(r.start() for r in self.replicas))

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas))

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.running and not r.stopped]

    async def statuses(self, replicas: list[Replica] | None = None) -> list[dict]:
        return list(await asyncio.gather(*(r.status() for r in (replicas or self.live))))

    async def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float = 30,
                       replicas: list[Replica] | None = None) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            statuses = await self.statuses(replicas)
            if predicate(statuses):
                return statuses
            assert time.monotonic() < deadline, f"condition not met; last statuses {statuses}"
            await asyncio.sleep(0.05)

    async def leader(self, timeout: float = 15) -> Replica:
        statuses = await self.wait_for(lambda s: sum(x["coordination"]["leads"] for x in s) == 1, timeout)
        return next(r for r, s in zip(self.live, statuses) if s["coordination"]["leads"])


async def spread_traffic(replicas: list[Replica], count: int, *, concurrency: int = 12,
                         first_user: int = 0) -> dict[str, int]:
    """`count` requests, round-robin over `replicas`, each from its own user (numbered from
    `first_user`); returns counts by "status:version" and by "replica:version"."""
    counts: dict[str, int] = {}
    queue = list(range(count))

    async def worker(client: aiohttp.ClientSession) -> None:
        while queue:
            i = queue.pop()
            replica = replicas[i % len(replicas)]
            try:
                async with client.post(f"http://127.0.0.1:{replica.port}/v1/chat/completions",
                                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                                       headers={"X-User-Id": f"user-{first_user + i}"}) as r:
                    await r.read()
                    served = r.headers.get("X-Canary-Version", "?")
                    key = f"{r.status}:{served}"
                    counts[f"{replica.name}:{served}"] = counts.get(f"{replica.name}:{served}", 0) + 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                key = type(exc).__name__
            counts[key] = counts.get(key, 0) + 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return counts
