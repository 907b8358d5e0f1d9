"""Saving and restoring the judge: a restored judge continues exactly where the saved one was,
and a state that does not fit is refused with the field it is wrong in."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from canaryproxy.core.judge import DEFAULT_TESTS, Judge, JudgeConfig, TestConfig
from canaryproxy.core.types import Outcome, Role, Status
from tests.core.judge_support import error, feed, now, only, request, rollout, verdict

SAVED_AT = 6_000  # requests before the state is saved; the regressed canary fails after it
THRESHOLDS = (3.2, 4.4)  # stable's p95 and p99 of the rollout's latency


def judge_with_thresholds(config: JudgeConfig | None = None) -> Judge:
    judge = Judge(config)
    judge.set_latency_thresholds(*THRESHOLDS)
    return judge


def through_json(state: dict[str, object]) -> dict[str, object]:
    return json.loads(json.dumps(state, allow_nan=False))


@pytest.mark.parametrize("evaluated_before_saving", [True, False])  # blocks closed, or saved open
@pytest.mark.parametrize("error_factor", [1.0, 3.0])
def test_a_restored_judge_continues_as_if_it_had_never_stopped(
    error_factor: float, evaluated_before_saving: bool
) -> None:
    stream = rollout(seed=1, requests=24_000, error_factor=error_factor)
    before, after = stream[:SAVED_AT], stream[SAVED_AT:]

    whole = judge_with_thresholds()
    feed(whole, before)
    saving = judge_with_thresholds()
    feed(saving, before)
    if evaluated_before_saving:
        assert whole.verdicts() == saving.verdicts()
        assert all(v.status is Status.PASS for v in saving.verdicts())
    state = through_json(saving.state())

    restored = Judge.from_state(JudgeConfig(), state)
    assert restored.prime_key_caps(before) == SAVED_AT  # the records the state covers
    feed(whole, after)
    feed(restored, after)

    assert restored.verdicts() == whole.verdicts()
    assert restored.summary() == whole.summary()
    failed = {v.source for v in whole.verdicts() if v.status is Status.FAIL}
    assert failed == (set() if error_factor == 1.0 else {"judge:errors"})
    assert whole.summary()["tests"]["tokens"]["now"]["log_e_value"] is not None  # past the burn-in


def test_a_fail_survives_the_round_trip_exactly() -> None:
    judge = Judge(only("errors"))
    feed(judge, [o for _ in range(20) for o in (error(True, 50.0), request(False, 50.0))])
    failed = verdict(judge, "errors")
    assert failed.status is Status.FAIL
    restored = Judge.from_state(judge.config, through_json(judge.state()))
    assert verdict(restored, "errors") == failed
    # A FAIL stays sticky after the restore, whatever comes next.
    feed(restored, [o for _ in range(200) for o in (request(True, 50.0), error(False, 50.0))])
    assert verdict(restored, "errors") == failed


def test_saving_changes_nothing() -> None:
    judge = judge_with_thresholds()
    feed(judge, rollout(seed=2, requests=3_000))
    first = judge.state()
    assert judge.state() == first  # open blocks are saved open, not closed
    assert json.loads(json.dumps(first, allow_nan=False)) == through_json(first)


def test_the_key_caps_are_not_saved() -> None:
    judge = Judge(only("errors", "tokens"))
    feed(judge, [request(i % 2 == 0, 50.0, key_hash=i, prompt_tokens=10) for i in range(5_000)])
    assert len(json.dumps(judge.state())) < 5_000  # 5,000 keys would take far more


# --- a state that does not fit ----------------------------------------------------------------


def saved_state() -> dict[str, object]:
    judge = judge_with_thresholds()
    feed(judge, rollout(seed=3, requests=3_000))
    judge.verdicts()
    return through_json(judge.state())


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (JudgeConfig(tests={"errors": TestConfig(alpha=0.006, r0=1.2)}),
         "judge state does not fit: config: saved under another config: tests.errors.r0 is 1.0 in the state, "
         "1.2 in the config"),
        (JudgeConfig(tests={"cost": dataclasses.replace(DEFAULT_TESTS["cost"], enabled=False)}),
         "judge state does not fit: config.tests: test 'cost' is not enabled in this config"),
        (JudgeConfig(alternatives=12),
         "judge state does not fit: config: saved under another config: alternatives is 16 in the state, "
         "12 in the config"),
        (JudgeConfig(warmup_seconds=30.0),
         "judge state does not fit: config: saved under another config: warmup_seconds is 20.0 in the "
         "state, 30.0 in the config"),
    ],
)
def test_a_state_saved_under_another_config_is_refused(config: JudgeConfig, problem: str) -> None:
    with pytest.raises(ValueError) as raised:
        Judge.from_state(config, saved_state())
    assert str(raised.value) == problem


def _corrupt(path: str, value: object):
    def change(state: dict) -> None:
        *parents, last = path.split(".")
        node = state
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is KeyError:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_corrupt("format", 2), "format: expected 1, got 2"),
        (_corrupt("intake.observed", KeyError), "intake: missing observed"),
        (_corrupt("events.errors.log_l", [0.0] * 15), "events.errors.log_l: expected 16 values, got 15"),
        (_corrupt("events.errors.counts.0.1", -3),
         "events.errors.counts[0][1]: expected a count (an integer >= 0), got -3"),
        (_corrupt("events.errors.counts.0.0", 1.5),
         "events.errors.counts[0][0]: expected a new canary share in (0, 1), got 1.5"),
        (_corrupt("events.schema", "fresh"), "events.schema: expected an object, got str"),
        (_corrupt("events.bogus", {}), "events: unknown bogus"),
        (_corrupt("intake.events.latency.block", [1, 2, 3]), "intake.events.latency.block: expected 4 values, got 3"),
        (_corrupt("intake.latency_thresholds", [2.0, 1.0]),
         "intake.latency_thresholds: latency threshold p99 (1.0 s) must not be below p95 (2.0 s)"),
        (_corrupt("intake.top_weight", 1.5), "intake.top_weight: expected a weight in [0, 1), got 1.5"),
        (_corrupt("amounts.tokens.strata.0.1", [100, "x", 1.0]),
         "amounts.tokens.strata[0][1][1]: expected a number, got str"),
        (_corrupt("amounts.tokens.current_weight", 0.77),
         "amounts.tokens.current_weight: 0.77 is not the weight of a stratum"),
        (_corrupt("amounts.cost.rejection", {"source": "judge:cost"}),
         "amounts.cost.rejection: missing also_on_stable, details, reason, status"),
    ],
)
def test_a_corrupt_state_is_refused_and_the_judge_is_left_as_it_was(change, problem: str) -> None:
    state = saved_state()
    broken = copy.deepcopy(state)
    change(broken)
    judge = judge_with_thresholds()
    feed(judge, rollout(seed=4, requests=500))
    untouched = judge.state()
    with pytest.raises(ValueError) as raised:
        judge.restore(broken)
    assert str(raised.value) == f"judge state does not fit: {problem}"
    assert judge.state() == untouched
    judge.restore(state)  # the intact state fits
    assert through_json(judge.state()) == state


# --- the key caps, rebuilt --------------------------------------------------------------------


def test_prime_key_caps_rebuilds_the_caps_a_restored_judge_lacks() -> None:
    # Key 7 fails three times on the canary before the state is saved: it is at its cap.
    before = [error(True, 50.0, key_hash=7) for _ in range(3)] + [request(False, 50.0) for _ in range(3)]
    saving = Judge(only("errors"))
    feed(saving, before)
    state = through_json(saving.state())
    more = [o for _ in range(5) for o in (error(True, 50.0, key_hash=7), request(False, 50.0))]

    primed = Judge.from_state(saving.config, state)
    primed.prime_key_caps(before)
    assert now(primed, "errors")["canary"] == now(saving, "errors")["canary"]  # priming counts nothing
    feed(primed, more)
    assert now(primed, "errors")["canary"]["events"] == 3  # the key adds no event after the restore
    assert now(primed, "errors")["dropped_by_key_cap"] == 5

    forgetful = Judge.from_state(saving.config, state)  # without priming the key would count again
    feed(forgetful, more)
    assert now(forgetful, "errors")["canary"]["events"] == 6


def test_prime_key_caps_skips_what_observe_skips_and_refuses_a_shadow() -> None:
    judge = Judge(only("errors"))
    ignored = [error(True, 0.0, key_hash=1), error(True, 100.0, key_hash=1)]
    assert judge.prime_key_caps(ignored) == 0
    with pytest.raises(ValueError, match="role 'shadow' is not supported"):
        judge.prime_key_caps([Outcome(role=Role.SHADOW, started=0.0, weight=50.0)])
