"""What feedback costs: the token on every proxied response, and the endpoint's capacity.

    .venv/bin/python bench/feedback.py [--duration 5] [--connections 16] [--json FILE]

1. Token micro-benchmark (this process): µs to sign one token (the hot-path cost per response),
   to verify one, and the whole `stamp` (sign + request-id cache + header) per response.
2. JSON req/s and SSE CPU per stream through `canaryproxy run` with feedback off and on, in the
   same run, with bench/proxy_overhead.py's machinery (proxy pinned to core 0, wrk and the
   upstream on core 1).
3. The endpoint on one core: `canaryproxy run` with feedback on, pinned to core 0, and wrk on
   core 1 posting verdicts that each quote a distinct valid token (bench/feedback.lua), so every
   post is read, verified, claimed and delivered to the evidence; posts/s, p50/p99, and the
   accepted count from /metrics.

Numbers: bench/README.md, "Feedback".
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

import proxy_overhead as po  # noqa: E402
from rig import PROXY_CORE, RIG_CORE, Processes, RigError, cpu_seconds, free_port, run_pinned  # noqa: E402

from canaryproxy.core.types import Outcome, Role  # noqa: E402
from canaryproxy.feedback.endpoint import FeedbackEndpoint  # noqa: E402
from canaryproxy.feedback.memory import LocalClaims  # noqa: E402
from canaryproxy.feedback.settings import FeedbackSettings  # noqa: E402
from canaryproxy.feedback.token import Signer  # noqa: E402
from canaryproxy.proxy.attribution import new_request_id  # noqa: E402
from canaryproxy.proxy.headers import TrustedProxies  # noqa: E402

KEY = "bench-feedback-key-0123456789abcdef-0123"
FEEDBACK_ON = {"feedback": {"enabled": True, "keys": [KEY],
                            "rate_limit": {"rate": 100_000, "burst": 1_000_000}}}
PATH = "/canaryproxy/v1/feedback"


def micro() -> dict[str, float]:
    """µs per call of sign, verify and stamp (best of 5 rounds of 20,000)."""
    signer = Signer((KEY.encode(),))
    rid = new_request_id()
    token = signer.sign(Role.CANARY, rid, 10.0, time.time(), 2**63)
    endpoint = FeedbackEndpoint(FeedbackSettings(keys=(KEY.encode(),)), TrustedProxies(),
                                LocalClaims(100_000, 86400))
    outcomes = [Outcome(Role.CANARY, 0.0, weight=10.0, key_hash=2**63, request_id=new_request_id(),
                        routed_at=time.time()) for _ in range(20_000)]
    from multidict import CIMultiDict

    def stamp_all() -> None:
        for outcome in outcomes:
            endpoint.stamp(outcome, CIMultiDict(), {})

    def best(statement: Any, number: int = 20_000) -> float:
        return min(timeit.repeat(statement, number=number, repeat=5)) / number * 1e6

    headers_only = min(timeit.repeat(lambda: [CIMultiDict() for _ in outcomes], number=1, repeat=5)) / 20_000 * 1e6
    return {
        "sign_us": best(lambda: signer.sign(Role.CANARY, rid, 10.0, 1.7e9, 2**63)),
        "verify_us": best(lambda: signer.verify(token)),
        "stamp_us": min(timeit.repeat(stamp_all, number=1, repeat=5)) / 20_000 * 1e6 - headers_only,
    }


def through_the_proxy(args: argparse.Namespace, workdir: Path) -> list[po.Measurement]:
    setups = [
        po.canaryproxy_setup("feedback-off", "canaryproxy run, feedback off", {}),
        po.canaryproxy_setup("feedback-on", "the same with feedback on (token on every response)", FEEDBACK_ON),
    ]
    settings = po.RunSettings(args.connections, args.duration, args.warmup, po.wrk_command, "wrk",
                              paced_rate=1000.0)
    report = po.Report(started=time.strftime("%Y-%m-%d %H:%M %Z"), machine=po.machine_facts(),
                       settings={"connections": args.connections, "duration": args.duration,
                                 "warmup": args.warmup, "load_generator": "wrk",
                                 "setups": [s.name for s in setups]})
    if not po.run(setups, settings, workdir, report):
        raise RigError(f"a setup failed: {report.skipped}")
    print(report.text([]))
    return report.measurements


def endpoint_on_one_core(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    signer = Signer((KEY.encode(),))
    now = time.time()
    tokens = workdir / "tokens.txt"
    count = max(100_000, 40_000 * args.duration)  # more than the endpoint takes in the run
    tokens.write_text("\n".join(signer.sign(Role.CANARY if i % 10 == 0 else Role.STABLE, new_request_id(), 10.0,
                                            now, i) for i in range(count)) + "\n")
    port, admin = free_port(), free_port()
    config = workdir / "endpoint.yaml"
    config.write_text(json.dumps({
        "listen": f"127.0.0.1:{port}", "admin": {"listen": f"127.0.0.1:{admin}"}, "access_log": False,
        "upstreams": {"stable": "http://127.0.0.1:9", "canary": "http://127.0.0.1:9"},
        "feedback": {**FEEDBACK_ON["feedback"], "idempotency": {"entries": count}},
    }))
    with Processes(workdir) as processes:
        proxy = processes.start("endpoint", [sys.executable, "-m", "canaryproxy", "run", "--config", str(config)],
                                PROXY_CORE)
        processes.wait_listening("endpoint", proxy, port)
        before = cpu_seconds(proxy.pid)
        output, _ = run_pinned(["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "-s",
                                str(BENCH_DIR / "feedback.lua"), f"http://127.0.0.1:{port}{PATH}", "--",
                                str(tokens)], RIG_CORE, args.duration + 30)
        cpu = cpu_seconds(proxy.pid) - before
        result = po.parse_load_result(output)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
            metrics = response.read().decode()
    accepted = sum(float(v) for v in re.findall(r'^canaryproxy_feedback_total\{[^}]*\} (\S+)$', metrics, re.M))
    posts_per_s = result["requests"] / result["duration_s"]
    line = (f"endpoint, one core: {posts_per_s:,.0f} posts/s, p50 {result['p50_us'] / 1000:.2f} ms, "
            f"p99 {result['p99_us'] / 1000:.2f} ms, {cpu / max(1, result['requests']) * 1e6:.0f} µs CPU/post, "
            f"accepted {accepted:,.0f} of {result['requests']:,.0f}, errors {result['errors_status']:.0f}")
    print(line)
    return {"posts_per_s": posts_per_s, "p50_us": result["p50_us"], "p99_us": result["p99_us"],
            "cpu_us_per_post": cpu / max(1, result["requests"]) * 1e6, "accepted": accepted,
            "posts": result["requests"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds measured per run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load before each run (default 1)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("feedback: needs wrk (apt-get install -y wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, po._interrupt)
    numbers = micro()
    print("token: sign {sign_us:.2f} µs, verify {verify_us:.2f} µs, stamp (sign + request-id cache + "
          "header) {stamp_us:.2f} µs per response".format(**numbers))
    workdir = Path(tempfile.mkdtemp(prefix="canaryproxy-feedback-bench-"))
    try:
        measurements = through_the_proxy(args, workdir)
        endpoint = endpoint_on_one_core(args, workdir)
    except RigError as exc:
        print(f"feedback: {exc}; logs in {workdir}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps({"token": numbers, "endpoint": endpoint,
                                         "proxy": [m.__dict__ for m in measurements]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
