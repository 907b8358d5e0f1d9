"""Many proxies, one rollout: real `canaryproxy run` replicas agreeing through a real redis-server."""

from __future__ import annotations

import asyncio
import signal

import pytest
from aiohttp import web

from tests.fleet import Fleet, spread_traffic
from tests.redis_server import redis  # noqa: F401  (the fixture)
from tests.support import Upstream, wait_until_ready

STEPPING = """\
  stages: [{weight: 10, hold: 1500ms}, {weight: 50, hold: 1500ms}, {weight: 100, hold: 1s}]
  min_requests: 3
  evaluate_every: 100ms
  judge: {enabled: false}"""

HOLDING = """\
  stages: [{weight: 20, hold: 3s}, {weight: 60, hold: 60s}, {weight: 100, hold: 1s}]
  min_requests: 1
  evaluate_every: 100ms
  judge: {enabled: false}"""


@pytest.fixture
async def upstreams():
    stable, canary = Upstream("stable"), Upstream("canary")
    await stable.start()
    await canary.start()
    yield stable, canary
    await stable.stop()
    await canary.stop()


@pytest.fixture
async def fleet_of(tmp_path, redis, upstreams):
    fleets: list[Fleet] = []

    async def make(rollout_yaml: str, **kwargs) -> Fleet:
        stable, canary = upstreams
        fleet = Fleet(tmp_path, redis, stable.url, canary.url, rollout_yaml, **kwargs)
        fleets.append(fleet)
        await fleet.start()
        return fleet

    yield make
    for fleet in fleets:
        await fleet.stop()


async def keep_traffic(fleet: Fleet, stop: asyncio.Event, replicas: list | None = None) -> None:
    while not stop.is_set():
        await spread_traffic(replicas if replicas is not None else fleet.live, 30, concurrency=3)


async def test_three_replicas_walk_the_plan_as_one(fleet_of):
    fleet = await fleet_of(STEPPING)
    stop = asyncio.Event()
    traffic = asyncio.create_task(keep_traffic(fleet, stop))
    try:
        leader = await fleet.leader()
        seen_weights = []
        for weight in (10.0, 50.0, 100.0):
            # Every replica serves each stage's weight within a second of the leader.
            await fleet.wait_for(lambda s: s[0]["weight"] >= weight, timeout=15, replicas=[leader])
            statuses = await fleet.wait_for(lambda s: len({x["weight"] for x in s}) == 1, timeout=1.0)
            seen_weights.append(statuses[0]["weight"])
        await fleet.wait_for(lambda s: all(x["phase"] == "promoted" for x in s), timeout=10)
    finally:
        stop.set()
        await traffic
    assert seen_weights[-1] == 100.0
    statuses = await fleet.statuses()
    assert sum(s["coordination"]["leads"] for s in statuses) == 1
    assert {r["replica"] for r in statuses[0]["coordination"]["replicas"]} == {"r0", "r1", "r2"}
    # The shared history: every replica shows the same transitions, each once.
    transitions = await _agreed_transitions(fleet)
    generations = [g for g, _ in sorted(transitions[0])]
    assert len(generations) == len(set(generations))


async def test_a_regression_each_replica_sees_a_third_of_is_rolled_back_on_the_sum(fleet_of, upstreams):
    _, canary = upstreams

    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    canary.on("POST", "/v1/chat/completions", failing)
    rules = HOLDING.replace("  judge: {enabled: false}", """  judge: {enabled: false}
  rules:
    - {name: errors, metric: error_rate, above: 0.5, window: 1m, for: 0s, min_samples: 45}""")
    fleet = await fleet_of(rules)
    await fleet.wait_for(lambda s: all(x["weight"] == 20.0 for x in s))
    counts = {}
    for _ in range(20):
        batch = await spread_traffic(fleet.live, 90)
        for key, value in batch.items():
            counts[key] = counts.get(key, 0) + value
        sent = sum(counts.get(f"r{i}:canary", 0) for i in range(3))

        def leader_saw_every_batch(now: list[dict]) -> bool:
            # Outcomes reach the leader through the shared feed: the next batch waits until the
            # leader has judged this one, so no replica is sent more than the rule needed.
            leader = next((x for x in now if x["coordination"]["leads"]), None)
            return leader is not None and (leader["phase"] == "rolled_back"
                                           or leader["versions"]["canary"]["requests"] >= sent)

        statuses = await fleet.wait_for(leader_saw_every_batch, timeout=10)
        if any(s["phase"] == "rolled_back" for s in statuses):
            break  # the others follow within a second; no more traffic meanwhile
    statuses = await fleet.wait_for(lambda s: all(x["phase"] == "rolled_back" and x["weight"] == 0 for x in s))
    per_replica = [counts.get(f"r{i}:canary", 0) for i in range(3)]
    rollback = await _decision(fleet.live[0], lambda d: d["after"]["phase"] == "rolled_back")
    errors = next(v for v in rollback["verdicts"] if v["source"] == "errors")
    samples = errors["details"]["canary_samples"]
    # No replica alone saw enough canary requests for the rule; together they did.
    assert max(per_replica) < 45 <= samples, (per_replica, samples)
    assert samples <= sum(per_replica)


