"""What canaryproxy costs on the wire, next to no proxy, a bare aiohttp floor, nginx, HAProxy and LiteLLM.

    .venv/bin/python bench/proxy_overhead.py [--duration 10] [--connections 16] [--only a,b] [--json FILE]

One run starts the fast upstream (bench/upstream.py, two ports: stable and canary), then for each
setup starts the proxy pinned to core 0, checks that it answers both workloads byte for byte (a
setup that re-encodes the body, LiteLLM, must give a valid chat completion with the same text),
drives a warm-up and then a measured run of each workload with wrk (bench/chat.lua; the Python
generator bench/loadgen.py when wrk is missing) pinned to core 1 with the upstream, and stops it.
It prints requests/s, p50/p99 latency, the proxy's CPU time per request (from /proc/PID/stat,
all its processes and threads) and the ratios to direct and to the floor; see bench/README.md.

A setup is one `Setup` entry in SETUPS: a name, the command that starts it (given the ports and a
directory for its config), and the executables it needs (it is skipped with a note saying how to
install them without them).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import payloads
from loadgen import RESULT_PREFIX, ProtocolError, fetch
from rig import PROXY_CORE, RIG_CORE, Processes, RigError, core_task_seconds, cpu_seconds, free_port, run_pinned

BENCH_DIR = Path(__file__).resolve().parent
TEMPLATES = BENCH_DIR / "templates"

# The project's goals for canaryproxy, measured against the floor and direct in the same run.
GOAL_JSON_THROUGHPUT_VS_FLOOR = 0.85  # at least this share of the floor's JSON requests/s
GOAL_SSE_CPU_VS_FLOOR = 1.2  # at most this many times the floor's CPU per SSE stream
GOAL_P50_ADDED_MS = 1.0  # less than this added to direct's p50, both workloads

# Other processes of the machine on the proxy's core above this share make a run suspect.
NOISY_CORE_PERCENT = 5.0


# --- setups ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    stable: int
    canary: int
    listen: int  # where the setup under test must listen on 127.0.0.1


@dataclass(frozen=True)
class Setup:
    """One way of putting something between the load generator and the upstream."""

    name: str
    summary: str
    # Writes whatever config it needs into the directory and returns the command to start; None
    # means no proxy at all: the load goes straight to the upstream's stable port.
    command: Callable[[Ports, Path], list[str]] | None
    needs: tuple[str, ...] = ()  # executables on PATH (or paths); the setup is skipped without them
    judged: bool = False  # the project's goals are checked for it
    # The skip note's advice when something in `needs` is missing (default: the Debian packages).
    install: str | None = None
    # It decodes the upstream's answer and writes its own (ids, timestamps, headers): the check
    # before measuring asks for a valid chat completion with the upstream's text, not the bytes.
    reencodes: bool = False
    start_timeout: float = 20.0  # seconds it may take to listen after start


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def canaryproxy_config(ports: Ports) -> dict[str, Any]:
    """The default config with everything switched on: weight 10 (a 90/10 split), the default
    sticky keys (the load generator sends x-user-id), access log on."""
    return {
        "listen": f"127.0.0.1:{ports.listen}",
        "admin": {"listen": "127.0.0.1:0"},
        "upstreams": {"stable": f"http://127.0.0.1:{ports.stable}", "canary": f"http://127.0.0.1:{ports.canary}"},
        "routing": {"weight": 10},
        "access_log": True,
        "log_level": "info",
    }


def canaryproxy_setup(name: str, summary: str, overrides: dict[str, Any]) -> Setup:
    """A canaryproxy variant: the default config above with `overrides` merged in."""

    def command(ports: Ports, workdir: Path) -> list[str]:
        path = workdir / f"{name}.yaml"
        # JSON is YAML: no YAML writer needed here.
        path.write_text(json.dumps(_merged(canaryproxy_config(ports), overrides), indent=2))
        return [sys.executable, "-m", "canaryproxy", "run", "--config", str(path)]

    return Setup(name, summary, command, judged=True)


# A rollout holding at 10% (rules and judge on, as shipped), for the coordination comparison: the
# same with `coordination.backend: redis` adds only publishing outcomes, reading them back, the
# lease and the watch.
ROLLOUT_AT_10 = {"routing": {"weight": 0}, "rollout": {"stages": [{"weight": 10, "hold": "50m"}, {"weight": 100, "hold": "1m"}],
                                                      "min_requests": 1, "evaluate_every": "1s"}}
_redis_servers: list[subprocess.Popen[bytes]] = []


def redis_url() -> str:
    """A redis-server for this run (started once, stopped at exit), on a free loopback port."""
    import atexit

    port = free_port()
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _redis_servers.append(server)
    atexit.register(server.terminate)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        if time.monotonic() > deadline:
            raise RigError("redis-server did not start")
        time.sleep(0.05)  # a port coming up, with a deadline
    return f"redis://127.0.0.1:{port}/0"


def redis_setup(name: str, summary: str) -> Setup:
    local = canaryproxy_setup(name, summary, ROLLOUT_AT_10)

    def command(ports: Ports, workdir: Path) -> list[str]:
        url = redis_url()
        path = workdir / f"{name}.yaml"
        overrides = _merged(ROLLOUT_AT_10, {"coordination": {"backend": "redis", "url": url, "rollout": "bench"}})
        path.write_text(json.dumps(_merged(canaryproxy_config(ports), overrides), indent=2))
        return [sys.executable, "-m", "canaryproxy", "run", "--config", str(path)]

    return replace(local, command=command, needs=("redis-server", "redis-cli"))


def render_template(name: str, values: dict[str, object]) -> str:
    """bench/templates/NAME with every @KEY@ replaced; a placeholder left over is an error."""
    text = (TEMPLATES / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    leftover = re.search(r"@[A-Z_]+@", text)
    if leftover:
        raise RigError(f"bench/templates/{name}: no value for placeholder {leftover.group()}")
    return text


def _template_values(ports: Ports, workdir: Path) -> dict[str, object]:
    return {"STABLE_PORT": ports.stable, "CANARY_PORT": ports.canary, "LISTEN_PORT": ports.listen, "WORKDIR": workdir}


def floor_command(ports: Ports, workdir: Path) -> list[str]:
    return [
        sys.executable, str(BENCH_DIR / "floor_proxy.py"), "--port", str(ports.listen),
        f"http://127.0.0.1:{ports.stable}", f"http://127.0.0.1:{ports.canary}",
    ]


def nginx_command(ports: Ports, workdir: Path) -> list[str]:
    path = workdir / "nginx.conf"
    path.write_text(render_template("nginx.conf", _template_values(ports, workdir)))
    return ["nginx", "-p", str(workdir), "-c", str(path)]


def haproxy_command(ports: Ports, workdir: Path) -> list[str]:
    path = workdir / "haproxy.cfg"
    path.write_text(render_template("haproxy.cfg", _template_values(ports, workdir)))
    return ["haproxy", "-db", "-f", str(path)]


# LiteLLM's proxy (https://docs.litellm.ai), installed in a virtualenv of its own so it never
# touches the project's dependencies; LITELLM names its executable, else it is looked up on PATH.
LITELLM_INSTALL = "python3 -m venv /opt/litellm && /opt/litellm/bin/pip install 'litellm[proxy]==1.108.7', then LITELLM=/opt/litellm/bin/litellm"
# No network at start or at run time: the model cost map, Anthropic beta headers, autorouter
# presets, blog posts and policy templates from the package's own copies instead of GitHub;
# telemetry vetoed; PRODUCTION mode so no .env file of the working directory is read.
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_TELEMETRY_DISABLED": "True",
    "LITELLM_MODE": "PRODUCTION",
}
# Unset whatever the calling shell has: no database, no master key (see the template).
LITELLM_UNSET = ("DATABASE_URL", "LITELLM_MASTER_KEY")


def litellm_executable() -> str:
    return os.environ.get("LITELLM") or "litellm"


def litellm_command(ports: Ports, workdir: Path) -> list[str]:
    path = workdir / "litellm.yaml"
    path.write_text(render_template("litellm.yaml", {**_template_values(ports, workdir), "MODEL": payloads.MODEL}))
    executable = shutil.which(litellm_executable()) or litellm_executable()
    return [
        "env", *(f"--unset={key}" for key in LITELLM_UNSET), *(f"{key}={value}" for key, value in LITELLM_ENV.items()),
        executable, "--config", str(path), "--host", "127.0.0.1", "--port", str(ports.listen), "--num_workers", "1",
    ]


def litellm_version() -> str | None:
    """The litellm package's version, read by its own interpreter (the script's #! line) without
    importing litellm, which takes seconds."""
    executable = shutil.which(litellm_executable())
    if executable is None:
        return None
    try:
        with open(executable, "rb") as script:
            first = script.readline(512).decode(errors="replace")
        interpreter = first[2:].strip().split()[0] if first.startswith("#!") else None
        if interpreter is None:
            return None
        done = subprocess.run([interpreter, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                              capture_output=True, text=True, check=False, timeout=30)
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


SETUPS: tuple[Setup, ...] = (
    Setup("direct", "no proxy: straight to the upstream", None),
    canaryproxy_setup("canaryproxy", "canaryproxy run: weight 10, sticky x-user-id, access log on", {}),
    canaryproxy_setup("canaryproxy-inspect-off", "the same with inline inspection off",
                      {"inspection": {"enabled": False}}),
    canaryproxy_setup("canaryproxy-rollout", "a rollout holding at 10% (rules, judge), one process",
                      ROLLOUT_AT_10),
    redis_setup("canaryproxy-redis", "the same rollout with coordination.backend: redis"),
    Setup("floor", "bench/floor_proxy.py: bare aiohttp pass-through, random 90/10", floor_command),
    Setup("nginx", "split_clients 90/10 on x-user-id, keepalive upstreams, unbuffered", nginx_command,
          needs=("nginx",)),
    Setup("haproxy", "weighted servers 90/10, http mode, keep-alive", haproxy_command,
          needs=("haproxy",)),
    Setup("litellm", "LiteLLM proxy: one model, two deployments weighted 90/10 (simple-shuffle), no DB, "
          "no callbacks, one uvicorn worker", litellm_command, needs=(litellm_executable(),),
          install=LITELLM_INSTALL, reencodes=True, start_timeout=120.0),
)


# --- load generators ------------------------------------------------------------------------------

LoadCommand = Callable[[int, Path, int, int], list[str]]


def wrk_command(port: int, body_file: Path, connections: int, seconds: int) -> list[str]:
    return [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(BENCH_DIR / "chat.lua"), f"http://127.0.0.1:{port}{payloads.PATH}",
        "--", str(body_file), str(payloads.USERS),
    ]


def python_load_command(port: int, body_file: Path, connections: int, seconds: int) -> list[str]:
    return [
        sys.executable, str(BENCH_DIR / "loadgen.py"), "--port", str(port), "--body-file", str(body_file),
        "--connections", str(connections), "--duration", str(seconds),
    ]


def paced_load_command(rate: float) -> LoadCommand:
    """The Python generator on a fixed schedule: wrk cannot pace (and wrk2 is not packaged)."""

    def command(port: int, body_file: Path, connections: int, seconds: int) -> list[str]:
        return python_load_command(port, body_file, connections, seconds) + ["--rate", str(rate)]

    return command


# The paced workload: the JSON request at a fixed rate well below every proxy's capacity, so p50
# is the latency a request sees through the proxy, not the queue of a saturated closed loop (at
# saturation p50 is just connections / throughput).
PACED = "paced"
WORKLOAD_ORDER = (*payloads.WORKLOADS, PACED)


def parse_load_result(output: str) -> dict[str, float]:
    """The `BENCH_RESULT {json}` line both generators print."""
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, float] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise RigError(f"the load generator printed no {RESULT_PREFIX.strip()} line; its output:\n{output[-2000:]}")


# --- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    setup: str
    workload: str
    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int  # non-2xx responses and connection errors
    proxy_cpu_s: float | None  # None for direct
    rig_cpu_s: float  # load generator + upstream, the other core
    proxy_core_tasks_s: float  # processes run on the proxy's core: the proxy and any others

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def proxy_cpu_us_per_request(self) -> float | None:
        if self.proxy_cpu_s is None or not self.requests:
            return None
        return self.proxy_cpu_s / self.requests * 1e6

    @property
    def proxy_core_percent(self) -> float | None:
        return None if self.proxy_cpu_s is None else self.proxy_cpu_s / self.seconds * 100

    @property
    def rig_core_percent(self) -> float:
        return self.rig_cpu_s / self.seconds * 100

    @property
    def others_on_proxy_core_percent(self) -> float | None:
        """Other processes of the machine on the proxy's core: above a few percent they took
        time from the proxy and its numbers are low. None without a proxy (core 0 is unused)."""
        if self.proxy_cpu_s is None:
            return None
        return max(0.0, self.proxy_core_tasks_s - self.proxy_cpu_s) / self.seconds * 100


@dataclass(frozen=True)
class RunSettings:
    connections: int
    duration: int
    warmup: int
    load_command: LoadCommand
    load_generator: str
    paced_rate: float = 1000.0


_ANSWER_TEXT: str = json.loads(payloads.JSON_RESPONSE_BODY)["choices"][0]["message"]["content"]


def reencoded_answer_problem(workload: str, answer: bytes) -> str | None:
    """What is wrong with a re-encoded answer, or None: JSON must be a chat.completion, SSE a
    stream of chat.completion.chunk events ending in [DONE], both with the upstream's text."""
    try:
        if workload == "json":
            completion = json.loads(answer)
            if completion.get("object") != "chat.completion":
                return f"object is {completion.get('object')!r}, not 'chat.completion'"
            text = completion["choices"][0]["message"]["content"]
        else:
            events = [e for e in answer.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
            if not events or events[-1].strip() != b"data: [DONE]":
                return "the stream does not end with data: [DONE]"
            pieces = []
            for event in events[:-1]:
                if not event.startswith(b"data: "):
                    return f"an event without data: {event[:80]!r}"
                chunk = json.loads(event[len(b"data: "):])
                if chunk.get("object") != "chat.completion.chunk":
                    return f"an event of object {chunk.get('object')!r}, not 'chat.completion.chunk'"
                pieces += [c.get("delta", {}).get("content") or "" for c in chunk.get("choices", [])]
            text = "".join(pieces)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        return f"not a valid chat completion: {type(exc).__name__}: {exc}"
    if text != _ANSWER_TEXT:
        return f"the text differs from the upstream's: {text[:80]!r}"
    return None


def check_answers(setup: str, port: int, reencodes: bool = False, timeout: float = 5.0) -> None:
    """One request per workload must come back 200 with the upstream's body byte for byte (for
    a setup that re-encodes the body: a valid chat completion with the upstream's text): a
    misconfigured setup must fail here, not be measured."""
    for workload, body in payloads.WORKLOADS.items():
        request = payloads.chat_request(body, f"127.0.0.1:{port}", user=1)
        try:
            status, answer = fetch(port, request, timeout)
        except (OSError, ProtocolError) as exc:
            raise RigError(f"{setup}: the {workload} check request failed: {exc}") from None
        if reencodes:
            problem = "status is not 200" if status != 200 else reencoded_answer_problem(workload, answer)
            if problem:
                raise RigError(f"{setup}: the {workload} check request got status {status}, {problem}: {answer[:200]!r}")
            continue
        if status != 200 or answer != payloads.EXPECTED_BODY[workload]:
            raise RigError(
                f"{setup}: the {workload} check request got status {status} and a {len(answer)}-byte body "
                f"(expected 200 and the upstream's {len(payloads.EXPECTED_BODY[workload])} bytes): {answer[:200]!r}"
            )


def measure(
    setup: str, workload: str, port: int, body_file: Path, proxy_pid: int | None, upstream_pid: int,
    settings: RunSettings,
) -> Measurement:
    timeout = settings.duration + 30.0
    if settings.warmup:
        run_pinned(settings.load_command(port, body_file, settings.connections, settings.warmup), RIG_CORE, timeout)
    proxy_before = cpu_seconds(proxy_pid) if proxy_pid is not None else 0.0
    upstream_before = cpu_seconds(upstream_pid)
    core_before = core_task_seconds(PROXY_CORE)
    output, load_cpu = run_pinned(
        settings.load_command(port, body_file, settings.connections, settings.duration), RIG_CORE, timeout
    )
    proxy_cpu = cpu_seconds(proxy_pid) - proxy_before if proxy_pid is not None else None
    upstream_cpu = cpu_seconds(upstream_pid) - upstream_before
    core_tasks = core_task_seconds(PROXY_CORE) - core_before
    result = parse_load_result(output)
    return Measurement(
        setup=setup,
        workload=workload,
        requests=int(result["requests"]),
        seconds=float(result["duration_s"]),
        p50_us=float(result["p50_us"]),
        p99_us=float(result["p99_us"]),
        errors=int(result["errors_status"] + result["errors_connection"]),
        proxy_cpu_s=proxy_cpu,
        rig_cpu_s=load_cpu + upstream_cpu,
        proxy_core_tasks_s=core_tasks,
    )


def run_setup(
    setup: Setup, processes: Processes, upstream_pid: int, stable: int, canary: int, workdir: Path,
    body_files: dict[str, Path], settings: RunSettings,
) -> list[Measurement]:
    proxy = None
    port = stable
    if setup.command is not None:
        port = free_port()
        proxy = processes.start(setup.name, setup.command(Ports(stable, canary, port), workdir), PROXY_CORE)
        processes.wait_listening(setup.name, proxy, port, timeout=setup.start_timeout)
    try:
        # A re-encoding gateway's first request can be slow (lazy imports, its HTTP client).
        check_answers(setup.name, port, setup.reencodes, timeout=30.0 if setup.reencodes else 5.0)
        measurements = []
        for workload, body_file in body_files.items():
            m = measure(setup.name, workload, port, body_file, proxy.pid if proxy else None, upstream_pid, settings)
            if proxy is not None and proxy.poll() is not None:
                raise RigError(f"{setup.name} exited during the {workload} run:\n" + processes.log_tail(setup.name))
            cpu = m.proxy_cpu_us_per_request
            print(
                f"  {setup.name:<24} {workload:<4} {m.requests_per_s:>9,.0f} req/s  p50 {m.p50_us / 1000:.2f} ms"
                + (f"  {cpu:.0f} µs CPU/req" if cpu is not None else "")
                + (f"  {m.errors} ERRORS" if m.errors else ""),
                file=sys.stderr, flush=True,
            )
            measurements.append(m)
        paced = replace(settings, load_command=paced_load_command(settings.paced_rate))
        m = measure(setup.name, PACED, port, body_files["json"], proxy.pid if proxy else None, upstream_pid, paced)
        print(f"  {setup.name:<24} {PACED:<6} {m.requests_per_s:>7,.0f} req/s  p50 {m.p50_us / 1000:.2f} ms  "
              f"p99 {m.p99_us / 1000:.2f} ms", file=sys.stderr, flush=True)
        measurements.append(m)
        return measurements
    finally:
        if proxy is not None:
            processes.stop(proxy)


# --- comparing and reporting ----------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    x_direct_rps: float | None
    x_floor_rps: float | None
    x_floor_cpu: float | None
    p50_added_ms: float | None


def compare(m: Measurement, direct: Measurement | None, floor: Measurement | None) -> Comparison:
    floor_cpu = floor.proxy_cpu_us_per_request if floor else None
    cpu = m.proxy_cpu_us_per_request
    return Comparison(
        x_direct_rps=m.requests_per_s / direct.requests_per_s if direct and direct.requests else None,
        x_floor_rps=m.requests_per_s / floor.requests_per_s if floor and floor.requests else None,
        x_floor_cpu=cpu / floor_cpu if cpu is not None and floor_cpu else None,
        p50_added_ms=(m.p50_us - direct.p50_us) / 1000 if direct else None,
    )


@dataclass(frozen=True)
class GoalCheck:
    setup: str
    goal: str
    value: str
    met: bool | None  # None: the run lacks the reference setup


def check_goals(setup: str, results: dict[tuple[str, str], Measurement]) -> list[GoalCheck]:
    def get(name: str, workload: str) -> Measurement | None:
        return results.get((name, workload))

    checks = []
    json_run, floor_json = get(setup, "json"), get("floor", "json")
    if json_run:
        c = compare(json_run, None, floor_json)
        checks.append(GoalCheck(
            setup, f"JSON req/s >= {GOAL_JSON_THROUGHPUT_VS_FLOOR:g}x floor",
            f"{c.x_floor_rps:.2f}x" if c.x_floor_rps is not None else "no floor run",
            None if c.x_floor_rps is None else c.x_floor_rps >= GOAL_JSON_THROUGHPUT_VS_FLOOR,
        ))
    sse_run, floor_sse = get(setup, "sse"), get("floor", "sse")
    if sse_run:
        c = compare(sse_run, None, floor_sse)
        checks.append(GoalCheck(
            setup, f"SSE CPU/stream <= {GOAL_SSE_CPU_VS_FLOOR:g}x floor",
            f"{c.x_floor_cpu:.2f}x" if c.x_floor_cpu is not None else "no floor run",
            None if c.x_floor_cpu is None else c.x_floor_cpu <= GOAL_SSE_CPU_VS_FLOOR,
        ))
    for workload in (PACED,):
        run = get(setup, workload)
        if run:
            c = compare(run, get("direct", workload), None)
            checks.append(GoalCheck(
                setup, f"p50 added to direct < {GOAL_P50_ADDED_MS:g} ms (JSON, paced)",
                f"{c.p50_added_ms:+.2f} ms" if c.p50_added_ms is not None else "no direct run",
                None if c.p50_added_ms is None else c.p50_added_ms < GOAL_P50_ADDED_MS,
            ))
    return checks


_COLUMNS = (  # title, width
    ("setup", 24), ("req/s", 9), ("p50 ms", 7), ("p99 ms", 7), ("CPU µs/req", 10), ("proxy core", 10),
    ("rig core", 8), ("others core0", 12), ("×direct", 7), ("×floor", 6), ("CPU ×floor", 10),
    ("p50 +ms", 7), ("errors", 6),
)
_WORKLOAD_TITLES = {
    "json": f"JSON: POST {payloads.PATH} ({len(payloads.JSON_REQUEST_BODY)} B) -> "
            f"{len(payloads.JSON_RESPONSE_BODY)} B chat.completion with usage",
    "sse": f"SSE: the same with \"stream\": true -> {len(payloads.SSE_EVENTS)} events, "
           f"{len(payloads.SSE_RESPONSE_BODY):,} B, chunked, one write per event",
    PACED: "JSON paced: the JSON request at a fixed rate over the same connections (Python generator), "
           "the latency a request sees below saturation",
}


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _row(cells: Sequence[str]) -> str:
    """The first column left-aligned, the numbers right-aligned."""
    widths = [width for _, width in _COLUMNS]
    return "  ".join(
        f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}"
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    )


