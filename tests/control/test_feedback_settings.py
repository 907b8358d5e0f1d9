"""The rollout section's feedback settings: `feedback_settle`, and the judge config with feedback."""

from __future__ import annotations

import pydantic
import pytest

from canaryproxy.config.rollout import RolloutConfig

STAGES = [{"weight": 5, "hold": "10m"}]


def test_feedback_settle_defaults_to_two_minutes_and_must_be_positive() -> None:
    assert RolloutConfig(stages=STAGES).feedback_settle == 120.0
    assert RolloutConfig(stages=STAGES, feedback_settle="30s").feedback_settle == 30.0
    with pytest.raises(pydantic.ValidationError, match="feedback_settle"):
        RolloutConfig(stages=STAGES, feedback_settle="0s")


def test_the_judge_config_with_feedback_keeps_the_budget_and_the_given_alphas() -> None:
    rollout = RolloutConfig(stages=STAGES, judge={"alpha": 0.02, "tests": {"errors": {"alpha": 0.01}}},
                            feedback_settle="3m")
    without = rollout.judge.to_judge_config()
    assert not without.feedback and not without.tests["negative_feedback"].enabled
    config = rollout.judge.to_judge_config(feedback=True, feedback_settle=rollout.feedback_settle)
    assert config.feedback and config.feedback_settle == 180.0
    assert config.tests["errors"].alpha == 0.01  # given: kept
    assert config.tests["negative_feedback"].alpha == pytest.approx(0.002)  # 0.1% of a 1% budget, scaled
    assert config.tests["latency"].alpha == pytest.approx(0.8 * 0.002 * 2)


def test_a_late_rule_needs_windows_that_reach_feedback_settle_further_back() -> None:
    rule = {"name": "unhappy", "metric": "negative_feedback_rate", "above": 0.05, "window": "5m"}
    assert RolloutConfig(stages=STAGES, rules=[rule]).longest_window() == 300.0 + 120.0
    errors = {**rule, "metric": "error_rate"}
    assert RolloutConfig(stages=STAGES, rules=[errors]).longest_window() == 300.0


def test_the_paired_tests_take_their_settings_and_budget_from_judge_shadow_tests() -> None:
    default = RolloutConfig(stages=STAGES).judge.to_judge_config()
    assert default.shadow_family_alpha == pytest.approx(0.01)
    scaled = RolloutConfig(stages=STAGES, judge={"alpha": 0.002}).judge.to_judge_config()
    assert scaled.shadow_family_alpha == pytest.approx(0.002)  # judge.alpha scales both families
    assert scaled.shadow_tests["failed"].alpha == pytest.approx(0.004 * 0.2)
    judge = {"alpha": 0.002, "shadow_alpha": 0.02,
             "shadow_tests": {"latency": {"enabled": False}, "failed": {"alpha": 0.001, "r0": 1.5},
                              "completion_tokens": {"margin": 0.25}}}
    config = RolloutConfig(stages=STAGES, judge=judge).judge.to_judge_config()
    assert config.family_alpha == pytest.approx(0.002)  # the live tests keep judge.alpha
    assert not config.shadow_tests["latency"].enabled
    assert config.shadow_tests["failed"].alpha == 0.001 and config.shadow_tests["failed"].r0 == 1.5
    assert config.shadow_tests["schema"].alpha == pytest.approx(0.0015 * 2)  # shadow_alpha scales
    assert config.shadow_tests["completion_tokens"].margin == 0.25
    assert config.shadow_tests["output_length"].margin == 0.1


@pytest.mark.parametrize(("shadow_tests", "message"), [
    ({"latencyy": {}}, "unknown shadow test 'latencyy'; known: failed, schema"),
    ({"failed": {"margin": 0.2}}, "shadow test 'failed' counts events: margin applies only to the amount tests"),
    ({"failed": {"alpha": 0}}, "shadow_tests.failed.alpha"),
    ({"latency": {"r0": 0.5}}, "shadow_tests.latency.r0"),
])
def test_a_bad_shadow_test_setting_is_a_config_error_naming_it(shadow_tests, message) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        RolloutConfig(stages=STAGES, judge={"shadow_tests": shadow_tests})