async def test_kill_9_of_the_leader_resumes_the_hold_without_repeating_a_step(fleet_of):
    fleet = await fleet_of(HOLDING, lease="1s")
    stop = asyncio.Event()
    traffic = asyncio.create_task(keep_traffic(fleet, stop))
    try:
        leader = await fleet.leader()
        await fleet.wait_for(lambda s: s[0]["stage"]["elapsed"] > 1.0, replicas=[leader])
        await leader.kill()
        successor = await fleet.leader(timeout=2 * 1.0 + 3)  # two leases, plus a replica's poll
        assert successor is not leader
        statuses = await fleet.wait_for(lambda s: all(x["stage"]["number"] == 2 for x in s), timeout=15)
    finally:
        stop.set()
        await traffic
    assert all(s["weight"] == 60.0 for s in statuses)
    decisions = (await successor.get("/admin/decisions"))["decisions"]
    transitions = [d for d in decisions if d["kind"] == "transition" and d["trigger"] != "restart"]
    into_stage_2 = [d for d in transitions if d["after"]["stage"] == 2 and d["before"]["stage"] == 1]
    assert len(into_stage_2) == 1, transitions
    generations = [d["generation"] for d in transitions]
    assert generations == sorted(set(generations))


async def test_a_leader_paused_past_its_lease_has_every_write_refused(fleet_of):
    fleet = await fleet_of(HOLDING, lease="1s")
    stop = asyncio.Event()
    traffic = asyncio.create_task(keep_traffic(fleet, stop))
    traffic_to_others: asyncio.Task[None] | None = None
    try:
        old = await fleet.leader()
        await old.signal(signal.SIGSTOP)
        others = fleet.live
        # The batch under way has requests waiting on the stopped replica until SIGCONT: the rest
        # of the fleet gets traffic of its own meanwhile, so the new leader's stage sees requests.
        traffic_to_others = asyncio.create_task(keep_traffic(fleet, stop, others))
        await fleet.wait_for(lambda s: sum(x["coordination"]["leads"] for x in s) == 1, replicas=others, timeout=6)
        await fleet.wait_for(lambda s: all(x["stage"]["number"] == 2 for x in s), replicas=others, timeout=15)
        await old.signal(signal.SIGCONT)
        status = await fleet.wait_for(lambda s: not s[0]["coordination"]["leads"], replicas=[old], timeout=6)
    finally:
        stop.set()
        await traffic
        if traffic_to_others is not None:
            await traffic_to_others
    # It follows the new leader's state; nothing it wrote after waking stood.
    statuses = await fleet.wait_for(lambda s: len({(x["generation"], x["weight"]) for x in s}) == 1, timeout=5)
    assert statuses[0]["stage"]["number"] == 2 and status[0]["weight"] == 60.0
    assert sum(s["coordination"]["leads"] for s in statuses) == 1


