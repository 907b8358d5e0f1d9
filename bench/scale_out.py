"""Many proxies, one rollout, measured: weight propagation and failover over real replicas.

    .venv/bin/python bench/scale_out.py [--changes 200] [--failovers 20] [--lease 1s]

Starts a redis-server and three `canaryproxy run` replicas (coordination.backend: redis) in front
of two aiohttp upstreams, all on 127.0.0.1, using the tests' real-process harness (tests/fleet.py).

* propagation: `--changes` weight changes, each written through one replica's admin API (the
  compare-and-set, then pub/sub); the time until each replica's status shows the new weight,
  p50/p99 over all (change, replica) pairs. The status is polled every few milliseconds, so the
  figures include up to one poll interval.
* failover: `--failovers` times, `kill -9` of the leader, then the time until another replica
  leads and has evaluated once; the killed replica is started again before the next trial.
* detection (`--detection N`): the same regression (canary errors 3x stable's 2%) judged by the
  sequential judge through 3 replicas and through 1, N trials each, with the same traffic; the
  canary requests the client saw until the rollback, median per setup.

The hot-path cost of coordination is in bench/proxy_overhead.py (setups canaryproxy-rollout and
canaryproxy-redis). Numbers: bench/README.md, "Many proxies, one rollout".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from canaryproxy.core.units import parse_duration  # noqa: E402
from tests.fleet import Fleet  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.support import Upstream  # noqa: E402

ROLLOUT = """\
  stages: [{weight: 20, hold: 50m}, {weight: 100, hold: 1m}]
  min_requests: 1
  evaluate_every: 100ms
  judge: {enabled: false}"""


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def propagation(fleet: Fleet, changes: int) -> list[float]:
    delays: list[float] = []
    writer = fleet.replicas[0]
    for i in range(changes):
        weight = 30.0 if i % 2 == 0 else 40.0
        status, body = await writer.command("weight", weight=weight, actor="bench")
        assert status == 200, body
        written = time.monotonic()
        pending = set(range(len(fleet.replicas)))
        while pending:
            statuses = await fleet.statuses([fleet.replicas[j] for j in sorted(pending)])
            now = time.monotonic()
            for j, s in zip(sorted(pending), statuses):
                if s["weight"] == weight:
                    delays.append(now - written)
                    pending.discard(j)
            assert now - written < 10, "a replica did not follow within 10 s"
            await asyncio.sleep(0.002)
    return delays


async def failover(fleet: Fleet, trials: int) -> list[float]:
    times: list[float] = []
    for _ in range(trials):
        leader = await fleet.leader()
        await leader.kill()
        killed = time.monotonic()
        others = fleet.live
        before = {s["coordination"]["replica"]: s["evaluations"] for s in await fleet.statuses(others)}
        while True:
            statuses = await fleet.statuses(others)
            new = [s for s in statuses if s["coordination"]["leads"]
                   and s["evaluations"] > before[s["coordination"]["replica"]]]
            if new:
                times.append(time.monotonic() - killed)
                break
            assert time.monotonic() - killed < 30, "no new leader within 30 s"
            await asyncio.sleep(0.005)
        await leader.start()
    return times


JUDGED = """\
  stages: [{weight: 20, hold: 50m}, {weight: 100, hold: 1m}]
  min_requests: 1
  evaluate_every: 100ms"""


def flaky(rate: float, seed: int):
    import random

    from aiohttp import web

    chance = random.Random(seed)

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if chance.random() < rate:
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    return handler


async def detection_trial(work: Path, replicas: int, seed: int) -> int:
    from tests.fleet import spread_traffic

    redis = RedisServer(work / f"redis-{replicas}-{seed}")
    redis.start()
    stable, canary = Upstream("stable"), Upstream("canary")
    stable.on("POST", "/v1/chat/completions", flaky(0.02, seed))
    canary.on("POST", "/v1/chat/completions", flaky(0.06, seed + 1))
    await stable.start()
    await canary.start()
    directory = work / f"trial-{replicas}-{seed}"
    directory.mkdir()
    fleet = Fleet(directory, redis, stable.url, canary.url, JUDGED, n=replicas)
    canary_requests = 0
    try:
        await fleet.start()
        await fleet.wait_for(lambda s: all(x["weight"] == 20.0 for x in s))
        users = 0
        while True:  # every request from a new user: the judge's per-user caps never bind
            counts = await spread_traffic(fleet.live, 60, concurrency=6, first_user=users)
            users += 60
            canary_requests += sum(v for k, v in counts.items() if k.endswith(":canary") and not k.startswith("r"))
            if (await fleet.replicas[0].status())["phase"] == "rolled_back":
                return canary_requests
            assert canary_requests < 50_000, "no rollback"
    finally:
        await fleet.stop()
        await stable.stop()
        await canary.stop()
        redis.stop()


async def detection(trials: int) -> dict[int, list[int]]:
    results: dict[int, list[int]] = {1: [], 3: []}
    with tempfile.TemporaryDirectory() as directory:
        for seed in range(trials):
            for replicas in (3, 1):
                results[replicas].append(await detection_trial(Path(directory), replicas, 1000 + seed))
    return results


async def main(args: argparse.Namespace) -> None:
    if args.detection:
        results = await detection(args.detection)
        one, three = statistics.median(results[1]), statistics.median(results[3])
        print(f"detection, errors x3 (2% -> 6%), {args.detection} trials: canary requests to rollback, "
              f"median 1 process {one:.0f} {sorted(results[1])}, 3 replicas {three:.0f} {sorted(results[3])}; "
              f"ratio {three / one:.2f} (goal within 10%)")
        return
    lease = parse_duration(args.lease)
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        redis = RedisServer(work / "redis")
        redis.start()
        stable, canary = Upstream("stable"), Upstream("canary")
        await stable.start()
        await canary.start()
        fleet = Fleet(work, redis, stable.url, canary.url, ROLLOUT, lease=args.lease)
        try:
            await fleet.start()
            await fleet.wait_for(lambda s: all(x["weight"] == 20.0 for x in s))
            delays = await propagation(fleet, args.changes)
            await fleet.replicas[0].command("resume", actor="bench")
            times = await failover(fleet, args.failovers)
        finally:
            await fleet.stop()
            await stable.stop()
            await canary.stop()
            redis.stop()
    ms = [d * 1000 for d in delays]
    print(f"weight propagation over {args.changes} changes x 3 replicas: p50 {quantile(ms, 0.5):.1f} ms, "
          f"p99 {quantile(ms, 0.99):.1f} ms, max {max(ms):.1f} ms (goal p99 <= 250 ms)")
    print(f"failover over {args.failovers} kill -9 of the leader (lease {lease:g}s): median "
          f"{statistics.median(times):.2f} s, max {max(times):.2f} s = {max(times) / lease:.2f} leases "
          f"(goal <= 2 leases every time: {'met' if max(times) <= 2 * lease else 'NOT met'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--failovers", type=int, default=20)
    parser.add_argument("--lease", default="1s")
    parser.add_argument("--detection", type=int, default=0, metavar="TRIALS",
                        help="run only the detection comparison, with this many trials per setup")
    asyncio.run(main(parser.parse_args()))