def format_table(workload: str, rows: Sequence[Measurement], results: dict[tuple[str, str], Measurement]) -> str:
    direct, floor = results.get(("direct", workload)), results.get(("floor", workload))
    lines = [_WORKLOAD_TITLES[workload], _row([title for title, _ in _COLUMNS])]
    for m in rows:
        c = compare(m, direct, floor)
        lines.append(_row([
            m.setup, f"{m.requests_per_s:,.0f}", f"{m.p50_us / 1000:.2f}", f"{m.p99_us / 1000:.2f}",
            _cell(m.proxy_cpu_us_per_request, ".1f"), _percent(m.proxy_core_percent),
            f"{m.rig_core_percent:.0f}%", _percent(m.others_on_proxy_core_percent),
            _cell(c.x_direct_rps, ".2f"), _cell(c.x_floor_rps, ".2f"), _cell(c.x_floor_cpu, ".2f"),
            _cell(c.p50_added_ms, "+.2f"), str(m.errors),
        ]))
    return "\n".join(lines)


def _command_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else None


def machine_facts() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("canaryproxy", "aiohttp", "uvloop"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    # The tree measured: a benchmark of uncommitted changes says so ("-dirty").
    versions["canaryproxy_git"] = _command_version(["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"])
    versions["wrk"] = _command_version(["wrk", "--version"])
    versions["nginx"] = _command_version(["nginx", "-v"])
    versions["haproxy"] = _command_version(["haproxy", "-v"])
    versions["litellm"] = litellm_version()
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(), "versions": versions}


