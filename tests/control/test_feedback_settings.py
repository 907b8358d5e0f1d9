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
