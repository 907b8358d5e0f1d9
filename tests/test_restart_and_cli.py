"""A real `canaryproxy run` process: kill -9 mid-rollout and restart; the CLI steering it."""

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import Upstream, wait_until_ready
from tests.test_cli import free_port


async def run_cli(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "canaryproxy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out.decode(), err.decode()


class ProxyProcess:
    def __init__(self, config: Path, admin_port: int) -> None:
        self.config, self.admin_port = config, admin_port
        self.process: asyncio.subprocess.Process | None = None
        self.log = config.with_suffix(".log")
        self.run_args: list[str] = []  # more arguments of `canaryproxy run`

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "canaryproxy", "run", "--config", str(self.config), *self.run_args,
                stdout=log, stderr=log, env={**os.environ, "CANARYPROXY_ADMIN_TOKEN": "t0ken"},
            )
        await wait_until_ready(self.admin_port, self.process, self.log.read_text)

    async def status(self) -> dict:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{self.admin_port}/admin/status") as r:
                return await r.json()

    async def wait_for(self, predicate, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status()
            if predicate(status):
                return status
            assert time.monotonic() < deadline, f"condition not met; last status {status}"
            await asyncio.sleep(0.05)

    async def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), 20)


@pytest.fixture
async def rig(tmp_path):
    upstream = Upstream("both")
    await upstream.start()
    port, admin_port = free_port(), free_port()
    config = tmp_path / "canaryproxy.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{port}
admin: {{listen: "127.0.0.1:{admin_port}", token: "${{CANARYPROXY_ADMIN_TOKEN}}"}}
upstreams: {{stable: "{upstream.url}", canary: "{upstream.url}"}}
access_log: false
rollout:
  stages: [{{weight: 10, hold: 500ms}}, {{weight: 40, hold: 60s}}, {{weight: 100, hold: 1s}}]
  min_requests: 1
  evaluate_every: 100ms
  judge: {{enabled: false}}
state:
  path: {tmp_path / "state" / "state.json"}
""")
    proxy = ProxyProcess(config, admin_port)

    async def traffic():
        # A trickle of requests so each stage sees its minimum of canary requests.
        async with aiohttp.ClientSession() as client:
            i = 0
            while True:
                try:
                    async with client.get(f"http://127.0.0.1:{port}/", headers={"x-user-id": f"u{i % 20}"}) as r:
                        await r.read()
                except aiohttp.ClientError:
                    pass
                i += 1
                await asyncio.sleep(0.01)

    sender = asyncio.create_task(traffic())
    yield proxy, tmp_path
    sender.cancel()
    if proxy.process is not None and proxy.process.returncode is None:
        proxy.process.kill()
        await proxy.process.wait()
    await upstream.stop()


async def test_kill_9_in_stage_2_and_restart_resumes_stage_2_with_the_remaining_hold(rig):
    proxy, tmp_path = rig
    await proxy.start()
    status = await proxy.wait_for(lambda s: s["stage"]["number"] == 2 and s["stage"]["elapsed"] > 1.0)
    elapsed_before = status["stage"]["elapsed"]
    assert await proxy.kill(signal.SIGKILL) == -signal.SIGKILL

    saved = json.loads((tmp_path / "state" / "state.json").read_text())
    assert saved["rollout"]["stage"] == 1 and saved["rollout"]["weight"] == 40

    await proxy.start()
    status = await proxy.status()
    assert status["phase"] == "progressing"
    assert status["stage"]["number"] == 2 and status["weight"] == 40
    # The hold continues where it stopped (minus at most one evaluation interval), not from zero.
    assert status["stage"]["elapsed"] >= elapsed_before - 0.25
    assert status["stage"]["hold_left"] <= 60 - elapsed_before + 0.25
    restart = [d for d in status_decisions(await decisions(proxy)) if d["trigger"] == "restart"]
    assert restart, "the restart is in the decision record"


async def decisions(proxy) -> dict:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{proxy.admin_port}/admin/decisions") as r:
            return await r.json()


def status_decisions(payload: dict) -> list[dict]:
    return payload["decisions"]


async def test_the_cli_shows_and_steers_the_rollout(rig):
    proxy, tmp_path = rig
    await proxy.start()
    await proxy.wait_for(lambda s: s["stage"]["number"] == 2)
    admin = ["--admin", f"http://127.0.0.1:{proxy.admin_port}"]
    token = {"CANARYPROXY_ADMIN_TOKEN": "t0ken", "USER": "carol"}

    code, out, err = await run_cli("status", *admin)
    assert code == 0, err
    assert "phase progressing" in out and "stage 2/3" in out and "weight 40%" in out
    assert "stable" in out and "canary" in out

    code, out, err = await run_cli("status", "--json", *admin)
    assert code == 0 and json.loads(out)["stage"]["number"] == 2

    code, out, err = await run_cli("set-weight", "12.5", *admin)  # no token
    assert code == 2 and "Bearer" in err

    code, out, err = await run_cli("set-weight", "12.5", "--reason", "investigating", *admin, env=token)
    assert code == 0, err
    assert "phase paused" in out and "weight 12.5%" in out

    code, out, err = await run_cli("resume", *admin, env=token)
    assert code == 0 and "weight 40%" in out

    code, out, err = await run_cli("rollback", "--reason", "bad answers in review", *admin, env=token)
    assert code == 0 and "rolled_back" in out

    code, out, err = await run_cli("pause", *admin, env=token)
    assert code == 2 and "cannot pause: the rollout is rolled_back" in err

    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [e["action"] for e in audit] == ["weight", "weight", "resume", "rollback", "pause"]
    assert audit[1]["actor"] == "carol" and audit[3]["reason"] == "bad answers in review"

    code, out, err = await run_cli("status", "--admin", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "cannot reach the admin API" in err