@dataclass
class Report:
    started: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # setup -> why

    def by_key(self) -> dict[tuple[str, str], Measurement]:
        return {(m.setup, m.workload): m for m in self.measurements}

    def goal_checks(self, judged: Sequence[str]) -> list[GoalCheck]:
        results = self.by_key()
        return [check for name in judged for check in check_goals(name, results)]

    def text(self, judged: Sequence[str]) -> str:
        s, facts = self.settings, self.machine
        v = facts["versions"]
        out = [
            f"canaryproxy proxy overhead, {self.started}: {facts['nproc']} CPUs ({facts['cpu_model']}), "
            f"Linux {facts['kernel']}, Python {v['python']}, aiohttp {v['aiohttp']}, uvloop {v['uvloop']}, "
            f"canaryproxy {v['canaryproxy']} ({v['canaryproxy_git'] or 'not a git checkout'})",
            f"load: {s['load_generator']}, {s['connections']} connections, {s['duration']} s per run after a "
            f"{s['warmup']} s warm-up; proxy on core {PROXY_CORE}, load generator and upstream on core {RIG_CORE}",
        ]
        if any(m.setup == "litellm" for m in self.measurements):
            out.append(f"LiteLLM {v.get('litellm') or '(version unknown)'}: {litellm_executable()}")
        results = self.by_key()
        for workload in WORKLOAD_ORDER:
            rows = [m for m in self.measurements if m.workload == workload]
            if rows:
                out += ["", format_table(workload, rows, results)]
        checks = self.goal_checks(judged)
        if checks:
            out += ["", "Goals (from this run):"]
            for check in checks:
                verdict = {True: "met", False: "MISSED", None: "not measured"}[check.met]
                out.append(f"  {check.setup:<24} {check.goal:<38} {check.value:>12}  {verdict}")
        for name, why in self.skipped.items():
            out.append(f"skipped {name}: {why}")
        others = {m: m.others_on_proxy_core_percent for m in self.measurements}
        disturbed = [m for m, percent in others.items() if percent is not None and percent > NOISY_CORE_PERCENT]
        if disturbed:
            worst = max(others[m] or 0.0 for m in disturbed)
            runs = ", ".join(f"{m.setup} {m.workload}" for m in disturbed)
            out.append(
                f"WARNING: other processes took up to {worst:.0f}% of core {PROXY_CORE} during {runs}: "
                "those proxies got less CPU than the others; rerun on a quiet machine"
            )
        return "\n".join(out)

    def as_json(self, judged: Sequence[str]) -> dict[str, Any]:
        results = self.by_key()
        rows = []
        for m in self.measurements:
            c = compare(m, results.get(("direct", m.workload)), results.get(("floor", m.workload)))
            rows.append({
                **asdict(m),
                "requests_per_s": m.requests_per_s,
                "proxy_cpu_us_per_request": m.proxy_cpu_us_per_request,
                "proxy_core_percent": m.proxy_core_percent,
                "rig_core_percent": m.rig_core_percent,
                "others_on_proxy_core_percent": m.others_on_proxy_core_percent,
                **asdict(c),
            })
        return {
            "started": self.started, "machine": self.machine, "settings": self.settings,
            "measurements": rows, "goals": [asdict(g) for g in self.goal_checks(judged)], "skipped": self.skipped,
        }


