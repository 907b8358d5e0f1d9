"""The shadow panel's description of the pairs: agreement, one-sided failures, ratios of sums."""

from __future__ import annotations

from canaryproxy.core.pair_tally import PairTally
from canaryproxy.core.types import Outcome, Role, ShadowPair


def answer(role: Role, **fields) -> Outcome:
    defaults = dict(status=200, latency=1.0, completion_tokens=100, prompt_tokens=20, output_chars=400)
    return Outcome(role=role, started=0.0, **{**defaults, **fields})


def pair(stable=None, canary=None, **fields) -> ShadowPair:
    return ShadowPair(answer(Role.STABLE, **(stable or {})), answer(Role.SHADOW, **(canary or {})), **fields)


def test_ratios_are_canary_over_stable_summed_over_pairs_where_both_answered():
    tally = PairTally()
    tally.take(pair(canary={"completion_tokens": 150}, same_text=False, text_overlap=0.5))
    tally.take(pair(canary={"completion_tokens": 250}, same_text=True, text_overlap=1.0))
    tally.take(pair(canary={"status": 500, "completion_tokens": 9999}))  # a failure: no amounts
    summary = tally.summary()
    assert summary["pairs"] == 3
    assert summary["ratios"]["completion_tokens"] == {"canary_over_stable": 2.0, "pairs": 2}
    assert summary["ratios"]["prompt_tokens"] == {"canary_over_stable": 1.0, "pairs": 2}
    assert summary["failed"] == {"canary_only": 1, "stable_only": 0}
    assert summary["same_text_rate"] == 0.5 and summary["mean_text_overlap"] == 0.75


def test_finish_reasons_and_schemas_are_compared_where_both_sides_have_them():
    tally = PairTally()
    tally.take(pair(finish_reasons=("stop", "length")))
    tally.take(pair(finish_reasons=("stop", "stop")))
    tally.take(pair(finish_reasons=("stop", None)))
    tally.take(pair(stable={"schema_ok": True}, canary={"schema_ok": False}))
    summary = tally.summary()
    assert summary["finish_reason"] == {"compared": 2, "same_rate": 0.5, "canary_cut_by_length_only": 1,
                                        "stable_cut_by_length_only": 0}
    assert summary["schema"] == {"compared": 1, "canary_only": 1, "stable_only": 0}
    assert summary["same_text_rate"] is None  # no text compared
