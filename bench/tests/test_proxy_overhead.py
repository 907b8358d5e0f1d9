"""The benchmark's own logic: configs it generates, how it compares, and one short real run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import payloads
from canaryproxy.config import load
from proxy_overhead import (
    BENCH_DIR, SETUPS, Measurement, Ports, Report, canaryproxy_setup, check_goals, haproxy_command,
    litellm_command, litellm_executable, nginx_command, parse_load_result, reencoded_answer_problem, wrk_command,
)
from rig import RIG_CORE, Processes, RigError, free_port, run_pinned

PORTS = Ports(stable=18001, canary=18002, listen=18080)


def measurement(setup: str, workload: str, rps: float, p50_ms: float = 1.0, cpu_us: float | None = 100.0,
                core_tasks_s: float | None = None) -> Measurement:
    requests = int(rps * 10)
    proxy_cpu_s = None if cpu_us is None else cpu_us * requests / 1e6
    return Measurement(
        setup, workload, requests=requests, seconds=10.0, p50_us=p50_ms * 1000, p99_us=p50_ms * 3000, errors=0,
        proxy_cpu_s=proxy_cpu_s, rig_cpu_s=5.0,
        proxy_core_tasks_s=core_tasks_s if core_tasks_s is not None else proxy_cpu_s or 0.0,
    )


def setup_named(name: str):
    return next(s for s in SETUPS if s.name == name)


def test_the_canaryproxy_config_is_valid_with_a_90_10_split_and_the_access_log_on(tmp_path: Path) -> None:
    argv = setup_named("canaryproxy").command(PORTS, tmp_path)
    config = load(argv[argv.index("--config") + 1], {})
    assert config.listen == ("127.0.0.1", PORTS.listen)
    assert (config.upstreams.stable, config.upstreams.canary) == ("http://127.0.0.1:18001", "http://127.0.0.1:18002")
    assert config.routing.weight == 10 and config.access_log
    assert "header:x-user-id" in config.routing.sticky


def test_a_canaryproxy_variant_is_one_entry_with_overrides(tmp_path: Path) -> None:
    variant = canaryproxy_setup("canaryproxy-quiet", "access log off", {"access_log": False, "routing": {"weight": 50}})
    argv = variant.command(PORTS, tmp_path)
    config = load(argv[argv.index("--config") + 1], {})
    assert not config.access_log and config.routing.weight == 50
    assert config.upstreams.canary == "http://127.0.0.1:18002"  # the rest of the default stays


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_the_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    argv = nginx_command(PORTS, tmp_path)
    done = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_the_haproxy_config_passes_haproxy_c(tmp_path: Path) -> None:
    argv = haproxy_command(PORTS, tmp_path)
    done = subprocess.run([*argv, "-c"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_litellm_config_serves_one_model_from_both_ports_weighted_90_10(tmp_path: Path) -> None:
    import yaml

    argv = litellm_command(PORTS, tmp_path)
    config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text())
    deployments = [(d["model_name"], d["litellm_params"]["model"], d["litellm_params"]["api_base"],
                    d["litellm_params"]["weight"]) for d in config["model_list"]]
    assert deployments == [
        (payloads.MODEL, f"openai/{payloads.MODEL}", "http://127.0.0.1:18001/v1", 90),
        (payloads.MODEL, f"openai/{payloads.MODEL}", "http://127.0.0.1:18002/v1", 10),
    ]
    assert config["router_settings"]["routing_strategy"] == "simple-shuffle"
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "18080"
    assert argv[argv.index("--num_workers") + 1] == "1"
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in argv and "LITELLM_TELEMETRY_DISABLED=True" in argv
    litellm = setup_named("litellm")
    assert litellm.reencodes and "pip install" in (litellm.install or "")


def test_a_reencoded_answer_must_be_a_chat_completion_with_the_upstreams_text() -> None:
    assert reencoded_answer_problem("json", payloads.JSON_RESPONSE_BODY) is None
    assert reencoded_answer_problem("sse", payloads.SSE_RESPONSE_BODY) is None
    # Its own id and created, other key order, CRLF between events: still the same answer.
    rewritten = payloads.SSE_RESPONSE_BODY.replace(b"chatcmpl-bench", b"chatcmpl-other").replace(b"\n\n", b"\r\n\r\n")
    assert reencoded_answer_problem("sse", rewritten) is None
    assert "[DONE]" in (reencoded_answer_problem("sse", payloads.SSE_RESPONSE_BODY[: -len(b"data: [DONE]\n\n")]) or "")
    assert "differs" in (reencoded_answer_problem("sse", payloads.SSE_RESPONSE_BODY.replace(b" fails.", b"")) or "")
    assert "chat.completion" in (reencoded_answer_problem("json", b'{"object": "error"}') or "")
    assert "not a valid" in (reencoded_answer_problem("json", b"<html>502</html>") or "")


@pytest.mark.slow  # LiteLLM takes 10-25 s to import
@pytest.mark.skipif(shutil.which(litellm_executable()) is None, reason="LiteLLM is not installed (set LITELLM)")
def test_the_litellm_config_passes_litellm_validate_config(tmp_path: Path) -> None:
    argv = litellm_command(PORTS, tmp_path)
    done = subprocess.run([*argv, "--validate_config"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "config OK (2 models)" in done.stdout


def test_goals_are_judged_against_the_floor_and_direct_of_the_same_run() -> None:
    results = {
        ("direct", "json"): measurement("direct", "json", 60_000, p50_ms=0.2, cpu_us=None),
        ("direct", "sse"): measurement("direct", "sse", 3_000, p50_ms=5.0, cpu_us=None),
        ("floor", "json"): measurement("floor", "json", 6_000, cpu_us=170),
        ("floor", "sse"): measurement("floor", "sse", 1_500, cpu_us=300),
        ("cp", "json"): measurement("cp", "json", 5_000, p50_ms=1.1, cpu_us=200),
        ("cp", "sse"): measurement("cp", "sse", 1_400, p50_ms=6.5, cpu_us=330),
        # Latency is judged on the paced run only: at saturation p50 restates throughput.
        ("direct", "paced"): measurement("direct", "paced", 1_000, p50_ms=0.05, cpu_us=None),
        ("cp", "paced"): measurement("cp", "paced", 1_000, p50_ms=1.15, cpu_us=200),
    }
    checks = {c.goal: (c.value, c.met) for c in check_goals("cp", results)}
    assert checks == {
        "JSON req/s >= 0.85x floor": ("0.83x", False),
        "SSE CPU/stream <= 1.2x floor": ("1.10x", True),
        "p50 added to direct < 1 ms (JSON, paced)": ("+1.10 ms", False),
    }


def test_without_the_reference_runs_a_goal_is_not_measured() -> None:
    checks = check_goals("cp", {("cp", "json"): measurement("cp", "json", 5_000),
                                ("cp", "paced"): measurement("cp", "paced", 1_000)})
    assert [(c.value, c.met) for c in checks] == [("no floor run", None), ("no direct run", None)]


def test_other_processes_on_the_proxy_core_are_flagged_but_not_on_a_direct_run() -> None:
    versions = {"python": "3", "aiohttp": "3", "uvloop": "0", "canaryproxy": "0.1", "canaryproxy_git": None}
    machine = {"nproc": 2, "cpu_model": "x", "kernel": "k", "versions": versions}
    report = Report("today", machine, {"load_generator": "wrk", "connections": 16, "duration": 10, "warmup": 2})
    report.measurements = [
        measurement("direct", "json", 60_000, cpu_us=None, core_tasks_s=10.0),  # core 0 idle for us
        measurement("floor", "json", 6_000, cpu_us=150, core_tasks_s=9.0 + 0.3),  # 3% others: fine
        measurement("cp", "json", 4_000, cpu_us=150, core_tasks_s=6.0 + 4.0),  # 40% others
    ]
    others = [m.others_on_proxy_core_percent for m in report.measurements]
    assert others[0] is None and others[1:] == pytest.approx([3.0, 40.0])
    warnings = [line for line in report.text(["cp"]).splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING: other processes took up to 40% of core 0 during cp json: those proxies got less CPU than "
        "the others; rerun on a quiet machine"
    ]


def test_a_load_generator_without_a_result_line_is_an_error() -> None:
    assert parse_load_result('Running 1s test\nBENCH_RESULT {"requests": 3}\n') == {"requests": 3}
    with pytest.raises(RigError, match="printed no BENCH_RESULT line"):
        parse_load_result("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_with_chat_lua_reports_in_the_shared_shape(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(payloads.SSE_REQUEST_BODY)
    port = free_port()
    with Processes(tmp_path) as processes:
        argv = [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(port)]
        upstream = processes.start("upstream", argv, RIG_CORE)
        processes.wait_listening("upstream", upstream, port)
        output, _ = run_pinned(wrk_command(port, body, 2, 1), RIG_CORE, timeout=30)
    result = parse_load_result(output)
    assert result["requests"] > 0 and result["errors_status"] == 0 and result["errors_connection"] == 0
    assert 0 < result["p50_us"] <= result["p99_us"]


@pytest.mark.slow
def test_a_short_run_with_the_python_generator_measures_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "proxy_overhead.py"), "--only", "direct,floor", "--duration", "1",
         "--warmup", "0", "--connections", "4", "--loadgen", "python", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "JSON: POST /v1/chat/completions" in done.stdout and "SSE: the same" in done.stdout
    rows = json.loads(out.read_text())["measurements"]
    assert [(r["setup"], r["workload"]) for r in rows] == [
        ("direct", "json"), ("direct", "sse"), ("direct", "paced"),
        ("floor", "json"), ("floor", "sse"), ("floor", "paced"),
    ]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in rows)
    floor_json = rows[3]
    assert floor_json["proxy_cpu_us_per_request"] > 0 and floor_json["x_floor_rps"] == 1.0