# --- the run --------------------------------------------------------------------------------------


def preflight(selected: Sequence[Setup]) -> None:
    """Fail early, saying what to install or how to run, rather than half-way through."""
    if shutil.which("taskset") is None:
        raise RigError("taskset is missing (util-linux): it pins the proxy and the load to their cores")
    cpus = os.sched_getaffinity(0)
    if not {PROXY_CORE, RIG_CORE} <= cpus:
        raise RigError(f"needs CPUs {PROXY_CORE} and {RIG_CORE}; this process may use only {sorted(cpus)}")
    modules = {"aiohttp", "uvloop"} | ({"canaryproxy"} if any(s.judged for s in selected) else set())
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    if missing:
        raise RigError(
            f"{sys.executable} cannot import {', '.join(missing)}: run the benchmark with the project's "
            "virtualenv (.venv/bin/python bench/proxy_overhead.py) after `pip install -e .`"
        )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(selected: Sequence[Setup], settings: RunSettings, workdir: Path, report: Report) -> bool:
    """Measure every selected setup; True when none failed."""
    body_files = {}
    for workload, body in payloads.WORKLOADS.items():
        body_files[workload] = workdir / f"{workload}-request.json"
        body_files[workload].write_bytes(body)
    all_ok = True
    with Processes(workdir) as processes:
        stable, canary = free_port(), free_port()
        upstream_argv = [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(stable), "--port", str(canary)]
        upstream = processes.start("upstream", upstream_argv, RIG_CORE)
        processes.wait_listening("upstream", upstream, stable)
        processes.wait_listening("upstream", upstream, canary)
        for setup in selected:
            missing = [tool for tool in setup.needs if shutil.which(tool) is None]
            if missing:
                how = setup.install or f"apt-get install -y {' '.join(missing)}"
                why = f"{', '.join(missing)} not installed ({how})"
                report.skipped[setup.name] = why
                print(f"  {setup.name:<24} skipped: {why}", file=sys.stderr)
                continue
            try:
                report.measurements += run_setup(
                    setup, processes, upstream.pid, stable, canary, workdir, body_files, settings
                )
            except RigError as exc:
                all_ok = False
                report.skipped[setup.name] = f"failed: {exc}"
                print(f"  {setup.name:<24} FAILED: {exc}", file=sys.stderr)
    return all_ok


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [s.name for s in SETUPS]
    parser = argparse.ArgumentParser(
        description="Proxy overhead of canaryproxy against direct, a bare aiohttp floor, nginx, haproxy and LiteLLM.",
    )
    parser.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections (default 16)")
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per setup and workload (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each measured run (default 2)")
    parser.add_argument("--only", help=f"comma-separated setups to run, of: {','.join(names)} (default: all)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk when installed (auto), or the Python one")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--paced-rate", type=float, default=1000.0,
                        help="requests/s of the paced latency workload (default 1000)")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--connections and --duration must be at least 1, --warmup at least 0")
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"--only: unknown setup {', '.join(unknown)}; known: {', '.join(names)}")
        args.setups = [s for s in SETUPS if s.name in wanted]
    else:
        args.setups = list(SETUPS)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    selected: list[Setup] = args.setups
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk") is not None)
    if use_wrk and shutil.which("wrk") is None:
        print("proxy_overhead: --loadgen wrk, but wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    try:
        preflight(selected)
    except RigError as exc:
        print(f"proxy_overhead: {exc}", file=sys.stderr)
        return 2
    settings = RunSettings(
        args.connections, args.duration, args.warmup,
        wrk_command if use_wrk else python_load_command,
        "wrk" if use_wrk else "python (bench/loadgen.py; wrk not used, the direct rate is the generator's)",
        paced_rate=args.paced_rate,
    )
    # Both end the run through KeyboardInterrupt, so every started process is stopped on the way
    # out (SIGINT set explicitly: a shell starting this in the background would have it ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    os.sched_setaffinity(0, {RIG_CORE})  # keep this script off the proxy's core
    report = Report(
        started=time.strftime("%Y-%m-%d %H:%M %Z"),
        machine=machine_facts(),
        settings={"connections": args.connections, "duration": args.duration, "warmup": args.warmup,
                  "load_generator": settings.load_generator, "setups": [s.name for s in selected]},
    )
    workdir = Path(tempfile.mkdtemp(prefix="canaryproxy-bench-"))
    print(f"logs and generated configs in {workdir}", file=sys.stderr)
    try:
        all_ok = run(selected, settings, workdir, report)
    except KeyboardInterrupt:
        print(f"interrupted: every started process was stopped; logs in {workdir}", file=sys.stderr)
        return 130
    except RigError as exc:
        print(f"proxy_overhead: {exc}\nlogs in {workdir}", file=sys.stderr)
        return 1
    judged = [s.name for s in selected if s.judged]
    print(report.text(judged))
    if args.json:
        args.json.write_text(json.dumps(report.as_json(judged), indent=2) + "\n")
    if all_ok:
        shutil.rmtree(workdir)
        return 0
    print(f"some setups failed; their logs are in {workdir}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
