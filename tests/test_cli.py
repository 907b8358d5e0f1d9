"""The command line as a user runs it: real processes, real signals."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support import Upstream, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent


def canaryproxy(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "canaryproxy", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, **kwargs,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_example_config_is_valid():
    result = canaryproxy("check-config", str(ROOT / "config" / "example.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_the_example_configs_commented_shadow_stage_is_valid_too(tmp_path):
    example = (ROOT / "config" / "example.yaml").read_text()
    commented = "    # - {shadow: 20, hold: 10m}\n"
    assert example.count(commented) == 1
    path = tmp_path / "shadow.yaml"
    path.write_text(example.replace(commented, "    - {shadow: 20, hold: 10m}\n"))
    result = canaryproxy("check-config", str(path))
    assert result.returncode == 0, result.stderr


def test_a_bad_config_names_each_field_and_exits_2_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        upstreams: {stable: "http://127.0.0.1:1", canary: "nope"}
        routing: {weight: 101, stickyy: []}
        timeouts: {idle: soon}
        admin: {listen: "0.0.0.0:9090"}
    """))
    result = canaryproxy("check-config", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for expected in ("upstreams.canary: expected an http:// or https:// URL",
                     "routing.weight: Input should be less than or equal to 100",
                     "routing.stickyy: unknown key", "timeouts.idle: expected a duration"):
        assert expected in result.stderr, result.stderr


def test_a_public_admin_listener_without_a_token_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text('upstreams: {stable: "http://127.0.0.1:1", canary: "http://127.0.0.1:2"}\n'
                      'admin: {listen: "0.0.0.0:9090", token: "${TOKEN:-}"}\n')
    result = canaryproxy("check-config", str(config))
    assert result.returncode == 2 and "admin.token" in result.stderr
    result = canaryproxy("check-config", str(config), env={"TOKEN": "s3cret"})
    assert result.returncode == 0, result.stderr


def test_missing_file_and_invalid_yaml_are_clear(tmp_path):
    result = canaryproxy("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "no such file" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: [\n")
    result = canaryproxy("check-config", str(broken))
    assert result.returncode == 2 and "not valid YAML at line" in result.stderr


def test_refuses_to_run_on_the_pure_python_parser(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f'listen: "127.0.0.1:{free_port()}"\nadmin: {{listen: "127.0.0.1:{free_port()}"}}\n'
                      'upstreams: {stable: "http://127.0.0.1:1", canary: "http://127.0.0.1:2"}\n')
    result = canaryproxy("run", "--config", str(config), env={"AIOHTTP_NO_EXTENSIONS": "1"})
    assert result.returncode == 1
    assert "pure-Python HTTP parser" in result.stderr and "Traceback" not in result.stderr


async def test_sigterm_drains_in_flight_streams_and_exits_0(tmp_path):
    upstream = Upstream("stable")

    async def stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(10):
            await response.write(b"data: %d\n\n" % i)
            await asyncio.sleep(0.05)
        await response.write(b"data: [DONE]\n\n")
        return response

    upstream.on("GET", "/sse", stream)
    await upstream.start()
    port, admin_port = free_port(), free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f'listen: "127.0.0.1:{port}"\nadmin: {{listen: "127.0.0.1:{admin_port}"}}\n'
                      f'upstreams: {{stable: "{upstream.url}", canary: "{upstream.url}"}}\n'
                      'timeouts: {drain: 10s}\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "canaryproxy", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until_ready(admin_port, process)
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{port}/sse") as r:
                await r.content.readuntil(b"\n\n")
                process.send_signal(signal.SIGTERM)
                body = await r.read()
        assert body.endswith(b"data: [DONE]\n\n")
        code = await asyncio.wait_for(process.wait(), 15)
        stderr = (await process.stderr.read()).decode()
        assert code == 0, stderr
        assert "draining" in stderr
        # The access log line of the drained stream was flushed before exit, with its request id.
        access = [line for line in stderr.splitlines() if " GET /sse 200 " in line]
        assert len(access) == 1 and " req=" in access[0] and " stable " in access[0]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await upstream.stop()


def test_judge_settings_reach_the_judge_and_bad_ones_name_the_field(tmp_path):
    from canaryproxy.config import load

    good = tmp_path / "judge.yaml"
    good.write_text(textwrap.dedent("""
        upstreams: {stable: "http://127.0.0.1:1", canary: "http://127.0.0.1:2"}
        rollout:
          stages: [{weight: 5, hold: 1m}]
          judge: {alpha: 0.02, max_samples_per_key: 2, warmup: 45s, warmup_tolerance: 3, burn_in: 200,
                  tests: {errors: {r0: 1.2}, cost: {enabled: false}}}
    """))
    judge = load(good, {}).rollout.judge.to_judge_config()
    assert (judge.max_samples_per_key, judge.warmup_seconds, judge.warmup_tolerance, judge.burn_in) == (2, 45.0, 3.0, 200)
    assert judge.tests["errors"].r0 == 1.2 and judge.tests["errors"].alpha == 0.012  # 0.6% of 1%, scaled
    assert not judge.tests["cost"].enabled

    bad = tmp_path / "bad-judge.yaml"
    bad.write_text(good.read_text().replace("burn_in: 200", "burn_in: 20").replace("warmup: 45s", "warmup: -1s")
                   .replace("warmup_tolerance: 3", "warmup_tolerance: 0.5"))
    result = canaryproxy("check-config", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "rollout.judge.burn_in" in result.stderr and "rollout.judge.warmup:" in result.stderr, result.stderr
    assert "rollout.judge.warmup_tolerance" in result.stderr, result.stderr

    # What only the judge can check (r0 against its largest alternative) is a config error too.
    beyond = tmp_path / "beyond-judge.yaml"
    beyond.write_text(good.read_text().replace("r0: 1.2", "r0: 100"))
    result = canaryproxy("check-config", str(beyond))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "rollout.judge: invalid judge config: tests.errors.r0 must be below" in result.stderr, result.stderr