async def test_redis_away_past_the_grace_sends_canary_to_0_and_back(fleet_of, redis):
    fleet = await fleet_of(HOLDING.replace("hold: 3s", "hold: 60s"), grace="1s")
    await fleet.wait_for(lambda s: all(x["weight"] == 20.0 for x in s))
    redis.stop()
    try:
        counts = await spread_traffic(fleet.live, 60)
        assert counts.get("200:stable", 0) + counts.get("200:canary", 0) == 60  # stable unaffected
        for replica in fleet.live:
            await _wait_metric(replica, "canaryproxy_coordination_fail_safe 1.0")
        counts = await spread_traffic(fleet.live, 90)
        assert counts == {**{k: v for k, v in counts.items() if not k.startswith("200")}, "200:stable": 90} | {
            k: v for k, v in counts.items() if k.startswith("r")}
    finally:
        redis.start()
    for replica in fleet.live:
        await _wait_metric(replica, "canaryproxy_coordination_fail_safe 0.0")
    statuses = await fleet.wait_for(lambda s: all(x["weight"] == 20.0 and x["phase"] == "progressing" for x in s))
    assert statuses
    counts = await spread_traffic(fleet.live, 90)
    assert counts.get("200:canary", 0) > 0


async def test_flushall_pauses_at_weight_0(fleet_of, redis):
    import redis as redis_py

    fleet = await fleet_of(HOLDING.replace("hold: 3s", "hold: 60s"))
    await fleet.wait_for(lambda s: all(x["weight"] == 20.0 for x in s))
    redis_py.Redis(port=redis.port).flushall()
    statuses = await fleet.wait_for(lambda s: all(x["phase"] == "paused" and x["weight"] == 0 for x in s),
                                    timeout=10)
    assert "vanished" in statuses[0]["pause_reason"]


async def _wait_metric(replica, line: str, timeout: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        text = await replica.get("/metrics")
        if line in text:
            return
        assert time.monotonic() < deadline, f"{line!r} not in {replica.name}'s /metrics"
        await asyncio.sleep(0.05)


async def _agreed_transitions(fleet: Fleet, timeout: float = 5) -> list[list[tuple[int, float]]]:
    """Poll until every replica's decision record lists the same transitions."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        histories = [await r.get("/admin/decisions") for r in fleet.live]
        transitions = [sorted((d["generation"], d["after"]["weight"]) for d in h["decisions"]
                              if d["kind"] == "transition") for h in histories]
        if all(t == transitions[0] for t in transitions):
            return transitions
        assert time.monotonic() < deadline, transitions
        await asyncio.sleep(0.05)


async def _decision(replica, predicate, timeout: float = 5) -> dict:
    """The first decision in `replica`'s record that matches, once it has arrived there."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        decisions = (await replica.get("/admin/decisions"))["decisions"]
        found = [d for d in decisions if predicate(d)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, decisions
        await asyncio.sleep(0.05)


async def test_workers_2_serve_one_port_as_one_rollout(tmp_path, redis, upstreams):
    from tests.fleet import Replica

    stable, canary = upstreams
    fleet = Fleet(tmp_path, redis, stable.url, canary.url, HOLDING.replace("hold: 3s", "hold: 60s"), n=1)
    replica = fleet.replicas[0]
    replica.run_args = ["--workers", "2"]
    await replica.start()
    second = Replica("w1", replica.config, replica.port, replica.admin_port + 1)
    try:
        await wait_until_ready(second.admin_port, replica.process, replica.log.read_text)
        statuses = await fleet.wait_for(
            lambda s: all(x["weight"] == 20.0 for x in s) and sum(x["coordination"]["leads"] for x in s) == 1,
            replicas=[replica, second])
        assert len({s["coordination"]["replica"] for s in statuses}) == 2
        for _ in range(40):  # each a new connection, which the kernel gives to either worker
            counts = await spread_traffic([replica], 1, concurrency=1)
            assert counts.get("200:stable", 0) + counts.get("200:canary", 0) == 1
        metrics = [await r.get("/metrics") for r in (replica, second)]
        served = [sum(float(line.split()[-1]) for line in m.splitlines()
                      if line.startswith("canaryproxy_requests_total{")) for m in metrics]
        assert sum(served) == 40 and all(n > 0 for n in served), served  # each counts only its own
    finally:
        await replica.stop()
    assert replica.process is not None and replica.process.returncode == 0


def test_workers_without_a_shared_backend_are_refused(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "c.yaml"
    config.write_text("listen: 127.0.0.1:18999\nupstreams: {stable: 'http://127.0.0.1:1', canary: 'http://127.0.0.1:2'}\n")
    result = subprocess.run([sys.executable, "-m", "canaryproxy", "run", "--config", str(config), "--workers", "2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "coordination.backend: redis" in result.stderr and "Traceback" not in result.stderr
