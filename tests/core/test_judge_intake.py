"""The judge's intake apart from its evidence: what the leader does with many processes' records.

With several proxies each publishes compact per-request records (core/observation.py); the leader
runs one intake over all of them and folds one evidence. These tests hold that this is the same
judge as one process seeing all the traffic, and that the evidence composes.
"""

from __future__ import annotations

import heapq

import pytest

from canaryproxy.core.judge import (
    EVENT_KINDS, Amounts, Block, EventEvidence, Intake, Judge, JudgeConfig,
)  # fmt: skip
from canaryproxy.core.observation import Observation, decode_all, encode
from canaryproxy.core.types import ErrorKind, Observed, Outcome, Role, Status
from tests.core.judge_support import error, feed, now, only, request, rollout

THRESHOLDS = (3.2, 4.4)


class Recorder:
    """An evidence sink that keeps what the intake emits."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.samples: list[tuple[int, float, Amounts]] = []

    def fold_block(self, block: Block) -> None:
        self.blocks.append(block)

    def fold_samples(self, side: int, w: float, samples: Amounts) -> None:
        self.samples.append((side, w, samples))


def published(outcomes: list[Outcome]) -> list[Observation]:
    """What the leader reads back from one process's outcome feed."""
    return decode_all(b"".join(encode(outcome) for outcome in outcomes))


def test_one_intake_over_every_process_records_is_the_single_judge() -> None:
    stream = rollout(seed=5, requests=24_000, error_factor=3.0)
    single = Judge()
    single.set_latency_thresholds(*THRESHOLDS)
    feed(single, stream)

    # Three replicas behind a load balancer: each sees every third request; the leader merges
    # their feeds in routing order.
    feeds = [published(stream[replica::3]) for replica in range(3)]
    leader = Judge()
    leader.set_latency_thresholds(*THRESHOLDS)
    feed(leader, heapq.merge(*feeds, key=lambda o: o.routed_at))

    assert leader.verdicts() == single.verdicts()
    assert leader.summary() == single.summary()
    assert any(v.status is Status.FAIL for v in leader.verdicts())


def test_a_key_is_capped_across_processes() -> None:
    # One canary user whose retries land on two replicas: three events in all, not three each.
    retries = [error(True, 50.0, key_hash=42, routed_at=float(i)) for i in range(10)]
    healthy = [request(i % 2 == 0, 50.0, routed_at=i + 0.5) for i in range(10)]
    leader = Judge(only("errors"))
    feed(leader, heapq.merge(published(retries[0::2] + healthy[0::2]), published(retries[1::2] + healthy[1::2]),
                             key=lambda o: o.routed_at))
    assert now(leader, "errors")["canary"]["events"] == 3
    assert now(leader, "errors")["dropped_by_key_cap"] == 7


def test_folding_the_same_blocks_in_one_or_two_batches_gives_the_same_evidence() -> None:
    config = JudgeConfig()
    recorder = Recorder()
    intake = Intake(config, recorder)
    intake.set_latency_thresholds(*THRESHOLDS)
    stream = rollout(seed=6, requests=12_000, error_factor=2.0)
    for outcome in stream:
        intake.observe(outcome)
    intake.close_blocks()
    errors = [block for block in recorder.blocks if block.test == "errors"]
    assert len(errors) > 20

    at_once = EventEvidence("errors", config.tests["errors"], config)
    for block in errors:
        at_once.fold(block)
    in_two = EventEvidence("errors", config.tests["errors"], config)
    half = len(errors) // 2
    for batch in (errors[:half], errors[half:]):
        for block in batch:
            in_two.fold(block)
    assert in_two.log_e() == at_once.log_e()
    assert in_two.counts == at_once.counts
    assert in_two.ratio_upper_bound() == at_once.ratio_upper_bound()

    judge = Judge(config)  # the judge folds exactly these blocks
    judge.set_latency_thresholds(*THRESHOLDS)
    feed(judge, stream)
    assert now(judge, "errors")["log_e_value"] == at_once.log_e()


def test_blocks_close_at_the_weight_the_warm_up_and_at_100_requests() -> None:
    recorder = Recorder()
    intake = Intake(only("errors", warmup_seconds=10.0), recorder)
    outcomes = [error(i % 10 == 0, 20.0, routed_at=i * 0.1) for i in range(250)]  # 25 s at 20%
    outcomes += [error(i % 2 == 0, 40.0, routed_at=25.0 + i * 0.1) for i in range(50)]
    for outcome in outcomes:
        intake.observe(outcome)
    intake.close_blocks()
    blocks = [(b.stable_requests + b.canary_requests, b.canary_requests, b.cold) for b in recorder.blocks]
    # 100 cold requests (routed in the first 10 s), then warm ones in blocks of 100 and the 50 left,
    # then the rise to 40%: a new warm-up.
    assert blocks == [(100, 10, True), (100, 10, False), (50, 5, False), (50, 25, True)]


@pytest.mark.parametrize(
    "outcome",
    [
        request(True, 50.0, latency=5.0),
        request(False, 50.0, latency=3.5, schema_ok=False),
        request(True, 50.0, latency=1.0, schema_ok=True, guardrails=("pii",)),
        error(True, 50.0, latency=9.0),
        request(False, 50.0, truncated=True, latency=4.0),
        request(True, 50.0, status=0, error=ErrorKind.RESET),
    ],
)
def test_the_events_observe_counts_are_those_events_of_reads(outcome: Outcome) -> None:
    intake = Intake(JudgeConfig(warmup_seconds=0.0), Recorder())
    intake.set_latency_thresholds(*THRESHOLDS)
    intake.observe(outcome)
    events = intake.events_of(outcome, outcome.failed)
    for kind, event in zip(EVENT_KINDS, events, strict=True):
        seen = intake.seen(kind)
        assert sum(seen.requests) == (event is not None), kind
        assert sum(seen.events) == bool(event), kind


def test_a_decoded_observation_is_judged_like_the_outcome_it_came_from() -> None:
    stream = rollout(seed=7, requests=6_000)
    assert [encode(o) for o in published(stream)] == [encode(o) for o in stream]  # what crosses, intact
    judges = [Judge(), Judge()]
    for judge, records in zip(judges, (stream, published(stream))):
        judge.set_latency_thresholds(*THRESHOLDS)
        feed(judge, records)
    assert judges[0].summary() == judges[1].summary()


def test_a_shadow_request_is_refused_rather_than_counted_as_stable() -> None:
    judge = Judge(only("errors"))
    shadow: Observed = Outcome(role=Role.SHADOW, started=0.0, weight=50.0, status=500)
    with pytest.raises(ValueError, match="role 'shadow' is not supported here yet"):
        judge.observe(shadow)
    assert now(judge, "errors")["observed"] == {"canary": 0, "stable": 0}
    assert now(judge, "errors")["stable"] == {"events": 0, "requests": 0}
