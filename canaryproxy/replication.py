"""Wiring for many processes, one rollout: the shared (Redis) pieces and how they plug in.

`server.py` builds the one-process product; with `coordination.backend: redis` it asks this
module for the pieces that differ: the outcome feed the data plane publishes to, the store and
lease the controller writes through, the shared evidence that feeds every process's windows and
judge from the outcome log, the shared history, and the leader loop. Nothing else changes: the
controller, follower, evidence and admin API are the same objects with other backends behind
their protocols.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from canaryproxy.backends.redis import RedisLeadership, RedisRolloutStore, RedisSpace
from canaryproxy.backends.redis_feed import RedisOutcomeFeed
from canaryproxy.backends.redis_history import RedisHistory
from canaryproxy.clock import Clock
from canaryproxy.config import Config
from canaryproxy.control.controller import Controller
from canaryproxy.control.evidence import Evidence
from canaryproxy.control.follower import Follower
from canaryproxy.control.leader import LeaderLoop
from canaryproxy.control.shared_evidence import SharedEvidence
from canaryproxy.errors import StateError

log = logging.getLogger("canaryproxy")


@dataclass(slots=True)
class Shared:
    """The Redis-backed pieces of one process."""

    replica: str
    space: RedisSpace
    feed: RedisOutcomeFeed
    store: RedisRolloutStore
    leadership: RedisLeadership
    history: RedisHistory
    lease: float
    grace: float
    evidence: SharedEvidence | None = None
    leader: LeaderLoop | None = None

    @property
    def leads(self) -> bool:
        return self.leadership.token is not None


def shared_backend(config: Config, retention: float) -> Shared:
    """The shared pieces before the control plane exists (the data plane needs the feed)."""
    section = config.coordination
    assert section.url is not None
    replica = section.replica_name
    space = RedisSpace(os.path.expandvars(section.url), section.rollout, timeout=section.timeout)
    feed = RedisOutcomeFeed(space, replica, retention=retention, flush_every=section.publish_every,
                            max_buffered=section.buffer)
    return Shared(replica, space, feed, RedisRolloutStore(space), RedisLeadership(space, replica, section.lease),
                  RedisHistory(space, replica), section.lease, section.grace)


def join(shared: Shared, evidence: Evidence, controller: Controller, clock: Clock) -> None:
    """Plug the shared pieces into this process's evidence, controller and history."""
    evidence.announce = shared.feed.announce
    shared.evidence = SharedEvidence(evidence, shared.feed, leads=lambda: shared.leads, monotonic=clock.monotonic)
    history = shared.history
    controller.decisions.publish = lambda record: history.publish("decisions", record)
    history.follow("decisions", controller.decisions.add_remote)
    shared.leader = LeaderLoop(shared.leadership, shared.lease, on_elected=controller.take_over,
                               heartbeat=lambda: history.heartbeat(_heartbeat(shared, controller)),
                               can_lead=lambda: shared.evidence is not None and shared.evidence.caught_up.is_set())
    controller.peers = lambda: coordination_status(shared)


async def start(shared: Shared, controller: Controller) -> None:
    """Before the controller boots: the shared history (so boot's records join it), publishing
    and the shared evidence."""
    try:
        controller.decisions.replace(await shared.history.recent("decisions", controller.decisions.history))
    except StateError as exc:  # Redis away at start: the history fills once it is back
        log.warning("%s", exc)
    await shared.history.start()
    await shared.feed.start()
    assert shared.evidence is not None
    await shared.evidence.start()


async def lead(shared: Shared) -> None:
    """After the controller booted: take part in the election."""
    assert shared.leader is not None
    await shared.leader.start()


async def stop(shared: Shared) -> None:
    if shared.leader is not None:
        await shared.leader.stop()
    if shared.evidence is not None:
        await shared.evidence.stop()
    await shared.feed.stop()
    await shared.history.stop()
    await shared.space.close()


def _heartbeat(shared: Shared, controller: Controller) -> dict[str, Any]:
    state = controller.follower.state
    return {"leader": shared.leads, "weight": controller.follower.in_force,
            "generation": state.generation if state is not None else None, "pid": os.getpid()}


def coordination_status(shared: Shared) -> dict[str, Any]:
    """The status view's `coordination` part: who leads, who was seen, what this one does."""
    seen = shared.history.replicas_seen
    leader = next((r["replica"] for r in seen if r.get("leader")), None)
    return {
        "backend": "redis",
        "store": shared.space.describe(),
        "replica": shared.replica,
        "leads": shared.leads,
        "leader": shared.replica if shared.leads else leader,
        "replicas": seen,
        "outcomes": {"published": shared.feed.published, "dropped": shared.feed.dropped,
                     "buffered": shared.feed.buffered},
    }


class CoordinationCollector:
    """/metrics for the shared backend: per process, so Prometheus may sum the counters."""

    def __init__(self, shared: Shared, follower: Follower) -> None:
        self.shared = shared
        self.follower = follower

    def collect(self) -> Iterator[Metric]:
        shared, follower = self.shared, self.follower
        yield _gauge("canaryproxy_leader", "1 while this process leads the rollout", float(shared.leads))
        yield _gauge("canaryproxy_coordination_connected",
                     "1 while the rollout store answers this process's watch", float(follower.lost_since is None))
        yield _gauge("canaryproxy_coordination_fail_safe",
                     "1 while the canary is at 0 because the store was away longer than the grace",
                     float(follower.fail_safe))
        yield _counter("canaryproxy_coordination_fail_safes", "Times the store was away past the grace",
                       follower.fail_safes)
        yield _counter("canaryproxy_outcomes_published", "Outcome records sent to the shared log",
                       shared.feed.published)
        yield _counter("canaryproxy_outcomes_dropped",
                       "Outcome records dropped because the buffer was full while Redis was away",
                       shared.feed.dropped)
        yield _gauge("canaryproxy_outcomes_buffered", "Outcome records waiting to be sent", shared.feed.buffered)
        if shared.evidence is not None:
            yield _counter("canaryproxy_feedback_taken", "Feedback records this process's evidence took "
                           "from the shared log (every process takes each once; the leader's judges)",
                           shared.evidence.feedback_taken)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family
